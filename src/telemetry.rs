//! Logging set-up, in one place.
//!
//! Owns: the tracing subscriber — human-readable or JSON, to stderr (which
//! journald captures under systemd) and, with `logging.dir`, to rotated
//! files kept `logging.retention` deep — and the handle that changes its
//! level while running (SIGHUP). Never: log PHI at info level — callers
//! log ids, not patient data; log an Engine.IO session id at any level
//! (see [`no_session_handles`]).

use tracing::{Level, Metadata};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogFormat, LogRotation, LoggingConfig};

/// The installed logging: keep it alive until exit (it flushes the file
/// writer when dropped).
pub struct Logging {
    _guard: Option<WorkerGuard>,
    /// `None` when `RUST_LOG` chose the filter: the environment wins over
    /// the config file, at start and on reload.
    pub level: Option<LogLevel>,
}

/// Changes the level filter of the running subscriber.
#[derive(Clone)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    /// Applies `directives` (`logging.level` syntax); a bad one changes
    /// nothing.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| format!("logging.level: {e}"))?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;

/// Whether a span or event may reach the log. An Engine.IO session id is a
/// bearer handle (with long-polling, whoever sends it speaks as that socket,
/// without a token), and the Socket.IO and Engine.IO crates name it in
/// their spans and in their debug and trace events. So, whatever the
/// configured level, their spans are left out and their events kept up to
/// `info`; readback's own logs name sockets by connection id.
fn no_session_handles(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let transport = target.starts_with("engineioxide") || target.starts_with("socketioxide");
    !transport || (meta.is_event() && *meta.level() <= Level::INFO)
}

/// Installs the subscriber. A second call (tests) keeps the first one.
pub fn init(config: &LoggingConfig) -> Result<Logging, String> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_chose = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let (file, guard) = match &config.dir {
        Some(dir) => {
            let rotation = match config.rotation {
                LogRotation::Daily => Rotation::DAILY,
                LogRotation::Hourly => Rotation::HOURLY,
                LogRotation::Minutely => Rotation::MINUTELY,
                LogRotation::Never => Rotation::NEVER,
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
    let json = config.format == LogFormat::Json;
    // stdout carries only the ready line; logs go to stderr (and files).
    let output: Box<dyn Layer<Filtered> + Send + Sync> = match (file, json) {
        (Some(file), true) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr.and(file))
            .boxed(),
        (Some(file), false) => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr.and(file))
            .boxed(),
        (None, true) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        (None, false) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(output.with_filter(filter_fn(no_session_handles)))
        .try_init()
        .is_ok();
    Ok(Logging {
        _guard: guard,
        level: (installed && !env_chose).then_some(LogLevel(handle)),
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    use super::no_session_handles;

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!()
        }
    }
    static CALLSITE: Callsite = Callsite;

    fn meta(target: &'static str, level: Level, kind: Kind) -> tracing::Metadata<'static> {
        tracing::Metadata::new(
            "test",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&CALLSITE)),
            kind,
        )
    }

    #[test]
    fn transport_libraries_log_at_most_info_and_no_spans() {
        for target in ["engineioxide::transport::polling", "socketioxide::client"] {
            assert!(!no_session_handles(&meta(
                target,
                Level::DEBUG,
                Kind::EVENT
            )));
            assert!(!no_session_handles(&meta(target, Level::INFO, Kind::SPAN)));
            assert!(no_session_handles(&meta(target, Level::INFO, Kind::EVENT)));
            assert!(no_session_handles(&meta(target, Level::WARN, Kind::EVENT)));
        }
        assert!(no_session_handles(&meta(
            "readback::realtime",
            Level::TRACE,
            Kind::EVENT
        )));
        assert!(no_session_handles(&meta(
            "readback::http",
            Level::INFO,
            Kind::SPAN
        )));
    }
}
