//! Logging set-up, in one place.
//!
//! Owns: the tracing subscriber — to journald in its native protocol
//! when systemd connected stderr to the journal (levels as priorities,
//! ids as journal fields), else human-readable or JSON lines on stderr —
//! also to rotated files kept `logging.retention` deep with
//! `logging.dir`, and the handle that changes its level while running
//! (SIGHUP). Never: log PHI at info level — callers log ids, not patient
//! data; log an Engine.IO session id at any level, to any output (see
//! [`no_session_handles`]); write colour codes anywhere but a terminal.

use tracing::{Level, Metadata};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::filter_fn;
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

/// Whether systemd connected stderr to the journal: it then sets
/// `JOURNAL_STREAM` to the `device:inode` of that stream (systemd.exec(5)).
/// A stderr redirected elsewhere by hand (a file, a pipe) no longer
/// matches, so an inherited variable does not send logs to the journal.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((device, inode)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        v.split_once(':')
            .map(|(d, i)| (d.parse::<u64>(), i.parse::<u64>()))
    }) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(stderr).metadata() {
        Ok(meta) => device == Ok(meta.dev()) && inode == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// Colour only for a person at a terminal who has not asked for none
/// (`NO_COLOR`): a pipe, a file or the journal would keep the escape codes
/// as text.
fn stderr_wants_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The journal's native protocol: the journal's standard priorities
/// (error 3, warn 4, info 6, debug and trace 7, so `journalctl -p err`
/// means errors) and every field of an event and its spans as a journal
/// field under its own upper-cased name, without the crate's `F_` prefix:
/// `notification_id` is `NOTIFICATION_ID`. Readback's field names
/// (`notification_id`, `session_id`, `user_id`, `connection_id`, `error`,
/// ...) collide with none of the journal's own.
fn journald() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("readbackd".into())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// Installs the subscriber. A second call (tests) keeps the first one.
pub fn init(config: &LoggingConfig) -> Result<Logging, String> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_chose = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let json = config.format == LogFormat::Json;

    let mut outputs: Vec<Box<dyn Layer<Filtered> + Send + Sync>> = Vec::new();
    let mut journal_unreachable = None;
    let to_journal = match config.format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Journald => true,
        LogFormat::Text | LogFormat::Json => false,
    };
    if to_journal {
        match journald() {
            Ok(layer) => outputs.push(layer.boxed()),
            // Asked for by name: a journal that cannot be reached is a
            // configuration to fix, not something to notice later.
            Err(e) if config.format == LogFormat::Journald => {
                return Err(format!("logging.format = \"journald\": {e}"));
            }
            Err(e) => journal_unreachable = Some(e),
        }
    }
    if outputs.is_empty() {
        // stdout carries only the ready line; logs go to stderr.
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        outputs.push(if json {
            layer.with_ansi(false).json().boxed()
        } else {
            layer.with_ansi(stderr_wants_colour()).boxed()
        });
    }

    let mut guard = None;
    if let Some(dir) = &config.dir {
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
        let (writer, flush) = tracing_appender::non_blocking(appender);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer);
        outputs.push(if json {
            layer.json().boxed()
        } else {
            layer.boxed()
        });
        guard = Some(flush);
    }

    let installed = tracing_subscriber::registry()
        .with(filter)
        // One filter for every output: the journal included.
        .with(outputs.with_filter(filter_fn(no_session_handles)))
        .try_init()
        .is_ok();
    if let Some(e) = journal_unreachable {
        tracing::warn!(error = %e, "stderr is the journal but its socket cannot be reached; logging plain text to stderr");
    }
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
