//! The signals the proxy acts on, as PostgreSQL's postmaster does:
//! SIGINT/SIGTERM drain and stop (a second closes sessions at once), SIGHUP
//! reloads the configuration. Shared by `pgtier run` and `pgtier demo`, so
//! it belongs to neither.

use crate::runtime::server::ProxyHandle;

/// SIGINT/SIGTERM: drain and stop (a second one closes sessions at once);
/// SIGHUP: reload the configuration file (when `reloadable`: the proxy was
/// started from one).
pub async fn handle_signals(handle: ProxyHandle, reloadable: bool) {
    match Signals::install() {
        Some(signals) => signals.serve(handle, reloadable).await,
        None => tracing::error!("cannot install signal handlers"),
    }
}

/// The signals the proxy acts on, their handlers installed.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers now (inside a runtime), so that a signal sent
    /// from here on is caught even before [`Signals::serve`] runs.
    pub fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }

    /// See [`handle_signals`].
    pub async fn serve(self, handle: ProxyHandle, reloadable: bool) {
        let Signals {
            mut int,
            mut term,
            mut hup,
        } = self;
        let mut stops = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {
                    if reloadable {
                        if let Err(e) = handle.shared().reload_announced().await {
                            tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
                        }
                    } else {
                        tracing::info!("SIGHUP ignored: no configuration file");
                    }
                    continue;
                }
            }
            stops += 1;
            if stops == 1 {
                crate::runtime::notify::stopping();
                tracing::info!("shutdown requested; send the signal again to close sessions now");
                handle.shutdown();
            } else {
                handle.close_now();
            }
        }
    }
}
