//! The raw MQTT client: the workspace's one, `tern-testclient`.

pub use tern_testclient::*;
