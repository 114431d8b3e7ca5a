//! The broker's durable state at start: open the store, load accounts and tokens, provision
//! what the configuration declares, and create the top account and its master token on the
//! first start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tern_broker::accounts::{Access, AclEntry, Directory, Limits, Token};
use tern_store::{DiskBackend, FaultSwitch, FaultyBackend, Snapshot, Store, Writer};

use crate::config::{Config, TokenSpec};

/// File in the data directory that holds a generated master token.
pub const MASTER_TOKEN_FILE: &str = "master-token";

/// The store, what it held at start, and the accounts directory built from it.
#[derive(Debug)]
pub struct State {
    pub store: Store,
    pub writer: Option<Writer>,
    pub snapshot: Snapshot,
    pub directory: Arc<Directory>,
    /// The master token when it was created by this start (show it once).
    pub new_master: Option<Token>,
    /// Where a generated master token was written.
    pub master_file: Option<PathBuf>,
}

/// Opens the store in the data directory (unless disabled) and loads accounts and tokens.
pub fn open(config: &Config) -> anyhow::Result<State> {
    open_with(config, None)
}

/// [`open`], with the store's writes failing while `faults` is on (tests of a failing disk).
pub fn open_with(config: &Config, faults: Option<FaultSwitch>) -> anyhow::Result<State> {
    let (store, writer, snapshot) = if config.store.enabled {
        let dir = &config.store.data_dir;
        let (backend, snapshot) = DiskBackend::open(dir)
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
        let backend: Box<dyn tern_store::Backend> = match faults {
            Some(switch) => Box::new(FaultyBackend::new(Box::new(backend), switch)),
            None => Box::new(backend),
        };
        let (store, writer) =
            Store::start_with(backend, config.fsync(), config.store.max_queued_ops);
        (store, Some(writer), snapshot)
    } else {
        (Store::disabled(), None, Snapshot::default())
    };
    let directory = Directory::load(&snapshot, store.clone(), config.directory());
    let new_master = directory
        .bootstrap(config.auth.top_cid, config.auth.master_token.as_deref())
        .map_err(|e| anyhow::anyhow!("auth.master_token: {e}"))?;
    provision(config, &directory)?;
    if config.auth.anonymous {
        let account = directory
            .anonymous_account(config.auth.anonymous_cid)
            .map_err(|e| anyhow::anyhow!("auth.anonymous: {e}"))?;
        tracing::info!(
            cid = account.id,
            "clients without credentials land in account {} ({})",
            account.id,
            account.name
        );
    }
    let mut master_file = None;
    if let Some(token) = &new_master
        && config.auth.master_token.is_none()
        && config.store.enabled
    {
        let path = config.store.data_dir.join(MASTER_TOKEN_FILE);
        write_secret(&path, &token.key)
            .with_context(|| format!("cannot write {}", path.display()))?;
        master_file = Some(path);
    }
    Ok(State {
        store,
        writer,
        snapshot,
        directory,
        new_master,
        master_file,
    })
}

/// Cluster mode, once the cluster's accounts and tokens are loaded (they win over this node's
/// own: another node's master token may have taken the id of the one this node bootstrapped):
/// the top account, the master token, the configured accounts and tokens and the anonymous
/// account are made sure of again, and what is made now goes to every node.
pub(crate) fn settle_cluster(config: &Config, directory: &Directory) -> anyhow::Result<()> {
    let new_master = directory
        .bootstrap(config.auth.top_cid, config.auth.master_token.as_deref())
        .map_err(|e| anyhow::anyhow!("auth.master_token: {e}"))?;
    if let Some(token) = new_master
        && config.auth.master_token.is_none()
        && config.store.enabled
    {
        let path = config.store.data_dir.join(MASTER_TOKEN_FILE);
        write_secret(&path, &token.key)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::warn!(file = %path.display(), "the cluster had no master token: a new one is in the file");
    }
    provision(config, directory)?;
    if config.auth.anonymous {
        directory
            .anonymous_account(config.auth.anonymous_cid)
            .map_err(|e| anyhow::anyhow!("auth.anonymous: {e}"))?;
    }
    Ok(())
}

/// Creates the `[[accounts]]` that do not exist yet, and creates or updates `[[tokens]]`.
fn provision(config: &Config, directory: &Directory) -> anyhow::Result<()> {
    let top = directory.top().unwrap_or(config.auth.top_cid);
    for a in &config.accounts {
        if directory.account(a.id).is_some() {
            continue;
        }
        let metadata = a.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
        let mut account = directory
            .create_account(a.parent.unwrap_or(top), Some(a.id), &a.name, metadata)
            .map_err(|e| anyhow::anyhow!("[[accounts]] id {}: {e}", a.id))?;
        if a.mqtt_sessions.is_some() || a.retained_bytes.is_some() {
            account.limits = Limits {
                mqtt_sessions: a.mqtt_sessions,
                retained_bytes: a.retained_bytes,
                ..Limits::default()
            };
            directory
                .update_account(account)
                .map_err(|e| anyhow::anyhow!("[[accounts]] id {}: {e}", a.id))?;
        }
    }
    for t in &config.tokens {
        let wanted = token_from_spec(t, top);
        match directory.token_by_key(&t.key) {
            Some(existing) => {
                let updated = Token {
                    id: existing.id,
                    accessed: existing.accessed,
                    ..wanted
                };
                if updated != existing {
                    directory
                        .update_token(updated)
                        .map_err(|e| anyhow::anyhow!("[[tokens]] {}: {e}", t.info))?;
                }
            }
            None => {
                directory
                    .create_token(wanted)
                    .map_err(|e| anyhow::anyhow!("[[tokens]] {}: {e}", t.info))?;
            }
        }
    }
    Ok(())
}

fn token_from_spec(t: &TokenSpec, top: u64) -> Token {
    let kind = match t.access.as_str() {
        "master" => Access::MASTER,
        "acl" => Access::ACL,
        _ => Access::STANDARD,
    };
    let acl = t
        .acl
        .iter()
        .map(|a| AclEntry {
            uri: "mqtt".into(),
            topic: Some(a.topic.clone()),
            actions: a.actions.clone(),
            rest: Default::default(),
        })
        .collect();
    Token {
        id: 0,
        key: t.key.clone(),
        info: t.info.clone(),
        enabled: true,
        expire: t.expire,
        ttl: t.ttl,
        created: 0,
        accessed: 0,
        ips: t.ips.clone(),
        cid: t.cid.unwrap_or(top),
        metadata: serde_json::json!({}),
        access: Access { kind, acl },
    }
}

/// Writes a secret readable by the owner only (mode 0600).
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")?;
    f.sync_all()
}
