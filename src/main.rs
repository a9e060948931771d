//! `framegate`: run the gateway, or check a config.

use std::{num::NonZeroUsize, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use framegate::{
    config::{Config, UpstreamServers},
    Gateway, Handle,
};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// jemalloc, not glibc's malloc, on Linux. A handshake allocates ~29
/// times (~12 KiB); its three boxed futures (1.4–3.3 KiB) are above glibc's
/// per-thread cache (1,032 bytes), and glibc took ~9,400 instructions per
/// handshake in its slow paths (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`); jemalloc takes ~1,400 (callgrind: 78,900 →
/// 71,000 per handshake). In the load tests: an idle session 2.8 KiB
/// (3.1), an idle HTTP keep-alive connection 1.6 KiB (1.9), the CPU per
/// plain request −12% at 100 B and −24% at 16 KiB, for 1.1 MiB more at
/// start. mimalloc, tried before, cut the CPU per request about as much
/// but cost 10 MiB at start and 0.3 KiB per idle session.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `--version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FRAMEGATE_COMMIT"),
    ")"
);

/// The end of `--help` and the man page: what an operator reaches for
/// without a config at hand.
const SIGNALS_AND_LOGS: &str = "\
Signals:
  SIGHUP           Re-read the config, policies and certificates; new connections use them,
                   running sessions keep theirs. An invalid config is logged and not used.
  SIGTERM, SIGINT  Drain: stop accepting, close every session with 1001 (spread over
                   [server] drain_spread), exit when all are closed or at [server] drain_timeout.
  A second one     Exit at once, without waiting for the drain.

Logs:
  The [log] section of the config sets the level and the format (text or json).
  FRAMEGATE_LOG overrides the level (e.g. \"debug\" or \"info,framegate=debug\"),
  FRAMEGATE_LOG_FORMAT the format (text or json).";

/// A WebSocket gateway that relays frames, not bytes.
#[derive(Parser)]
#[command(version = VERSION, about, long_about = None, after_help = SIGNALS_AND_LOGS)]
struct Cli {
    /// The config file (TOML). Policies are looked up relative to it.
    #[arg(long, short, global = true, default_value = "framegate.toml")]
    config: PathBuf,
    /// Workers: threads, each with its own runtime and its own socket per
    /// listener (SO_REUSEPORT). 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the config and its policies, print every problem as `file:line: message`, and exit.
    Check,
    /// Print the man page (roff) to stdout: `framegate man > framegate.1`.
    #[command(hide = true)]
    Man,
    /// Print shell completions to stdout, e.g. `framegate completions bash`.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Drain a server of a running gateway through its admin listener: no
    /// new sessions, its sessions move off (1012) over `drain_window`.
    Drain(DrainArgs),
    /// Undrain a server drained with `drain` (not one the config drains).
    Undrain(DrainArgs),
}

/// The man page and completions come from the CLI definition itself, at
/// run time rather than from an xtask at build time: a packager runs the
/// installed binary, and they can never disagree with the binary's `--help`.
fn print_generated(command: &Command) -> std::io::Result<()> {
    let mut cli = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    match command {
        Command::Man => clap_mangen::Man::new(cli).render(&mut out),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "framegate", &mut out);
            Ok(())
        }
        Command::Check | Command::Drain(_) | Command::Undrain(_) => Ok(()),
    }
}

#[derive(clap::Args)]
struct DrainArgs {
    /// The gateway's `[admin] addr`.
    #[arg(long, value_name = "IP:PORT")]
    admin: std::net::SocketAddr,
    /// An environment variable holding the admin token (`[admin] token_env`).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// The upstream group (`[upstream.GROUP]`).
    group: String,
    /// The server's label, as `/status.json` shows it (e.g. `ws://10.0.0.5:8080`).
    server: String,
}

/// `framegate drain|undrain`: prints the admin listener's answer; exit 0 on
/// 200, 1 otherwise. Needs no config, only the admin address.
fn drain_command(args: &DrainArgs, on: bool) -> ExitCode {
    let token = match &args.token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(t) => Some(t),
            Err(_) => {
                eprintln!("framegate: environment variable {var} is unset");
                return ExitCode::FAILURE;
            }
        },
    };
    match framegate::admin_client::drain(
        args.admin,
        token.as_deref(),
        &args.group,
        &args.server,
        on,
    ) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("framegate: {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("framegate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Drain(args)) => return drain_command(args, true),
        Some(Command::Undrain(args)) => return drain_command(args, false),
        _ => {}
    }
    if let Some(command @ (Command::Man | Command::Completions { .. })) = &cli.command {
        return match print_generated(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("framegate: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "{}: ok ({} listener(s), {} route(s), {} upstream(s))",
            cli.config.display(),
            config.listeners.len(),
            config.routes.len(),
            config.upstreams.len()
        );
        return ExitCode::SUCCESS;
    }
    let logging = match framegate::log::from_env(config.log.clone()).and_then(framegate::log::init)
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("framegate: {e}");
            return ExitCode::FAILURE;
        }
    };
    log_warnings(&config);
    match run(config, cli.config, cli.workers, logging) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("framegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Config,
    path: PathBuf,
    workers: usize,
    logging: framegate::log::Logging,
) -> anyhow::Result<()> {
    let workers = NonZeroUsize::new(workers)
        .or_else(|| std::thread::available_parallelism().ok())
        .unwrap_or(NonZeroUsize::MIN);
    raise_fd_limit(&config, workers);
    // This thread is worker 0; signals, reloads and the drain run here too.
    framegate::log::buffer_this_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(framegate::log::flush_this_thread)
        .build()
        .context("starting the runtime")?;
    let ran = rt.block_on(async {
        // Signal handlers before the sockets: a signal sent once `listening`
        // is logged must find them installed, not the default action.
        let hup = signal(SignalKind::hangup());
        let stop = shutdown_signal();
        let gateway = Gateway::bind(config, workers).await?;
        tokio::spawn(reload_on_sighup(hup, gateway.handle(), path, logging));
        let report = gateway.run(stop).await;
        tracing::info!(cut = report.cut, "stopped");
        Ok(())
    });
    // Worker 0 is the main thread, whose lines no thread exit writes.
    framegate::log::flush_this_thread();
    ran
}

/// Descriptors not counted as room for sessions: stdio, each worker's
/// runtime (epoll, eventfd), config and certificate reads, JWKS fetches,
/// the accept that is under way. The listening sockets are added on top.
const FD_RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard one (the systemd default
/// soft limit, 1024, is a few hundred sessions) and says in one line how
/// many sessions the limit leaves room for, warning when the configured
/// limits need more.
fn raise_fd_limit(config: &Config, workers: NonZeroUsize) {
    let was = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    let limit = match (rlimit::increase_nofile_limit(u64::MAX), was) {
        (Ok(limit), _) => limit,
        (Err(e), Some(soft)) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            soft
        }
        (Err(e), None) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    let listening = (config.listeners.len() * workers.get()) as u64;
    let reserve = FD_RESERVE + listening;
    // A session holds the client's socket and the upstream's; with the
    // built-in echo backend, the backend's end of the upstream socket and
    // its own are in this process too.
    let builtin = config
        .upstreams
        .values()
        .any(|u| matches!(u.servers, UpstreamServers::BuiltinEcho));
    let per_session: u64 = if builtin { 4 } else { 2 };
    let sessions = limit.saturating_sub(reserve) / per_session;
    tracing::info!(
        fd_limit = limit,
        soft_limit_was = was,
        fds_per_session = per_session,
        sessions,
        "open-file limit leaves room for {sessions} sessions"
    );
    if let Some(max) = config.server.admission.max_connections {
        let needed = u64::from(max) * per_session + reserve;
        if needed > limit {
            tracing::warn!(
                max_connections = max,
                fds_needed = needed,
                fd_limit = limit,
                "max_connections needs more file descriptors than the open-file limit allows; \
                 raise the hard limit (systemd: LimitNOFILE=) or lower max_connections"
            );
        }
    }
    let pending = u64::from(config.server.admission.max_pending_connections);
    if pending + reserve > limit {
        tracing::warn!(
            max_pending_connections = pending,
            fd_limit = limit,
            "max_pending_connections alone can use every file descriptor; \
             raise the hard limit (systemd: LimitNOFILE=) or lower max_pending_connections"
        );
    }
}

/// Values `check` would warn about, logged at start and on each reload.
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(at = %w, "surprising config value");
    }
}

/// SIGHUP: re-read the config, policies and certificates. An invalid config
/// is logged, problem by problem, and the running one stays.
/// `[log]`'s level changes and an access log file is reopened (logrotate).
async fn reload_on_sighup(
    hup: std::io::Result<Signal>,
    handle: Handle,
    path: PathBuf,
    mut logging: framegate::log::Logging,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot install the SIGHUP handler; reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        logging.reopen();
        match Config::load(&path) {
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(problem = %e, "reload refused");
                }
            }
            Ok(config) => {
                let log = framegate::log::from_env(config.log.clone());
                log_warnings(&config);
                match handle.reload(config).await {
                    Ok(()) => {
                        // `[log]` goes with the rest of the config: a
                        // refused reload does not change the level.
                        match log {
                            Ok(log) => logging.reload(log),
                            Err(e) => tracing::error!(error = %e, "log settings refused"),
                        }
                        tracing::info!(config = %path.display(), "reloaded; new connections use the new config")
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload refused"),
                }
            }
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM (start draining); a second one
/// exits at once. The handlers are installed when this is called, not when
/// the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { drain_then_exit(handlers).await }
}

async fn drain_then_exit(handlers: (std::io::Result<Signal>, std::io::Result<Signal>)) {
    let (Ok(mut term), Ok(mut int)) = handlers else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
}
