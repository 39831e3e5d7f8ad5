//! What the `pgtier` command does, kept out of `main.rs` so that it stays a
//! thin CLI: logging set-up, running with signals, checking a config.

mod demo;
pub mod inactive;
pub(crate) mod signals;

use std::path::Path;
use std::process::ExitCode;

use crate::config::{LogFormat, Threading};
use crate::runtime::server::Proxy;
use crate::runtime::shared::load_config;

/// Exit code for an invalid configuration.
const EXIT_BAD_CONFIG: u8 = 2;

/// Logs to stderr in `format`; `RUST_LOG` filters (default `info`).
/// Colours only when stderr is a terminal: a log file or journald gets
/// plain text. Installed once; later calls do nothing.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Each line: timestamp, level, message and fields, and the span's
        // fields (session, tenant, client) flattened alongside.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The async runtime the proxy's own work runs on. With `per-core`
/// threading that is the control work alone (sessions run on the serving
/// threads' runtimes): one thread. With `shared`: `worker_threads` = 1 is
/// a single-threaded runtime, 0 is one worker per core.
fn runtime(
    threading: Threading,
    worker_threads: usize,
) -> std::io::Result<tokio::runtime::Runtime> {
    if threading == Threading::PerCore {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    match worker_threads {
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
    }
}

/// `pgtier check`.
pub fn check(path: &Path) -> ExitCode {
    match load_config(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {}", warning.0);
            }
            println!(
                "{}: ok ({} tiers, {} tenants listed, listening on {})",
                path.display(),
                config.tiers.len(),
                config.tenants.len(),
                config.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

/// `pgtier run`: the proxy until SIGINT/SIGTERM.
pub fn run(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    init_logging(config.log_format);
    let rt = match runtime(config.threading, config.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = path.to_owned();
    rt.block_on(async move {
        let proxy = match Proxy::bind(config).await {
            Ok(proxy) => proxy,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let handle = proxy.handle();
        handle.set_config_path(&path);
        // Installed before READY=1: a SIGHUP a service manager sends the
        // moment it hears READY must find the handler, not the default
        // action (which ends the process).
        match crate::cli::signals::Signals::install() {
            Some(signals) => {
                tokio::spawn(signals.serve(handle, true));
            }
            None => tracing::error!("cannot install signal handlers"),
        }
        // Every listener (clients', admin's) is bound and listening: a
        // connection from here on is queued, never refused.
        crate::runtime::notify::ready();
        match proxy.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `pgtier demo`.
pub fn demo(listen: std::net::SocketAddr) -> ExitCode {
    let rt = match runtime(Threading::Shared, 0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::cli::demo::run(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `pgtier gen-cert`.
pub fn gen_cert(dir: &Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| pgtier_sandbox::Certs::generate(dir).map_err(|e| e.to_string()));
    match written {
        Ok(certs) => {
            println!(
                "wrote {}, {} and {} (clients verify with sslrootcert={})",
                certs.cert_path.display(),
                certs.key_path.display(),
                certs.ca_path.display(),
                certs.ca_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
