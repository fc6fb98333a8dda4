//! Signals: SIGTERM/SIGINT drain, SIGHUP reloads.
//!
//! Owns: turning SIGTERM/SIGINT into a cancelled token (tasks take a clone
//! and stop taking new work when it fires; `main` then waits for them) and
//! SIGHUP (`systemctl reload`) into a reload of what can change safely
//! while serving: the log level and the TLS certificate files. Both
//! handlers are installed before the functions here return, so a signal
//! that arrives after `READY=1` never meets the default action (for SIGHUP:
//! terminate).
//! Never: exit the process itself — draining is the caller's job — or
//! interrupt delivery: a reload that fails keeps what was in force.

use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::telemetry::LogLevel;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(
    tasks: &TaskTracker,
    token: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tasks.spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested");
        token.cancel();
    }))
}

/// What SIGHUP reloads.
pub struct Reload {
    /// The file the daemon was started with: read again on every SIGHUP
    /// (with the same environment overrides).
    pub config_path: PathBuf,
    /// `None` when `RUST_LOG` fixed the filter.
    pub log_level: Option<LogLevel>,
    /// The certificate in use, when serving TLS.
    pub tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

/// Reloads on every SIGHUP until `shutdown`.
pub fn reload_on_sighup(
    tasks: &TaskTracker,
    reload: Reload,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {}
            }
            reload.apply().await;
        }
    }))
}

impl Reload {
    async fn apply(&self) {
        let path = self.config_path.display();
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(config = %path, error = %e, "SIGHUP: the configuration is not valid; nothing was reloaded");
                return;
            }
        };
        let mut applied = Vec::new();
        match &self.log_level {
            Some(level) => match level.set(&config.logging.level) {
                Ok(()) => applied.push(format!("logging.level = {}", config.logging.level)),
                Err(e) => tracing::error!(error = %e, "SIGHUP: log level not changed"),
            },
            None => tracing::info!("SIGHUP: RUST_LOG is set and decides the log level"),
        }
        match (&self.tls, &config.server.tls) {
            (Some(rustls), Some(files)) => {
                match rustls.reload_from_pem_file(&files.cert, &files.key).await {
                    Ok(()) => applied.push(format!("server.tls.cert = {}", files.cert.display())),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS certificate reload failed; keeping the previous one");
                    }
                }
            }
            (Some(_), None) | (None, Some(_)) => tracing::warn!(
                "SIGHUP: turning TLS on or off takes a restart; still serving as before"
            ),
            (None, None) => {}
        }
        tracing::info!(
            config = %path,
            applied = %applied.join(", "),
            "configuration reloaded; other settings take effect at the next restart"
        );
    }
}
