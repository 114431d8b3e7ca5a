//! tern-store: The persistence trait, the embedded on-disk store and an in-memory store
