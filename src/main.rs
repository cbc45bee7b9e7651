//! The `chat-gateway` command: parses the command line, loads config, sets up logging and
//! hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use chat_gateway::config::{Config, SecretSource};
use chat_gateway::credentials::{read_secret_env, read_secret_file, unix_now};
use chat_gateway::usersig::{self, SecretKey};

// Why mimalloc, and how it is tuned: `chat_gateway::heap`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "chat-gateway",
    version,
    about = "A signing, validating, rate-limiting gateway in front of Tencent Cloud Chat's REST API"
)]
struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway. Without a config file it runs in sandbox mode against an in-process
    /// Chat emulator.
    Serve {
        #[arg(long, env = "CHAT_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file; exit 0 if valid, else list every problem and exit 2.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a UserSig. The key comes from CHAT_GATEWAY_SECRET_KEY or --secret-key-file.
    Usersig {
        #[arg(long)]
        sdkappid: u64,
        #[arg(long)]
        identifier: String,
        /// Validity in seconds (at most 100 years, so that the expiry fits every reader).
        #[arg(long, default_value_t = 180 * 24 * 3600,
              value_parser = clap::value_parser!(u64).range(1..=MAX_EXPIRE_SECS))]
        expire: u64,
        #[arg(long)]
        secret_key_file: Option<PathBuf>,
    },
    /// Run the Chat emulator on its own, for integration tests.
    Emulator {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: std::net::SocketAddr,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[arg(long)]
        sdkappid: u64,
        /// The app admin account.
        #[arg(long, default_value = "administrator")]
        identifier: String,
        #[arg(long)]
        secret_key_file: Option<PathBuf>,
        /// Wait this long before each answer (e.g. "50ms"), as Tencent's round trip would.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        latency: std::time::Duration,
    },
}

/// Longest `usersig --expire`: 100 years. Time plus expiry then stays far inside the signed
/// 64-bit (and 32-bit-year) range every UserSig reader uses.
const MAX_EXPIRE_SECS: u64 = 100 * 365 * 24 * 3600;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _flush_logs_on_exit = chat_gateway::logging::init(match cli.log_format {
        LogFormat::Human => chat_gateway::logging::Format::Human,
        LogFormat::Json => chat_gateway::logging::Format::Json,
    });
    tracing::debug!(
        arena_eager_commit = chat_gateway::heap::arena_eager_commit(),
        "allocator: mimalloc"
    );
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Usersig {
            sdkappid,
            identifier,
            expire,
            secret_key_file,
        } => match cli_key(secret_key_file.as_deref()) {
            Ok(key) => {
                println!(
                    "{}",
                    usersig::generate(&key, sdkappid, &identifier, unix_now(), expire)
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Serve { config: None } => block_on(sandbox()),
        Command::Serve { config: Some(path) } => match Config::load(&path) {
            Ok(config) => {
                let workers = config.server.worker_threads;
                block_on_workers(serve(config, path), workers)
            }
            Err(problems) => fail(&format!("{}: {problems}", path.display())),
        },
        Command::Emulator {
            listen,
            tls_cert,
            tls_key,
            sdkappid,
            identifier,
            secret_key_file,
            latency,
        } => block_on(emulator(
            listen,
            tls_cert.zip(tls_key),
            sdkappid,
            identifier,
            secret_key_file,
            latency,
        )),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("chat-gateway: {message}");
    ExitCode::FAILURE
}

fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    block_on_workers(future, 0)
}

/// `workers` 1: one thread does everything (a current-thread runtime: the cheapest for a
/// sidecar given one core); more: a multi-thread runtime; 0: one worker per core the process
/// may run on (its CPU affinity), so a gateway pinned to one core gets the single thread.
fn block_on_workers(
    future: impl std::future::Future<Output = ExitCode>,
    workers: usize,
) -> ExitCode {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(0, |n| n.get()),
        n => n,
    };
    let runtime = match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    }
}

fn cli_key(file: Option<&std::path::Path>) -> Result<SecretKey, String> {
    match file {
        Some(path) => read_secret_file(path).map_err(|e| format!("--secret-key-file: {e}")),
        None => read_secret_env("CHAT_GATEWAY_SECRET_KEY")
            .map_err(|e| format!("CHAT_GATEWAY_SECRET_KEY: {e} (or pass --secret-key-file)")),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    // The same check a running gateway makes of a changed file before it reloads.
    let problems = match chat_gateway::preflight::check_file(path) {
        Ok(_) => {
            println!("{}: valid", path.display());
            return ExitCode::SUCCESS;
        }
        Err(problems) => problems,
    };
    eprintln!("{}: {} problem(s)", path.display(), problems.len());
    for p in &problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(2)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    signals().0.await
}

/// Two futures: the first SIGTERM or SIGINT, and the second one (which cuts the drain delay
/// short). The signal streams are made once, so a signal between the two is not missed.
fn signals() -> (
    impl std::future::Future<Output = ()> + Send,
    impl std::future::Future<Output = ()> + Send,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT");
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n = n.saturating_add(1));
        }
    });
    let wait = |count: u32| {
        let mut rx = rx.clone();
        async move {
            if rx.wait_for(|n| *n >= count).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    (wait(1), wait(2))
}

async fn sandbox() -> ExitCode {
    match chat_gateway::sandbox::run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

async fn serve(config: Config, path: PathBuf) -> ExitCode {
    let key = match &config.chat.secret {
        SecretSource::File(file) => {
            read_secret_file(file).map_err(|e| format!("chat.secret_key_file: {e}"))
        }
        SecretSource::Env(var) => {
            read_secret_env(var).map_err(|e| format!("chat.secret_key_env {var}: {e}"))
        }
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let listeners = match (
        bind(config.server.listen).await,
        bind(config.server.admin_listen).await,
    ) {
        (Ok(callers), Ok(admin)) => chat_gateway::Listeners { callers, admin },
        (Err(e), _) | (_, Err(e)) => return fail(&e),
    };
    let (first, second) = signals();
    match chat_gateway::run_from_file(config, path, key, listeners, first, second).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

async fn emulator(
    listen: std::net::SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    sdkappid: u64,
    identifier: String,
    secret_key_file: Option<PathBuf>,
    latency: std::time::Duration,
) -> ExitCode {
    let key = match cli_key(secret_key_file.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let tls = match tls {
        None => None,
        Some((cert, key)) => {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            match (read(&cert), read(&key)) {
                (Ok(c), Ok(k)) => match chat_gateway::emulator::tls_config(&c, &k) {
                    Ok(config) => Some(config),
                    Err(e) => return fail(&format!("TLS: {e}")),
                },
                (Err(e), _) | (_, Err(e)) => return fail(&e),
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%listen, scheme, sdkappid, admin = %identifier, latency = ?latency, "Chat emulator serving");
    let emulator =
        chat_gateway::emulator::Emulator::with_latency(sdkappid, &identifier, key, latency);
    chat_gateway::emulator::serve(listener, emulator, tls, shutdown_signal()).await;
    ExitCode::SUCCESS
}
