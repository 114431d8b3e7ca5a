//! The `tern` daemon binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern::config::{Override, env_overrides};
use tern::{Config, Server, ServerOptions, logging};

/// mimalloc instead of glibc's malloc: the devices layer allocates and frees small JSON maps
/// at a high rate from several threads, where glibc's arenas spent a quarter of the CPU
/// (README Performance, Teltonika channel).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tern: a self-hosted MQTT broker that speaks the flespi MQTT API.
///
/// Without arguments it runs on its embedded defaults: MQTT on 0.0.0.0:1883, HTTP and MQTT
/// over WebSocket on 0.0.0.0:8080, data in ./data. Settings come from the defaults, then the
/// configuration file, then TERN_<SECTION>_<KEY> environment variables, then these options.
/// Listen addresses take "off" to disable a listener.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, args_override_self = true)]
struct Cli {
    /// Configuration file (TOML); see config/tern.toml for every key.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "TERN_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,
    /// MQTT over TCP listen address (listeners.mqtt).
    #[arg(long, value_name = "ADDR", global = true)]
    mqtt: Option<String>,
    /// MQTT over TLS listen address (listeners.mqtts); needs a certificate.
    #[arg(long, value_name = "ADDR", global = true)]
    mqtts: Option<String>,
    /// HTTP listen address: the REST API, MQTT over WebSocket, /health, /metrics
    /// (listeners.http).
    #[arg(long, value_name = "ADDR", global = true)]
    http: Option<String>,
    /// HTTPS listen address: the REST API and MQTT over secure WebSocket (listeners.https);
    /// needs a certificate.
    #[arg(long, value_name = "ADDR", global = true)]
    https: Option<String>,
    /// PEM certificate chain for mqtts and https (tls.cert).
    #[arg(long, value_name = "FILE", global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (tls.key).
    #[arg(long, value_name = "FILE", global = true)]
    tls_key: Option<PathBuf>,
    /// PEM CA of client certificates; clients must then present one (tls.client_ca).
    #[arg(long, value_name = "FILE", global = true)]
    tls_client_ca: Option<PathBuf>,
    /// Data directory (store.data_dir).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Log level or tracing filter (log.level).
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    /// Let clients without credentials in, into the sub-account `anonymous` of the top account
    /// (auth.anonymous).
    #[arg(long, global = true)]
    anonymous: bool,
    /// The master token's key, 64 letters and digits (auth.master_token). Without it, the
    /// first start generates one, prints it and writes it to <data-dir>/master-token.
    #[arg(
        long,
        value_name = "KEY",
        env = "TERN_MASTER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    master_token: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a configuration file (with TERN_* variables and options applied) and exit: 0 if
    /// it is valid, 2 with the file, line and key named if not.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Tokens in the data directory (while tern is stopped).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Accounts in the data directory (while tern is stopped).
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Backups and migrations of the data directory (while tern is stopped).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Ask a running tern for /health on its HTTP listener: exit 0 on 200, 1 otherwise. For
    /// container health checks.
    Health {
        /// Address of the HTTP listener; by default listeners.http of the configuration, with
        /// 0.0.0.0 as 127.0.0.1.
        #[arg(long, value_name = "ADDR")]
        addr: Option<SocketAddr>,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (as JSON, key included).
    Create {
        /// The account (the top account by default).
        #[arg(long)]
        cid: Option<u64>,
        /// A description.
        #[arg(long, default_value = "")]
        info: String,
        /// standard, master or acl.
        #[arg(long, default_value = "standard")]
        access: String,
        /// A grant of an acl token: TOPIC or TOPIC:publish,subscribe (repeatable).
        #[arg(long = "acl", value_name = "GRANT")]
        acl: Vec<String>,
        /// Absolute expiry, unix seconds (0 never).
        #[arg(long, default_value_t = 0)]
        expire: u64,
        /// Seconds valid after the last use (0 no limit).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Allowed client addresses, comma-separated masks with * and ?.
        #[arg(long, default_value = "")]
        ips: String,
    },
    /// List tokens (JSON lines).
    List,
    /// Delete a token.
    Revoke {
        /// The token id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create a sub-account and print it.
    Create {
        /// The new account's name.
        #[arg(long)]
        name: String,
        /// The parent account (the top account by default).
        #[arg(long)]
        parent: Option<u64>,
        /// The new account's id (the next free one by default).
        #[arg(long)]
        id: Option<u64>,
    },
    /// List accounts (JSON lines).
    List,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Write the whole state as JSON Lines (to stdout, or --out).
    Export {
        /// The file to write (stdout by default).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Load an export into an empty data directory.
    Import {
        /// The export file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a development CA (ca.pem), a server certificate for localhost, 127.0.0.1 and ::1
    /// (server.pem, server.key) and a client certificate (client.pem, client.key). Not for
    /// production.
    Dev {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Another host name or IP address for the server certificate (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file }) => check_config(&cli, file),
        Some(Command::Certs {
            command: CertsCommand::Dev { out, sans, force },
        }) => certs_dev(out, sans, *force),
        Some(Command::Health { addr, timeout }) => health(&cli, *addr, *timeout),
        Some(Command::Token { command }) => offline(&cli, |c| match command {
            TokenCommand::Create {
                cid,
                info,
                access,
                acl,
                expire,
                ttl,
                ips,
            } => tern::offline::token_create(
                c,
                tern::offline::NewToken {
                    cid: *cid,
                    info: info.clone(),
                    access: access.clone(),
                    acl: acl.clone(),
                    expire: *expire,
                    ttl: *ttl,
                    ips: ips.clone(),
                },
            ),
            TokenCommand::List => tern::offline::token_list(c),
            TokenCommand::Revoke { id } => tern::offline::token_revoke(c, *id),
        }),
        Some(Command::Account { command }) => offline(&cli, |c| match command {
            AccountCommand::Create { name, parent, id } => {
                tern::offline::account_create(c, name, *parent, *id)
            }
            AccountCommand::List => tern::offline::account_list(c),
        }),
        Some(Command::Store { command }) => offline(&cli, |c| match command {
            StoreCommand::Export { out } => tern::offline::store_export(c, out.as_deref()),
            StoreCommand::Import { file } => tern::offline::store_import(c, file),
        }),
        None => daemon(&cli),
    }
}

/// The command-line options as overrides, applied after the environment.
fn cli_overrides(cli: &Cli) -> Vec<Override> {
    let mut out = Vec::new();
    let addrs = [
        ("--mqtt", "listeners.mqtt", &cli.mqtt),
        ("--mqtts", "listeners.mqtts", &cli.mqtts),
        ("--http", "listeners.http", &cli.http),
        ("--https", "listeners.https", &cli.https),
        ("--log-level", "log.level", &cli.log_level),
    ];
    for (flag, key, value) in addrs {
        if let Some(v) = value {
            out.push(Override::cli(flag, key, v.clone()));
        }
    }
    let paths = [
        ("--tls-cert", "tls.cert", &cli.tls_cert),
        ("--tls-key", "tls.key", &cli.tls_key),
        ("--tls-client-ca", "tls.client_ca", &cli.tls_client_ca),
        ("--data-dir", "store.data_dir", &cli.data_dir),
    ];
    for (flag, key, value) in paths {
        if let Some(p) = value {
            out.push(Override::cli(flag, key, p.display().to_string()));
        }
    }
    if cli.anonymous {
        out.push(Override::cli("--anonymous", "auth.anonymous", "true"));
    }
    if let Some(key) = &cli.master_token {
        out.push(Override::cli(
            "--master-token",
            "auth.master_token",
            key.clone(),
        ));
    }
    out
}

/// File, then `TERN_*`, then options.
fn resolve(cli: &Cli, file: Option<&Path>) -> Result<Config, tern::config::ConfigError> {
    let mut overrides = env_overrides(std::env::vars());
    overrides.extend(cli_overrides(cli));
    Config::resolve(file, &overrides)
}

fn check_config(cli: &Cli, file: &Path) -> ExitCode {
    match resolve(cli, Some(file)) {
        Ok(config) => {
            println!("{}: ok", file.display());
            for (name, addr) in config.active_listeners() {
                println!("  {name:<6} {addr}");
            }
            if config.tls.cert.is_none() {
                println!("  mqtts and https off: no certificate");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command on the data directory of the resolved configuration.
fn offline(cli: &Cli, f: impl FnOnce(&Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match resolve(cli, cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match f(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs_dev(out: &Path, sans: &[String], force: bool) -> ExitCode {
    match tern::certs::write(out, sans, force) {
        Ok(files) => {
            println!("wrote {}", files.ca.display());
            println!(
                "wrote {} and {}",
                files.server_cert.display(),
                files.server_key.display()
            );
            println!(
                "wrote {} and {}",
                files.client_cert.display(),
                files.client_key.display()
            );
            println!(
                "run: tern --tls-cert {} --tls-key {}",
                files.server_cert.display(),
                files.server_key.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn health(cli: &Cli, addr: Option<SocketAddr>, timeout: u64) -> ExitCode {
    let addr = match addr {
        Some(a) => a,
        None => match resolve(cli, cli.config.as_deref()) {
            Ok(config) => match tern::health::probe_addr(&config) {
                Some(a) => a,
                None => {
                    eprintln!("error: the HTTP listener is off; pass --addr");
                    return ExitCode::FAILURE;
                }
            },
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    match tern::health::check(addr, "/health", Duration::from_secs(timeout.max(1))) {
        Ok(200) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("unhealthy: /health answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}

fn daemon(cli: &Cli) -> ExitCode {
    let config = match resolve(cli, cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log.level, config.log.format);
    // Every connection is a socket: the descriptor limit must hold `max_connections` of them
    // with room for the store, listeners and outbound clients.
    let wanted = config.listeners.max_connections as u64 + 1024;
    match tern_net::raise_fd_limit(wanted) {
        Some(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections = config.listeners.max_connections,
            "the file descriptor limit is below listeners.max_connections: connections past it are refused"
        ),
        Some(limit) => tracing::debug!(limit, "file descriptor limit"),
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a SIGHUP that arrives while starting must not kill the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let server = Server::start(&config, ServerOptions::default()).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "tern started");
    if let Some((key, file)) = server.new_master_token() {
        // Shown once, on the first start of this data directory.
        println!("master token: {key}");
        if let Some(file) = file {
            println!(
                "(also written to {}, readable by this user only)",
                file.display()
            );
        }
    }
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                break;
            }
            _ = hup.recv() => match server.reload_tls() {
                None => tracing::info!("SIGHUP: no certificate configured, nothing to reload"),
                Some(Ok(())) => tracing::info!("SIGHUP: certificate reloaded; new connections use it"),
                Some(Err(err)) => tracing::error!(%err, "SIGHUP: certificate reload failed; the previous certificate stays in use"),
            },
        }
    }
    server.shutdown(SHUTDOWN_DEADLINE).await;
    Ok(())
}
