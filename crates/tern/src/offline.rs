//! Commands that work on the data directory while the daemon is stopped: `tern token`,
//! `tern account` and `tern store`. The store refuses a second opener, so they fail cleanly
//! (and change nothing) while tern runs.

use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tern_broker::accounts::{Access, AclEntry, Directory, Token};
use tern_store::{Backend, DiskBackend, Store, Writer};

use crate::config::Config;

/// The data directory opened for an offline command.
#[derive(Debug)]
pub struct Offline {
    pub directory: Arc<Directory>,
    store: Store,
    writer: Writer,
    runtime: tokio::runtime::Runtime,
}

impl Offline {
    /// Opens the store of `config` and loads accounts and tokens (bootstrapping the top
    /// account and master token as a first start would).
    pub fn open(config: &Config) -> anyhow::Result<Offline> {
        let state = crate::state::open(config).map_err(in_use_hint)?;
        let writer = state.writer.ok_or_else(|| {
            anyhow!("the store is disabled (store.enabled = false): nothing to manage")
        })?;
        if let (Some(token), Some(path)) = (&state.new_master, &state.master_file) {
            eprintln!(
                "first start of this data directory: master token {} written to {}",
                token.key,
                path.display()
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Offline {
            directory: state.directory,
            store: state.store,
            writer,
            runtime,
        })
    }

    /// Writes everything and closes the store.
    pub fn close(self) -> anyhow::Result<()> {
        let ok = self
            .runtime
            .block_on(self.store.flush(Duration::from_secs(30)));
        self.store.close();
        self.writer.join();
        if !ok || self.store.failed() {
            bail!("the store could not write the change");
        }
        Ok(())
    }
}

/// What `tern token create` asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub cid: Option<u64>,
    pub info: String,
    pub access: String,
    /// `topic` or `topic:publish,subscribe` grants of an ACL token.
    pub acl: Vec<String>,
    pub expire: u64,
    pub ttl: u64,
    pub ips: String,
}

pub fn token_create(config: &Config, spec: NewToken) -> anyhow::Result<()> {
    let off = Offline::open(config)?;
    let cid = spec
        .cid
        .or(off.directory.top())
        .ok_or_else(|| anyhow!("no top account"))?;
    let kind = match spec.access.as_str() {
        "standard" => Access::STANDARD,
        "master" => Access::MASTER,
        "acl" => Access::ACL,
        other => bail!("--access `{other}` is not standard, master or acl"),
    };
    let acl = spec
        .acl
        .iter()
        .map(|g| {
            let (topic, actions) = match g.split_once(':') {
                Some((t, a)) => (t, a.split(',').map(str::to_string).collect()),
                None => (g.as_str(), vec![]),
            };
            AclEntry {
                uri: "mqtt".into(),
                topic: Some(topic.into()),
                actions,
                rest: Default::default(),
            }
        })
        .collect();
    let token = off
        .directory
        .create_token(Token {
            id: 0,
            key: String::new(),
            info: spec.info,
            enabled: true,
            expire: spec.expire,
            ttl: spec.ttl,
            created: 0,
            accessed: 0,
            ips: spec.ips,
            cid,
            metadata: serde_json::json!({}),
            access: Access { kind, acl },
        })
        .map_err(|e| anyhow!("{e}"))?;
    off.close()?;
    println!("{}", serde_json::to_string(&token)?);
    Ok(())
}

pub fn token_list(config: &Config) -> anyhow::Result<()> {
    let off = Offline::open(config)?;
    for t in off.directory.tokens() {
        println!("{}", serde_json::to_string(&t)?);
    }
    off.close()
}

pub fn token_revoke(config: &Config, id: u64) -> anyhow::Result<()> {
    let off = Offline::open(config)?;
    let t = off.directory.delete_token(id).map_err(|e| anyhow!("{e}"))?;
    off.close()?;
    println!("revoked token {} ({})", t.id, t.info);
    Ok(())
}

pub fn account_create(
    config: &Config,
    name: &str,
    parent: Option<u64>,
    id: Option<u64>,
) -> anyhow::Result<()> {
    let off = Offline::open(config)?;
    let parent = parent
        .or(off.directory.top())
        .ok_or_else(|| anyhow!("no top account"))?;
    let a = off
        .directory
        .create_account(parent, id, name, serde_json::json!({}))
        .map_err(|e| anyhow!("{e}"))?;
    off.close()?;
    println!("{}", serde_json::to_string(&a)?);
    Ok(())
}

pub fn account_list(config: &Config) -> anyhow::Result<()> {
    let off = Offline::open(config)?;
    for a in off.directory.accounts() {
        println!("{}", serde_json::to_string(&a)?);
    }
    off.close()
}

/// `tern store export`: the whole state as JSON Lines, to `out` or stdout. Reads only.
pub fn store_export(config: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let dir = &config.store.data_dir;
    let read = |out: &mut dyn Write| {
        tern_store::export_dir(dir, out)
            .with_context(|| format!("cannot read the store in {}", dir.display()))
    };
    match out {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            );
            read(&mut f)?;
            f.flush()?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            read(&mut lock)?;
            lock.flush()?;
        }
    }
    Ok(())
}

/// `tern store import`: loads an export into an empty store.
pub fn store_import(config: &Config, file: &Path) -> anyhow::Result<()> {
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let ops = tern_store::import(BufReader::new(input))
        .with_context(|| format!("{} is not a tern export", file.display()))?;
    let dir = &config.store.data_dir;
    let (mut backend, snapshot) = DiskBackend::open(dir)
        .with_context(|| format!("cannot open the store in {}", dir.display()))
        .map_err(in_use_hint)?;
    if snapshot != tern_store::Snapshot::default() {
        bail!(
            "the store in {} is not empty: import into a new data directory",
            dir.display()
        );
    }
    backend.apply(&ops)?;
    backend.sync()?;
    println!("imported {} records into {}", ops.len(), dir.display());
    Ok(())
}

/// Offline commands work on a stopped tern's data directory: when a running one holds it,
/// say so and what to do instead.
fn in_use_hint(err: anyhow::Error) -> anyhow::Error {
    if format!("{err:#}").contains("in use by another process") {
        err.context(
            "a running tern holds this data directory: stop it first, or make the change over \
             the REST API while it runs (see the README's REST API section)",
        )
    } else {
        err
    }
}
