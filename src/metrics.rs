//! Prometheus metrics.
//!
//! Owns: the registry and the handful of counters and gauges operators
//! watch, rendered in the Prometheus text format for `GET /metrics`.
//! Never: carry identifiers (users, patients, notifications) as labels —
//! label values are bounded sets.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    raised: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    pub acknowledged: Counter,
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
    /// Calendar jobs ([schedule]): runs by job and outcome, last success.
    job_runs: Family<Labels, Counter>,
    job_last_success: Family<Labels, Gauge>,
    /// The last `audit_verify` run: when the chain last verified, and
    /// whether the last run found it intact; both 0 until one ran.
    audit_chain_verified: Gauge,
    audit_chain_valid: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("readback");
        let raised = Family::<Labels, Counter>::default();
        let delivered = Family::<Labels, Counter>::default();
        let acknowledged = Counter::default();
        let cancelled = Counter::default();
        let auth_refused = Counter::default();
        let held_for_refused_logins = Counter::default();
        registry.register(
            "requests_held",
            "Requests held back because their client address was refused a login more often than limits.refused_logins_* allow",
            held_for_refused_logins.clone(),
        );
        let connected_sockets = Gauge::default();
        let messages_sent = Counter::default();
        let post_commit_failures = Family::<Labels, Counter>::default();
        let jwks_refreshes = Family::<Labels, Counter>::default();
        let jwks_keys = Gauge::default();
        registry.register(
            "jwks_refresh",
            "Fetches of the identity provider's JWKS, by outcome",
            jwks_refreshes.clone(),
        );
        registry.register(
            "jwks_keys",
            "Usable keys of the identity provider's JWKS",
            jwks_keys.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections, Engine.IO handshakes and requests refused over a per-address cap, by cap",
            connections_refused.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests, client events and connections refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        registry.register(
            "post_commit_failures",
            "Steps after a committed change that failed (the change stands), by step",
            post_commit_failures.clone(),
        );
        registry.register(
            "messages_sent",
            "Real-time messages sent through POST /api/v1/messages",
            messages_sent.clone(),
        );
        registry.register(
            "notifications_raised",
            "Notifications stored through the HTTP API, by severity",
            raised.clone(),
        );
        registry.register(
            "deliveries",
            "Notifications sent to a socket (replayed=true on reconnect)",
            delivered.clone(),
        );
        registry.register(
            "acknowledgements",
            "Notifications acknowledged (first acknowledgement only)",
            acknowledged.clone(),
        );
        registry.register(
            "cancellations",
            "Notifications cancelled",
            cancelled.clone(),
        );
        registry.register(
            "auth_refused",
            "Refused authentications (Socket.IO and HTTP)",
            auth_refused.clone(),
        );
        registry.register(
            "connected_sockets",
            "Socket.IO sockets connected to this daemon",
            connected_sockets.clone(),
        );
        let job_runs = Family::<Labels, Counter>::default();
        registry.register(
            "job_runs",
            "Runs of the calendar jobs ([schedule]) by this daemon, by job and outcome (ok, failed)",
            job_runs.clone(),
        );
        let job_last_success = Family::<Labels, Gauge>::default();
        registry.register(
            "job_last_success_timestamp_seconds",
            "When each calendar job last succeeded (on any daemon of the database), unix seconds",
            job_last_success.clone(),
        );
        let audit_chain_verified = Gauge::default();
        registry.register(
            "audit_chain_verified_timestamp_seconds",
            "When the scheduled audit verify last found the chain intact, unix seconds",
            audit_chain_verified.clone(),
        );
        let audit_chain_valid = Gauge::default();
        registry.register(
            "audit_chain_valid",
            "1 when the last scheduled audit verify found the chain intact, 0 when it found tampering (or none has run yet)",
            audit_chain_valid.clone(),
        );
        Self {
            registry,
            job_runs,
            job_last_success,
            audit_chain_verified,
            audit_chain_valid,
            raised,
            delivered,
            acknowledged,
            cancelled,
            auth_refused,
            held_for_refused_logins,
            connected_sockets,
            messages_sent,
            post_commit_failures,
            jwks_refreshes,
            jwks_keys,
            connections_refused,
            rate_limited,
        }
    }
}

impl Metrics {
    pub fn raised(&self, severity: &'static str) {
        self.raised
            .get_or_create(&vec![("severity", severity)])
            .inc();
    }

    pub fn delivered(&self, replayed: bool) {
        let value = if replayed { "true" } else { "false" };
        self.delivered
            .get_or_create(&vec![("replayed", value)])
            .inc();
    }

    pub fn post_commit_failed(&self, step: &'static str) {
        self.post_commit_failures
            .get_or_create(&vec![("step", step)])
            .inc();
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
            .get_or_create(&vec![("job", job), ("outcome", outcome)])
            .inc();
    }

    /// `job` last succeeded at `unix_seconds`.
    pub fn job_succeeded_at(&self, job: &'static str, unix_seconds: i64) {
        self.job_last_success
            .get_or_create(&vec![("job", job)])
            .set(unix_seconds);
    }

    /// The outcome of an audit chain verification: intact (and when), or not.
    pub fn audit_chain_checked(&self, valid: bool, unix_seconds: i64) {
        if valid {
            self.audit_chain_verified.set(unix_seconds);
        }
        self.audit_chain_valid.set(i64::from(valid));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
