//! Store errors.

use std::path::PathBuf;

/// Why the store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The files are not a tern store, or are damaged. Nothing was changed.
    #[error(
        "store at {path} is corrupt: {detail}; it was left untouched (restore a backup or move it away)"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The store was written by a newer (or unknown) version of tern.
    #[error(
        "store at {path} has format version {found}, this tern reads version {supported}; it was left untouched"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// A record could not be encoded or decoded.
    #[error("record {what}: {detail}")]
    Record { what: &'static str, detail: String },
}
