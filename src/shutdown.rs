//! Signals: SIGTERM/SIGINT drain, SIGHUP reloads the TLS certificate.
//!
//! Owns: turning SIGTERM/SIGINT into a cancelled token (tasks take a clone
//! and stop taking new work when it fires; `main` then waits for them) and
//! SIGHUP into a reload of the certificate files.
//! Never: exit the process itself — draining is the caller's job.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

/// On every SIGHUP, reloads the certificate and key files into `rustls`:
/// new handshakes get the new certificate, open connections keep theirs.
pub fn reload_on_sighup(
    rustls: axum_server::tls_rustls::RustlsConfig,
    files: crate::config::TlsConfig,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; certificate reload disabled");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup.recv() => {}
            }
            match rustls.reload_from_pem_file(&files.cert, &files.key).await {
                Ok(()) => tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
        }
    });
}
