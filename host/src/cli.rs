//! Command line: `serve`, `check`, `export`, `import-kong`, `demo`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "API-key gateway with a portable WASI policy component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `keygate=debug`.
    #[arg(long, global = true, env = "KEYGATE_LOG", default_value = "info")]
    log: String,
    /// The process log's format; default: `[log] format` of the served config, else text.
    #[arg(long, global = true, value_enum, env = "KEYGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground. Reloads (no restart, no failed request) when the
    /// config or component file changes, on SIGHUP and on `POST /admin/reload`;
    /// SIGINT/SIGTERM drain in-flight requests and exit.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Write the access log here instead of `[log] access_file` (it still needs
        /// `[log] access = "text"` or `"json"`).
        #[arg(long)]
        access_log: Option<PathBuf>,
    },
    /// Validate a config file and the component it names, then exit (non-zero if invalid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the gateway component and what another wasi:http host needs to run it:
    /// `gateway.wasm` + `serve.sh ADDR` for `wasmtime serve`, `spin.toml` + components for
    /// Spin 3.x, or a transpiled module + `serve.sh ADDR` for Node (jco) or Cloudflare's
    /// workerd (experimental).
    Export {
        /// The host to export for.
        #[arg(long = "for", value_enum)]
        target: crate::export::Target,
        #[arg(long, short)]
        config: PathBuf,
        /// The directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert a Kong declarative file (kong.yml, a decK dump, YAML or JSON) to a keygate.toml;
    /// the report goes to stderr. Exit 1, nothing written, when the file is invalid or when
    /// dropping one of its plugins would widen access.
    ImportKong {
        /// The Kong file (`_format_version` 1.1, 2.1 or 3.0).
        kong_file: PathBuf,
        /// Where to write the keygate.toml; absent = stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite `--out` when it exists.
        #[arg(long)]
        force: bool,
        /// The old Kong's proxy URL: add a last, catch-all route to it (no key check here,
        /// the client's Host kept), and leave to it the routes whose plugins keygate cannot
        /// enforce instead of refusing the import. Routes then move over one at a time.
        #[arg(long)]
        fallback: Option<String>,
    },
    /// Run the gateway with a sample origin and auth API on loopback, and print curl commands.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = cli.log_format.unwrap_or_else(|| match &cli.command {
        // A config that does not load is reported by `serve` itself, in text.
        Command::Serve { config, .. } => match crate::config::load(config) {
            Ok(config) if config.log.format == keygate_policy::LogFormat::Json => LogFormat::Json,
            _ => LogFormat::Text,
        },
        _ => LogFormat::Text,
    });
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logger.json().flatten_event(true).init(),
        LogFormat::Text => logger
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // Requests run on `server.workers` threads of their own (see `server`); this runtime
    // carries the first of them, the admin listener, reloads and signals.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("keygate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keygate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, access_log } => serve(config, access_log).await,
        Command::Check { config } => check(config).await,
        Command::Demo { listen } => crate::demo::run(listen).await,
        Command::ImportKong {
            kong_file,
            out,
            force,
            fallback,
        } => crate::import_kong::run(&kong_file, out.as_deref(), force, fallback.as_deref()),
        Command::Export {
            target,
            config,
            out,
        } => export(target, config, out),
    }
}

async fn serve(path: PathBuf, access_log: Option<PathBuf>) -> anyhow::Result<()> {
    // Listen for signals before serving, so a SIGTERM right after start still drains.
    let stop = crate::signals::shutdown_signal()?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let mut rotate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("listening for SIGUSR1")?;
    let running = crate::start_from_file_with(&path, access_log).await?;
    let observer = std::sync::Arc::clone(&running.gateway.observer);
    let reopens = tokio::spawn(async move {
        while rotate.recv().await.is_some() {
            observer.reopen();
        }
    });
    let reloader = std::sync::Arc::clone(&running.reloader);
    let reloads = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // Failures are logged and reported in /admin/status; the old version keeps serving.
            let _ = reloader.reload("SIGHUP").await;
        }
    });
    stop.await?;
    reloads.abort();
    reopens.abort();
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = crate::config::load(&path)?;
    let routes: usize = config.services.iter().map(|s| s.routes.len()).sum();
    let summary = format!(
        "{}: OK ({} services, {routes} routes, {} static consumers)",
        path.display(),
        config.services.len(),
        config.consumers.len()
    );
    let guest = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let engine = crate::runtime::engine::build_engine(&config.guest)?;
        let linker = crate::runtime::engine::build_linker(&engine)?;
        let source = crate::runtime::GuestSource::from_config(config.guest.component.as_deref());
        let bytes = source.read()?;
        // No precompiled cache: checking has no side effects.
        let guest = crate::runtime::CompiledGuest::compile(&engine, &linker, &bytes, source, None)?;
        Ok(format!("{} (sha256 {})", guest.source, guest.sha256))
    })
    .await
    .context("checking the component")??;
    println!("{summary}\ncomponent: {guest}: OK");
    Ok(())
}

fn export(target: crate::export::Target, config: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    let exported = crate::export::export(target, &config, &out)
        .with_context(|| format!("exporting {} for {target}", config.display()))?;
    for file in &exported.files {
        println!("wrote {}", file.display());
    }
    println!("run: {}", exported.run);
    Ok(())
}
