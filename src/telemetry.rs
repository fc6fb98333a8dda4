//! Logging set-up, in one place.
//!
//! Owns: the tracing subscriber — human-readable or JSON, to stderr (which
//! journald captures under systemd) and, with `logging.dir`, to rotated
//! files kept `logging.retention` deep. Never: log PHI at info level —
//! callers log ids, not patient data.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LoggingConfig;

/// Installs the subscriber. Keep the returned guard alive until exit: it
/// flushes the file writer.
pub fn init(config: &LoggingConfig) -> Result<Option<WorkerGuard>, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let (file, guard) = match &config.dir {
        Some(dir) => {
            let rotation = match config.rotation.as_str() {
                "hourly" => Rotation::HOURLY,
                "minutely" => Rotation::MINUTELY,
                "never" => Rotation::NEVER,
                _ => Rotation::DAILY,
            };
            let appender = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix("readback")
                .filename_suffix("log")
                .max_log_files(config.retention)
                .build(dir)
                .map_err(|e| format!("logging.dir: {}: {e}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (Some(writer), Some(guard))
        }
        None => (None, None),
    };
    let json = config.format == "json";
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // stdout carries only the ready line; logs go to stderr (and files).
    let result = match (file, json) {
        (Some(file), true) => builder
            .json()
            .with_writer(std::io::stderr.and(file))
            .try_init(),
        (Some(file), false) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr.and(file))
            .try_init(),
        (None, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, false) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(guard)
}
