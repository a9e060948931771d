//! `framegate`: run the gateway, or check a config.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use framegate::{config::Config, Gateway};

/// A WebSocket gateway that relays frames, not bytes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The config file (TOML). Policies are looked up relative to it.
    #[arg(long, short, global = true, default_value = "framegate.toml")]
    config: PathBuf,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the config and its policies, print every problem as `file:line: message`, and exit.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} problem(s); not started",
                cli.config.display(),
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Check) = cli.command {
        println!(
            "{}: ok ({} listener(s), {} route(s), {} upstream(s))",
            cli.config.display(),
            config.listeners.len(),
            config.routes.len(),
            config.upstreams.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(config, cli.workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("framegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, workers: usize) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let gateway = Gateway::bind(config).await?;
        gateway.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
