//! Logging set-up, in one place.
//!
//! Owns: the tracing subscriber (human-readable or JSON, to stdout, which
//! journald captures under systemd). Never: log PHI at info level —
//! callers log ids, not patient data.

use tracing_subscriber::EnvFilter;

use crate::config::LoggingConfig;

pub fn init(config: &LoggingConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Logs go to stderr so stdout carries only the ready line.
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
