//! The broker core without sockets or sleeps: whole protocol exchanges between in-process
//! clients and a broker on a manual clock (`support`), one module per packet family whose
//! behaviour depends on time, and restarts from an in-memory store.

#![allow(clippy::unwrap_used)]

mod restore;
mod retained;
mod sessions;
mod support;
mod tokens;
mod wills;
