//! tern-topic: MQTT topic names and filters, the subscription index and the retained tree.
//!
//! Pure data structures, no I/O and no async. The broker validates what clients send with
//! [`validate_topic_name`], [`validate_topic_filter`] and [`parse_shared`], keeps every
//! subscription in a [`SubscriptionIndex`] that it asks on each PUBLISH, and keeps retained
//! messages in a [`RetainedTree`] that it asks on each SUBSCRIBE.
//!
//! One set of matching rules holds everywhere; [`matches()`] states them and is the reference the
//! two tries are property-tested against: `+` is one level, `#` its parent and everything below,
//! `$` topics only for filters starting with `$`, and flespi's comma alternatives (`1,2,3`).
//!
//! Layout:
//! - `error`: [`TopicError`], each message naming the spec rule it enforces
//! - `name`: topic name validation
//! - `filter`: topic filter validation, the reference matcher [`matches()`], and the relations
//!   between two filters it defines: [`covers()`] and [`intersects()`]
//! - `shared`: `$share/<group>/<filter>`, flespi's sticky groups, picking a member
//! - `trie`: what both tries share: the level-keyed child map, pruning, teardown
//! - `index`: [`SubscriptionIndex`], the subscriptions matched on every PUBLISH
//! - `retained`: [`RetainedTree`], the retained messages matched on every SUBSCRIBE

mod error;
mod filter;
mod index;
mod name;
mod retained;
mod shared;
mod trie;

#[cfg(test)]
mod proptests;

pub use error::TopicError;
pub use filter::{covers, intersects, matches, validate_topic_filter};
pub use index::{SubscriptionIndex, Visitor};
pub use name::{MAX_TOPIC_LEN, validate_topic_name};
pub use retained::{Iter as RetainedIter, RetainedTree};
pub use shared::{SHARE_PREFIX, ShareMode, ShareSpec, SharedGroup, parse_shared, sticky_hash};
