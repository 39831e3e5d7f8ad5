//! The `pgtier` command: a thin CLI over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// pgtier: a TLS-terminating PostgreSQL proxy that enforces each tenant's
/// tier (connection cap, idle timeout, …) in front of a shared cluster.
#[derive(Debug, Parser)]
// `--version` names the commit too (build.rs), so that "which pgtier is
// this" has an exact answer.
#[command(
    name = "pgtier",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BUILD_GIT_COMMIT"), ")"),
    about,
    long_about = None
)]
struct Cli {
    /// Configuration file (TOML). Keys can be overridden by PGTIER_* variables,
    /// e.g. PGTIER_CLUSTER__PORT=5433.
    #[arg(long, short, global = true, default_value = "proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given). SIGINT/SIGTERM
    /// drain and stop it; SIGHUP reloads the configuration.
    Run,
    /// Validate a configuration file (and its TLS files) and print what is
    /// wrong, with line and key. Exits 0 when valid, 2 when not.
    Check,
    /// Write a self-signed CA and a server certificate for localhost
    /// (server.crt, server.key, ca.crt) for local use of proxy.toml.
    GenCert {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Start a throwaway PostgreSQL cluster with two tenants (one free, one
    /// standard), a self-signed certificate and the proxy in front, and print
    /// psql URLs. Ctrl-C removes it all.
    Demo {
        /// Address the demo proxy listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: std::net::SocketAddr,
    },
    /// List the databases with no login or query for a period (or never),
    /// with tier, last activity, rows and size: the first step of removing
    /// inactive databases (see the README). Reads the running proxy's
    /// operator API (the whole fleet), or its state file when it is down.
    Inactive {
        /// The period without activity, e.g. 30d, 12h.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        inactive_for: std::time::Duration,
        /// The operator API, http://host:port (default: the
        /// configuration's admin_listen).
        #[arg(long)]
        admin: Option<String>,
        /// The API's bearer token (default: the configuration's admin_token).
        #[arg(long)]
        token: Option<String>,
        /// Read this state directory's file instead of asking the proxy.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print JSON (an array of objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the pgtier(1) manual page (roff) generated from this command
    /// line's own definition: `pgtier man | man -l -`. The Debian package
    /// ships it (scripts/package.sh).
    Man {
        /// Write pgtier.1 and a page per command (pgtier-run.1, …) into
        /// this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        // `run` logs in the format its configuration names.
        pgtier::cli::init_logging(pgtier::config::LogFormat::Text);
    }
    match command {
        Command::Run => pgtier::cli::run(&cli.config),
        Command::Check => pgtier::cli::check(&cli.config),
        Command::GenCert { dir } => pgtier::cli::gen_cert(&dir),
        Command::Demo { listen } => pgtier::cli::demo(listen),
        Command::Man { dir } => man(dir.as_deref()),
        Command::Inactive {
            inactive_for,
            admin,
            token,
            state_dir,
            json,
        } => pgtier::cli::inactive::command(pgtier::cli::inactive::Args {
            inactive_for,
            admin,
            token,
            state_dir,
            config: cli.config,
            json,
        }),
    }
}

/// `pgtier man`: pgtier(1) on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir)),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
