//! Prometheus metrics.
//!
//! Owns: the registry, every metric the daemon exports (names, help, units,
//! buckets), and rendering it for `GET /metrics` in either exposition format
//! — OpenMetrics 1.0 (what the encoder writes, ending in `# EOF`) or the
//! Prometheus text format 0.0.4 (the same samples, counter families named
//! with their `_total`, no `# UNIT`/`# EOF`) — with the matching
//! `Content-Type`. Values read from the database (open notifications, the
//! outbox) are handed in as plain numbers by whoever read them.
//! Never: carry identifiers (users, patients, notifications) as labels —
//! label values are bounded sets — or read the database itself.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::severity::Severity;

type Labels = Vec<(&'static str, &'static str)>;
/// For label values only known at run time (still from a bounded set).
type OwnedLabels = Vec<(&'static str, String)>;
type Seconds = Gauge<f64, AtomicU64>;

/// Time to acknowledge, in seconds: from seconds (a viewer at the screen)
/// past the default deadlines (10 min critical, 2 h urgent, 3 d actionable).
const ACK_BUCKETS: [f64; 14] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
    259200.0,
];
/// Raise → commit, scheduler lag and pass durations, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Notifications per replay, up to `realtime.max_replay`'s default.
const REPLAY_BUCKETS: [f64; 10] = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0];

fn ack_histogram() -> Histogram {
    Histogram::new(ACK_BUCKETS)
}

/// Errors from the database, counted where every one passes: the
/// conversion from the driver's error, which has no handle on a daemon's
/// registry. One counter per process, registered in each [`Metrics`].
static DATABASE_ERRORS: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// A database error of `kind` (`unavailable` or `query`): called by the
/// store for every error the driver returns.
pub fn database_error(kind: &'static str) {
    DATABASE_ERRORS.get_or_create(&vec![("kind", kind)]).inc();
}

/// The exposition formats `GET /metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`: what Prometheus asks
    /// for first.
    OpenMetrics,
    /// `text/plain; version=0.0.4`: for everything else (`curl`,
    /// `promtool check metrics`).
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a non-zero weight, else the
    /// Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                media.eq_ignore_ascii_case("application/openmetrics-text")
                    && !parts.any(|p| {
                        p.strip_prefix("q=")
                            .and_then(|q| q.parse::<f64>().ok())
                            .is_some_and(|q| q <= 0.0)
                    })
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    raised: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    acknowledged: Counter,
    pub cancelled: Counter,
    pub auth_refused: Counter,
    /// Requests held back because their address was refused too often.
    pub held_for_refused_logins: Counter,
    pub connected_sockets: Gauge,
    pub messages_sent: Counter,
    post_commit_failures: Family<Labels, Counter>,
    jwks_refreshes: Family<Labels, Counter>,
    /// Keys of the identity provider's JWKS tokens may be verified with.
    pub jwks_keys: Gauge,
    connections_refused: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    time_to_acknowledge: Family<Labels, Histogram>,
    raise_commit: Histogram,
    escalations: Family<OwnedLabels, Counter>,
    outbox_attempts: Family<Labels, Counter>,
    replay_size: Histogram,
    replays_truncated: Counter,
    scheduler_lag: Histogram,
    scheduler_pass: Histogram,
    scheduler_last_tick: Seconds,
    database_up: Gauge,
    // Read from the database at each scrape; absent when it did not answer.
    open: Family<Labels, Gauge>,
    overdue: Family<Labels, Gauge>,
    oldest_open: Family<Labels, Seconds>,
    outbox_pending: Family<Labels, Gauge>,
    outbox_oldest: Family<Labels, Seconds>,
    /// Calendar jobs ([schedule]): runs by job and outcome, last success.
    job_runs: Family<Labels, Counter>,
    job_last_success: Family<Labels, Gauge>,
    /// The last `audit_verify` run: when the chain last verified, and
    /// whether the last run found it intact; both 0 until one ran.
    audit_chain_verified: Gauge,
    audit_chain_valid: Gauge,
}

/// What the database says about open notifications of one severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCounts {
    pub open: i64,
    /// Open past their acknowledgement deadline.
    pub overdue: i64,
    /// Milliseconds since the oldest open one was raised (0 if none).
    pub oldest_age_ms: i64,
}

/// What the database says about one channel's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting to be sent, or being sent (pending and leased rows).
    pub pending: i64,
    /// Milliseconds since the oldest of those was queued (0 if none).
    pub oldest_age_ms: i64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("readback");
        let metrics = Self {
            raised: Family::default(),
            delivered: Family::default(),
            acknowledged: Counter::default(),
            cancelled: Counter::default(),
            auth_refused: Counter::default(),
            held_for_refused_logins: Counter::default(),
            connected_sockets: Gauge::default(),
            messages_sent: Counter::default(),
            post_commit_failures: Family::default(),
            jwks_refreshes: Family::default(),
            jwks_keys: Gauge::default(),
            connections_refused: Family::default(),
            rate_limited: Family::default(),
            time_to_acknowledge: Family::new_with_constructor(ack_histogram),
            raise_commit: Histogram::new(LATENCY_BUCKETS),
            escalations: Family::default(),
            outbox_attempts: Family::default(),
            replay_size: Histogram::new(REPLAY_BUCKETS),
            replays_truncated: Counter::default(),
            scheduler_lag: Histogram::new(LATENCY_BUCKETS),
            scheduler_pass: Histogram::new(LATENCY_BUCKETS),
            scheduler_last_tick: Seconds::default(),
            database_up: Gauge::default(),
            open: Family::default(),
            overdue: Family::default(),
            oldest_open: Family::default(),
            outbox_pending: Family::default(),
            outbox_oldest: Family::default(),
            job_runs: Family::default(),
            job_last_success: Family::default(),
            audit_chain_verified: Gauge::default(),
            audit_chain_valid: Gauge::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        let r = &mut registry;
        // Notifications.
        r.register(
            "notifications_raised",
            "Notifications stored through the HTTP API, by severity",
            m.raised.clone(),
        );
        r.register(
            "deliveries",
            "Notifications sent to a socket (replayed=true on reconnect)",
            m.delivered.clone(),
        );
        r.register(
            "acknowledgements",
            "Notifications acknowledged (first acknowledgement only)",
            m.acknowledged.clone(),
        );
        r.register(
            "cancellations",
            "Notifications cancelled",
            m.cancelled.clone(),
        );
        r.register_with_unit(
            "time_to_acknowledge",
            "Time from raise to first acknowledgement, by severity",
            Unit::Seconds,
            m.time_to_acknowledge.clone(),
        );
        r.register_with_unit(
            "raise_commit_duration",
            "Time from a raise reaching the service to its commit in the database",
            Unit::Seconds,
            m.raise_commit.clone(),
        );
        r.register(
            "notifications_open",
            "Open (pending or escalated) notifications in the database, by severity",
            m.open.clone(),
        );
        r.register(
            "notifications_overdue",
            "Open notifications past their acknowledgement deadline, by severity",
            m.overdue.clone(),
        );
        r.register_with_unit(
            "notifications_oldest_open_age",
            "Age of the oldest open notification, by severity (0 when none is open)",
            Unit::Seconds,
            m.oldest_open.clone(),
        );
        r.register(
            "post_commit_failures",
            "Steps after a committed change that failed (the change stands), by step",
            m.post_commit_failures.clone(),
        );
        // Escalation and the outbox.
        r.register(
            "escalations",
            "Escalation steps fired, by level (repeat: a repetition of the last level)",
            m.escalations.clone(),
        );
        r.register(
            "outbox_attempts",
            "Attempts to send an escalation message, by channel and outcome (sent, retry, failed, skipped)",
            m.outbox_attempts.clone(),
        );
        r.register(
            "outbox_pending",
            "Escalation messages waiting in the outbox (pending or being sent), by channel",
            m.outbox_pending.clone(),
        );
        r.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest message waiting in the outbox, by channel (0 when none waits)",
            Unit::Seconds,
            m.outbox_oldest.clone(),
        );
        // The scheduler and the database.
        r.register_with_unit(
            "scheduler_tick_lag",
            "How late each scheduler pass started after it was due",
            Unit::Seconds,
            m.scheduler_lag.clone(),
        );
        r.register_with_unit(
            "scheduler_pass_duration",
            "How long each scheduler pass took",
            Unit::Seconds,
            m.scheduler_pass.clone(),
        );
        r.register_with_unit(
            "scheduler_last_tick_timestamp",
            "When the last scheduler pass started (Unix time)",
            Unit::Seconds,
            m.scheduler_last_tick.clone(),
        );
        r.register(
            "database_up",
            "Whether the database answered the last scrape or readiness check (1) or not (0)",
            m.database_up.clone(),
        );
        r.register(
            "database_errors",
            "Errors returned by the database in this process, by kind (unavailable, query)",
            DATABASE_ERRORS.clone(),
        );
        // Real time.
        r.register(
            "connected_sockets",
            "Socket.IO sockets connected to this daemon",
            m.connected_sockets.clone(),
        );
        r.register(
            "replay_notifications",
            "Open notifications replayed by one connect",
            m.replay_size.clone(),
        );
        r.register(
            "replays_truncated",
            "Replays that left notifications out (more open than realtime.max_replay)",
            m.replays_truncated.clone(),
        );
        r.register(
            "messages_sent",
            "Real-time messages sent through POST /api/v1/messages",
            m.messages_sent.clone(),
        );
        // Authentication and limits.
        r.register(
            "auth_refused",
            "Refused authentications (Socket.IO and HTTP)",
            m.auth_refused.clone(),
        );
        r.register(
            "requests_held",
            "Requests held back because their client address was refused a login more often than limits.refused_logins_* allow",
            m.held_for_refused_logins.clone(),
        );
        r.register(
            "jwks_refresh",
            "Fetches of the identity provider's JWKS, by outcome",
            m.jwks_refreshes.clone(),
        );
        r.register(
            "jwks_keys",
            "Usable keys of the identity provider's JWKS",
            m.jwks_keys.clone(),
        );
        r.register(
            "connections_refused",
            "Connections, Engine.IO handshakes and requests refused over a per-address cap, by cap",
            m.connections_refused.clone(),
        );
        r.register(
            "rate_limited",
            "Requests, client events and connections refused by a rate limit, by limit",
            m.rate_limited.clone(),
        );
        // Calendar jobs ([schedule]). The label is `name`, not `job`:
        // Prometheus keeps `job` for the scrape target.
        r.register(
            "job_runs",
            "Runs of the calendar jobs ([schedule]) by this daemon, by job name and outcome (ok, failed)",
            m.job_runs.clone(),
        );
        r.register(
            "job_last_success_timestamp_seconds",
            "When each calendar job last succeeded (on any daemon of the database), unix seconds",
            m.job_last_success.clone(),
        );
        r.register(
            "audit_chain_verified_timestamp_seconds",
            "When the scheduled audit verify last found the chain intact, unix seconds",
            m.audit_chain_verified.clone(),
        );
        r.register(
            "audit_chain_valid",
            "1 when the last scheduled audit verify found the chain intact, 0 when it found tampering (or none has run yet)",
            m.audit_chain_valid.clone(),
        );
        // Every series of a known label set exists from the start, at 0:
        // an alert's `increase` sees its first increment, and a dashboard
        // shows 0 rather than no data.
        for severity in Severity::ALL {
            let labels = vec![("severity", severity.as_str())];
            let _ = metrics.raised.get_or_create(&labels);
            let _ = metrics.time_to_acknowledge.get_or_create(&labels);
        }
        for replayed in ["false", "true"] {
            let _ = metrics
                .delivered
                .get_or_create(&vec![("replayed", replayed)]);
        }
        for outcome in ["sent", "retry", "failed", "skipped"] {
            let _ = metrics
                .outbox_attempts
                .get_or_create(&vec![("channel", "email"), ("outcome", outcome)]);
        }
        for step in ["record_deliveries", "escalate_early"] {
            let _ = metrics
                .post_commit_failures
                .get_or_create(&vec![("step", step)]);
        }
        for outcome in ["ok", "unreachable", "http_status", "too_large", "invalid"] {
            let _ = metrics
                .jwks_refreshes
                .get_or_create(&vec![("outcome", outcome)]);
        }
        for cap in ["connections", "pending", "requests"] {
            let _ = metrics
                .connections_refused
                .get_or_create(&vec![("cap", cap)]);
        }
        for limit in ["raises", "client_events", "audit_queries", "connects"] {
            let _ = metrics.rate_limited.get_or_create(&vec![("limit", limit)]);
        }
        for job in crate::config::Job::ALL {
            for outcome in ["ok", "failed"] {
                let _ = metrics
                    .job_runs
                    .get_or_create(&vec![("name", job.name()), ("outcome", outcome)]);
            }
        }
        for kind in ["unavailable", "query"] {
            let _ = DATABASE_ERRORS.get_or_create(&vec![("kind", kind)]);
        }
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn raised(&self, severity: &'static str) {
        self.raised
            .get_or_create(&vec![("severity", severity)])
            .inc();
    }

    /// A raise was committed `seconds` after it reached the service.
    pub fn raise_committed(&self, seconds: f64) {
        self.raise_commit.observe(seconds);
    }

    /// The first acknowledgement of a `severity` notification, `seconds`
    /// after it was raised.
    pub fn acknowledged(&self, severity: &'static str, seconds: f64) {
        self.acknowledged.inc();
        self.time_to_acknowledge
            .get_or_create(&vec![("severity", severity)])
            .observe(seconds.max(0.0));
    }

    pub fn delivered(&self, replayed: bool) {
        let value = if replayed { "true" } else { "false" };
        self.delivered
            .get_or_create(&vec![("replayed", value)])
            .inc();
    }

    /// One connect's replay: how many it sent, and whether the bound left
    /// some out.
    pub fn replayed(&self, notifications: usize, truncated: bool) {
        self.replay_size.observe(notifications as f64);
        if truncated {
            self.replays_truncated.inc();
        }
    }

    pub fn post_commit_failed(&self, step: &'static str) {
        self.post_commit_failures
            .get_or_create(&vec![("step", step)])
            .inc();
    }

    /// The escalation levels configured (and whether the last repeats):
    /// their series exist from the start.
    pub fn escalation_levels(&self, levels: usize, repeats: bool) {
        for level in 1..=levels {
            let _ = self
                .escalations
                .get_or_create(&vec![("level", level.to_string())]);
        }
        if repeats {
            let _ = self
                .escalations
                .get_or_create(&vec![("level", "repeat".to_string())]);
        }
    }

    /// An escalation step fired: `level` 1, 2, … of the configured levels,
    /// or `None` for a repetition of the last one (so the label set stays
    /// as small as the configuration).
    pub fn escalated(&self, level: Option<u32>) {
        let level = level.map_or_else(|| "repeat".to_string(), |l| l.to_string());
        self.escalations
            .get_or_create(&vec![("level", level)])
            .inc();
    }

    /// One attempt of the outbox sender: `channel` `email` (webhooks
    /// later), `outcome` `sent`, `retry`, `failed` or `skipped`.
    pub fn outbox_attempted(&self, channel: &'static str, outcome: &'static str) {
        self.outbox_attempts
            .get_or_create(&vec![("channel", channel), ("outcome", outcome)])
            .inc();
    }

    /// A scheduler pass started `lag_seconds` after it was due.
    pub fn scheduler_started(&self, lag_seconds: f64, unix_seconds: f64) {
        self.scheduler_lag.observe(lag_seconds);
        self.scheduler_last_tick.set(unix_seconds);
    }

    pub fn scheduler_finished(&self, seconds: f64) {
        self.scheduler_pass.observe(seconds);
    }

    /// The database answered (a scrape's queries, a readiness check).
    pub fn database_reachable(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// The open notifications of one severity, as the database counts them.
    pub fn set_open(&self, severity: &'static str, counts: OpenCounts) {
        let labels = vec![("severity", severity)];
        self.open.get_or_create(&labels).set(counts.open);
        self.overdue.get_or_create(&labels).set(counts.overdue);
        self.oldest_open
            .get_or_create(&labels)
            .set(counts.oldest_age_ms.max(0) as f64 / 1000.0);
    }

    /// One channel's outbox, as the database counts it.
    pub fn set_outbox(&self, channel: &'static str, counts: OutboxCounts) {
        let labels = vec![("channel", channel)];
        self.outbox_pending
            .get_or_create(&labels)
            .set(counts.pending);
        self.outbox_oldest
            .get_or_create(&labels)
            .set(counts.oldest_age_ms.max(0) as f64 / 1000.0);
    }

    /// The database did not answer: the values read from it are withdrawn
    /// rather than left stale (an alert on them must not see old numbers).
    pub fn database_values_unknown(&self) {
        self.open.clear();
        self.overdue.clear();
        self.oldest_open.clear();
        self.outbox_pending.clear();
        self.outbox_oldest.clear();
    }

    /// A JWKS fetch ended: `ok`, `unreachable`, `http_status`,
    /// `too_large` or `invalid`.
    pub fn jwks_refreshed(&self, outcome: &'static str) {
        self.jwks_refreshes
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// A refusal over a per-address cap: `connections` (TCP connections or
    /// Engine.IO sessions), `pending` (sessions waiting to authenticate) or
    /// `requests` (API requests in flight behind a proxy).
    pub fn connection_refused(&self, cap: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("cap", cap)])
            .inc();
    }

    /// A refusal by the `[limits]` limit `limit` (`raises`,
    /// `client_events`, `audit_queries`, `connects`).
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&vec![("limit", limit)])
            .inc();
    }

    /// A calendar job's run by this daemon ended (`ok` or `failed`).
    pub fn job_ran(&self, job: &'static str, outcome: &'static str) {
        self.job_runs
            .get_or_create(&vec![("name", job), ("outcome", outcome)])
            .inc();
    }

    /// `job` last succeeded at `unix_seconds`.
    pub fn job_succeeded_at(&self, job: &'static str, unix_seconds: i64) {
        self.job_last_success
            .get_or_create(&vec![("name", job)])
            .set(unix_seconds);
    }

    /// The outcome of an audit chain verification: intact (and when), or not.
    pub fn audit_chain_checked(&self, valid: bool, unix_seconds: i64) {
        if valid {
            self.audit_chain_verified.set(unix_seconds);
        }
        self.audit_chain_valid.set(i64::from(valid));
    }

    /// Every metric in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        match format {
            Format::OpenMetrics => out,
            Format::PrometheusText => prometheus_text(&out),
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as this
/// encoder writes it (no exemplars, no `_created`, no info or state sets):
/// a counter family is named with its samples' `_total` suffix in `# HELP`
/// and `# TYPE`, and the `# UNIT` and `# EOF` lines, which that format does
/// not have, are left out.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` precedes `# TYPE`: held until the type is known.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let renamed = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(help) = help.take() {
                let text = help.strip_prefix(name).unwrap_or(help);
                out.push_str(&format!("# HELP {renamed}{text}\n"));
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_ends_with_eof_and_prometheus_text_names_counters_with_total() {
        let metrics = Metrics::default();
        metrics.raised("critical");
        metrics.acknowledged("critical", 12.5);
        let open = metrics.render(Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE readback_notifications_raised counter\n"));
        assert!(open.contains("# UNIT readback_time_to_acknowledge_seconds seconds\n"));

        let text = metrics.render(Format::PrometheusText);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(text.contains(
            "# HELP readback_notifications_raised_total Notifications stored through the HTTP API, by severity.\n\
             # TYPE readback_notifications_raised_total counter\n"
        ), "{text}");
        assert!(
            text.contains("\nreadback_notifications_raised_total{severity=\"critical\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE readback_time_to_acknowledge_seconds histogram\n"));
        assert!(
            text.contains(
                "readback_time_to_acknowledge_seconds_bucket{le=\"15.0\",severity=\"critical\"} 1\n"
            ) || text.contains(
                "readback_time_to_acknowledge_seconds_bucket{severity=\"critical\",le=\"15.0\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        // What Prometheus sends by default.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::PrometheusText
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::PrometheusText
        );
    }
}
