//! The `tern` daemon binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern::{Config, Server, ServerOptions, logging};

/// tern: a self-hosted MQTT broker that speaks the flespi MQTT API.
///
/// Without arguments it runs on its embedded defaults: MQTT on 0.0.0.0:1883, data in ./data.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Configuration file (TOML); see config/tern.toml for every key.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT over TCP listen address (overrides listeners.mqtt).
    #[arg(long, value_name = "ADDR")]
    mqtt: Option<SocketAddr>,
    /// Data directory (overrides store.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log level or tracing filter (overrides log.level).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Let clients without credentials in (overrides auth.anonymous).
    #[arg(long)]
    anonymous: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a configuration file and exit (0 if it is valid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        };
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log.level, config.log.format);
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

fn load_config(cli: &Cli) -> Result<Config, tern::config::ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(addr) = cli.mqtt {
        config.listeners.mqtt = Some(addr);
    }
    if let Some(dir) = &cli.data_dir {
        config.store.data_dir = dir.clone();
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    if cli.anonymous {
        config.auth.anonymous = true;
    }
    Ok(config)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(&config, ServerOptions::default()).await?;
    wait_for_signal().await?;
    server.shutdown(SHUTDOWN_DEADLINE).await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
