//! Typed configuration, loaded once at start-up.
//!
//! Owns: the TOML file plus `READBACK_<SECTION>__<KEY>` environment overrides
//! (figment), defaults, and validation that names the offending key.
//! Never: read files or the environment after start-up, or hold defaults
//! anywhere but here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use crate::severity::Severity;
use crate::transport_security::{self, Link};
use crate::validation::{check_event_pattern, check_topic_pattern};

/// Everything readbackd can be told, one struct per TOML section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    #[serde(default = "default_severities")]
    pub severities: BTreeMap<Severity, SeverityConfig>,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub escalation: EscalationConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub realtime: RealtimeConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
}

/// Rate limits per identity: each is a burst that may be used at once, then
/// a steady rate at which it refills (GCRA, the `governor` crate).
///
/// The defaults are sized on what a hospital sends, not on what the daemon
/// can take: a PACS raises tens to hundreds of findings a day, and after an
/// outage it flushes its queue — a day of one site's findings — at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Raises (`POST /api/v1/notifications`) per calling identity (`sub`).
    #[serde(default = "default_raises_burst")]
    pub raises_burst: u32,
    #[serde(default = "default_raises_per_second")]
    pub raises_per_second: f64,
    /// Client events (acknowledgements, `activity`, subscriptions, …) per
    /// socket.
    #[serde(default = "default_client_events_burst")]
    pub client_events_burst: u32,
    #[serde(default = "default_client_events_per_second")]
    pub client_events_per_second: f64,
    /// Audit queries and exports (`/api/v1/audit`, timelines, the report)
    /// per calling identity.
    #[serde(default = "default_audit_queries_burst")]
    pub audit_queries_burst: u32,
    #[serde(default = "default_audit_queries_per_second")]
    pub audit_queries_per_second: f64,
    /// Socket.IO connections per user: each one costs a replay.
    #[serde(default = "default_connects_burst")]
    pub connects_burst: u32,
    #[serde(default = "default_connects_per_second")]
    pub connects_per_second: f64,
    /// Refused logins (a bad or missing token, over HTTP or Socket.IO) per
    /// client address; over it, that address's next requests are held until
    /// its budget allows another.
    #[serde(default = "default_refused_logins_burst")]
    pub refused_logins_burst: u32,
    #[serde(default = "default_refused_logins_per_second")]
    pub refused_logins_per_second: f64,
}

/// One limit: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

impl LimitsConfig {
    pub fn raises(&self) -> Rate {
        Rate {
            burst: self.raises_burst,
            per_second: self.raises_per_second,
        }
    }
    pub fn client_events(&self) -> Rate {
        Rate {
            burst: self.client_events_burst,
            per_second: self.client_events_per_second,
        }
    }
    pub fn audit_queries(&self) -> Rate {
        Rate {
            burst: self.audit_queries_burst,
            per_second: self.audit_queries_per_second,
        }
    }
    pub fn connects(&self) -> Rate {
        Rate {
            burst: self.connects_burst,
            per_second: self.connects_per_second,
        }
    }
    pub fn refused_logins(&self) -> Rate {
        Rate {
            burst: self.refused_logins_burst,
            per_second: self.refused_logins_per_second,
        }
    }

    /// Each limit with its key prefix, for validation.
    fn all(&self) -> [(&'static str, Rate); 5] {
        [
            ("raises", self.raises()),
            ("client_events", self.client_events()),
            ("audit_queries", self.audit_queries()),
            ("connects", self.connects()),
            ("refused_logins", self.refused_logins()),
        ]
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            raises_burst: default_raises_burst(),
            raises_per_second: default_raises_per_second(),
            client_events_burst: default_client_events_burst(),
            client_events_per_second: default_client_events_per_second(),
            audit_queries_burst: default_audit_queries_burst(),
            audit_queries_per_second: default_audit_queries_per_second(),
            connects_burst: default_connects_burst(),
            connects_per_second: default_connects_per_second(),
            refused_logins_burst: default_refused_logins_burst(),
            refused_logins_per_second: default_refused_logins_per_second(),
        }
    }
}

/// A day of one large site's critical and actionable findings, flushed at
/// once when the PACS comes back after an outage.
fn default_raises_burst() -> u32 {
    500
}
/// Far above any real steady rate (a PACS raises a few an hour), far below
/// what the daemon commits (thousands a second): a looping caller is held
/// to it without slowing the others.
fn default_raises_per_second() -> f64 {
    50.0
}
/// "Acknowledge all" on a long list, subscriptions at page load.
fn default_client_events_burst() -> u32 {
    100
}
fn default_client_events_per_second() -> f64 {
    20.0
}
/// A reviewer paging through a month, or a script exporting it.
fn default_audit_queries_burst() -> u32 {
    60
}
fn default_audit_queries_per_second() -> f64 {
    2.0
}
/// All of a user's tabs and devices reconnecting at once (a daemon restart,
/// a network blip) fit in the burst.
fn default_connects_burst() -> u32 {
    20
}
fn default_connects_per_second() -> f64 {
    1.0
}
/// A shift of viewers behind one NAT reconnecting with expired tokens stays
/// well inside it; a loop of forged tokens does not.
fn default_refused_logins_burst() -> u32 {
    50
}
fn default_refused_logins_per_second() -> f64 {
    1.0
}

/// The highest rate a limit may name: one event per microsecond is beyond
/// anything the daemon serves, and keeps the refill period representable.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

/// The audit log: signed checkpoints, and how refused logins are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Refused logins are counted per source, channel and reason and
    /// written as one `auth.refused` row (with the count) per window.
    #[serde(default = "default_refusal_window", with = "humantime_serde")]
    pub refusal_window: Duration,
    /// Reads of notifications through the API are counted per reader,
    /// client address and notification (or list filter) and written as
    /// one `notification.read` row (with the count) per window.
    #[serde(default = "default_read_window", with = "humantime_serde")]
    pub read_window: Duration,
    /// Ed25519 private key (PKCS#8 PEM, from `readbackd audit keygen`) that
    /// `audit checkpoint` signs with and `audit verify --checkpoint` checks
    /// against. Read only by those commands, never by the daemon, so it can
    /// be readable by the operator who runs them and not by `readback`.
    pub checkpoint_key_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            refusal_window: default_refusal_window(),
            read_window: default_read_window(),
            checkpoint_key_file: None,
        }
    }
}

fn default_refusal_window() -> Duration {
    Duration::from_secs(60)
}
fn default_read_window() -> Duration {
    Duration::from_secs(60)
}

/// Ordinary real-time traffic beside critical findings: messages, topics,
/// presence, and how many connections a user may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// A new connection of a user closes the user's older sockets.
    #[serde(default)]
    pub single_connection_per_user: bool,
    /// Send `user_online` / `user_offline` to the `role:admin` room (and
    /// `connected` / `disconnected` updates to the operator console).
    #[serde(default)]
    pub presence_events: bool,
    /// Event names `POST /api/v1/messages` may send, as `*` patterns. The
    /// names readback itself uses are refused whatever this says.
    #[serde(default = "default_message_events")]
    pub message_events: Vec<String>,
    /// Largest `data` of one message, serialized.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Topics each role may subscribe to, as `*` patterns, e.g.
    /// `radiologist = ["study:*", "worklist:*"]`. A role not listed may
    /// subscribe to nothing.
    #[serde(default)]
    pub topics: BTreeMap<String, Vec<String>>,
    /// How many topics one socket may subscribe to at once.
    #[serde(default = "default_max_topics_per_socket")]
    pub max_topics_per_socket: usize,
    /// How many sockets one user may hold on one daemon (tabs, devices);
    /// a connection over it is refused.
    #[serde(default = "default_max_sockets_per_user")]
    pub max_sockets_per_user: usize,
    /// How many open notifications one connect replays at most; the rest
    /// are announced (`replay_truncated`) for the client to page through.
    #[serde(default = "default_max_replay")]
    pub max_replay: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            single_connection_per_user: false,
            presence_events: false,
            message_events: default_message_events(),
            max_message_bytes: default_max_message_bytes(),
            topics: BTreeMap::new(),
            max_topics_per_socket: default_max_topics_per_socket(),
            max_sockets_per_user: default_max_sockets_per_user(),
            max_replay: default_max_replay(),
        }
    }
}

fn default_message_events() -> Vec<String> {
    vec!["*".into()]
}
fn default_max_message_bytes() -> usize {
    16 * 1024
}
fn default_max_topics_per_socket() -> usize {
    100
}
fn default_max_sockets_per_user() -> usize {
    20
}
/// What readback is measured to replay on one connect well inside its
/// goal (1,000 in under 500 ms, docs/benchmarks.md).
fn default_max_replay() -> usize {
    1000
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:6379` (Redis 7 or later): daemons share Socket.IO rooms
    /// through Redis. Unset: through PostgreSQL when that is the database.
    pub redis_url: Option<String>,
    /// Allow `redis://` (no TLS) to a host other than this one. Room
    /// messages carry findings: refused unless set.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port`; port 0 picks a free port (printed on the ready line).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Browser origins allowed by CORS (HTTP API and Socket.IO polling).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Largest HTTP request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest Socket.IO message accepted, in bytes, on every transport
    /// (a long-polling body, a WebSocket message or frame); more closes the
    /// connection.
    #[serde(default = "default_max_socket_message_bytes")]
    pub max_socket_message_bytes: u64,
    /// How long a client may take to send a request's headers (and, on a
    /// new connection, its first request): slow-loris clients are cut off.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long an Engine.IO session may stay open without completing a
    /// Socket.IO CONNECT.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTPS and WSS with these PEM files; reloaded on SIGHUP.
    pub tls: Option<TlsConfig>,
    /// How long a drain (SIGTERM) may take before connections are cut.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Serve plain HTTP on an address other than loopback (behind a
    /// TLS-terminating proxy on another host). Refused unless set.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How long an HTTP API request may take to be answered (its body
    /// read, its work done); Socket.IO long-polling is not bound by it.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Reverse proxies (addresses or CIDRs) whose forwarding header names
    /// the client. Empty: the TCP peer is the client.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header a trusted proxy names the client in.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// Most connections one client address may hold at once: TCP
    /// connections of a peer that is not a trusted proxy, Engine.IO
    /// sessions, and behind a trusted proxy HTTP API requests in flight.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most Engine.IO sessions one client address may hold that have not
    /// completed an authenticated Socket.IO CONNECT.
    #[serde(default = "default_max_pending_sessions_per_ip")]
    pub max_pending_sessions_per_ip: usize,
}

/// The header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    #[serde(rename = "x-forwarded-for", alias = "X-Forwarded-For")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    #[serde(rename = "forwarded", alias = "Forwarded")]
    Forwarded,
}

impl ClientIpHeader {
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }
}

/// Addresses (`192.0.2.1`) or CIDRs (`10.0.0.0/8`).
fn networks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{text}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
/// A hospital NAT can put a ward's viewers behind one address: generous
/// for them, still a bound for one misbehaving host.
fn default_max_connections_per_ip() -> usize {
    256
}
/// A session waits for its CONNECT one round trip when all is well: a few
/// dozen at once from one address is a reconnect storm behind a NAT, more
/// is someone opening sessions they never use.
fn default_max_pending_sessions_per_ip() -> usize {
    64
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            cors_origins: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            max_socket_message_bytes: default_max_socket_message_bytes(),
            connect_timeout: default_connect_timeout(),
            header_read_timeout: default_header_read_timeout(),
            tls: None,
            shutdown_timeout: default_shutdown_timeout(),
            allow_plaintext: false,
            request_timeout: default_request_timeout(),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_pending_sessions_per_ip: default_max_pending_sessions_per_ip(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8001".into()
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
/// Engine.IO's own default: big enough that an oversize field is refused
/// with an answer by readback rather than by dropping the connection.
fn default_max_socket_message_bytes() -> u64 {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret (at least 32 bytes). Or `jwt_secret_file`, or
    /// a systemd credential named `jwt_secret` (`LoadCredential=`).
    pub jwt_secret: Option<SecretString>,
    /// A file holding the HS256 secret (surrounding whitespace ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key for RS256 or ES256 (the algorithm follows the key type
    /// unless `jwt_algorithm` says otherwise).
    pub jwt_public_key_file: Option<PathBuf>,
    /// PEM private key, used only by `readbackd token` with RS256/ES256.
    pub jwt_private_key_file: Option<PathBuf>,
    /// `HS256`, `RS256`, `PS256`, `ES256` or `EdDSA`; inferred from the key
    /// file when absent. With `jwks_url`, the one algorithm JWKS keys may
    /// verify (as `jwks_algorithms = [it]`).
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// The identity provider's JSON Web Key Set (`https://…/jwks.json`):
    /// a token is verified with the published key its `kid` names.
    pub jwks_url: Option<String>,
    /// Algorithms JWKS keys may verify (asymmetric only); default
    /// `RS256` and `ES256`.
    pub jwks_algorithms: Option<Vec<JwtAlgorithm>>,
    /// How often the key set is fetched again (keys removed by the
    /// identity provider stop verifying then).
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches asked for by tokens naming an
    /// unknown `kid`, so made-up `kid`s cannot hammer the identity provider.
    #[serde(
        default = "default_jwks_unknown_kid_cooldown",
        with = "humantime_serde"
    )]
    pub jwks_unknown_kid_cooldown: Duration,
    /// Time limit of one fetch; also the longest a login waits for the
    /// fetch its unknown `kid` asked for.
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Largest key set accepted, in bytes.
    #[serde(default = "default_jwks_max_bytes")]
    pub jwks_max_bytes: usize,
    /// Fetch the key set over plain `http://` from a host that is not
    /// loopback (a key set anyone on the path could replace).
    #[serde(default)]
    pub jwks_allow_plaintext: bool,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (at most 5 minutes).
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest lifetime (`exp - iat`) of a token accepted; when set, a
    /// token without `iat` is refused.
    #[serde(default, with = "humantime_serde")]
    pub max_token_lifetime: Option<Duration>,
    /// How long a socket stays connected after its token expired (it is
    /// sent `token_expired` at `exp`, and may `reauth` meanwhile).
    #[serde(default = "default_expired_token_grace", with = "humantime_serde")]
    pub expired_token_grace: Duration,
}

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at
/// least as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The secret of the trial config (`config/readback.toml`), published in
/// the repository: never good enough off loopback.
pub const TRIAL_SECRET: &str = "readback-development-secret-change-me";

impl AuthConfig {
    /// Fills `jwt_secret` from `jwt_secret_file`, or from the systemd
    /// credential `jwt_secret` (`$CREDENTIALS_DIRECTORY`), when the config
    /// does not give it inline.
    fn read_secret(&mut self) -> Result<(), ConfigError> {
        let file = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::one(
                    "auth: set only one of jwt_secret and jwt_secret_file",
                ));
            }
            (Some(_), None) => return Ok(()),
            (None, Some(file)) => file.clone(),
            (None, None) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if self.jwt_public_key_file.is_none() && self.jwks_url.is_none() => {
                    let credential = PathBuf::from(dir).join("jwt_secret");
                    if !credential.exists() {
                        return Ok(());
                    }
                    credential
                }
                _ => return Ok(()),
            },
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ConfigError::one(format!(
                "auth.jwt_secret_file: cannot read {}: {e}",
                file.display()
            ))
        })?;
        self.jwt_secret = Some(SecretString::from(text.trim().to_owned()));
        Ok(())
    }
}

impl AuthConfig {
    /// The algorithms JWKS keys may verify: `jwks_algorithms`, else
    /// `jwt_algorithm`, else RS256 and ES256.
    pub fn jwks_algorithms(&self) -> Vec<JwtAlgorithm> {
        match (&self.jwks_algorithms, self.jwt_algorithm) {
            (Some(list), _) => list.clone(),
            (None, Some(one)) => vec![one],
            (None, None) => vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
        }
    }

    fn check_jwks(&self, url: &str, problems: &mut Vec<String>) {
        match reqwest::Url::parse(url) {
            Err(e) => problems.push(format!("auth.jwks_url: `{url}` is not a URL: {e}")),
            Ok(parsed) => match parsed.scheme() {
                "https" => {}
                "http" if is_loopback_host(&parsed) || self.jwks_allow_plaintext => {}
                "http" => problems.push(format!(
                    "auth.jwks_url: `{url}` is plain HTTP to a host that is not loopback: anyone on the path could replace the keys; use https:// (or set auth.jwks_allow_plaintext = true)"
                )),
                other => problems.push(format!(
                    "auth.jwks_url: scheme `{other}` is not https"
                )),
            },
        }
        if self.jwks_algorithms.is_some() && self.jwt_algorithm.is_some() {
            problems.push("auth: set only one of jwt_algorithm and jwks_algorithms".into());
        }
        let algorithms = self.jwks_algorithms();
        if algorithms.is_empty() {
            problems.push("auth.jwks_algorithms: name at least one algorithm".into());
        }
        if algorithms.contains(&JwtAlgorithm::HS256) {
            problems.push(
                "auth.jwks_algorithms: HS256 is never taken from a JWKS (a shared secret is not a public key); use RS256, PS256, ES256 or EdDSA".into(),
            );
        }
        if self.jwks_refresh.is_zero() {
            problems.push("auth.jwks_refresh: must be more than 0s".into());
        }
        if self.jwks_unknown_kid_cooldown.is_zero() {
            problems.push("auth.jwks_unknown_kid_cooldown: must be more than 0s".into());
        }
        if self.jwks_timeout.is_zero() {
            problems.push("auth.jwks_timeout: must be more than 0s".into());
        }
        if self.jwks_max_bytes < 1024 {
            problems.push("auth.jwks_max_bytes: must be at least 1024".into());
        }
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback_host(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_unknown_kid_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_jwks_max_bytes() -> usize {
    128 * 1024
}
fn default_expired_token_grace() -> Duration {
    Duration::from_secs(30)
}

/// The most clock skew `auth.leeway` may allow: more would let expired
/// tokens in for longer than a hospital would accept.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    #[serde(default = "default_database_url")]
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Allow a PostgreSQL host other than this one without
    /// `sslmode=require`/`verify-full`. Refused unless set.
    #[serde(default)]
    pub allow_plaintext: bool,
}

impl DatabaseConfig {
    /// The URL readback connects with: a PostgreSQL URL that asks for TLS
    /// verifies the server's certificate and name (`verify-full`).
    pub fn connect_url(&self) -> String {
        if self.url.starts_with("sqlite:") {
            self.url.clone()
        } else {
            transport_security::postgres_verified_url(&self.url)
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
            allow_plaintext: false,
        }
    }
}

fn default_database_url() -> String {
    "sqlite://data/readback.db".into()
}
fn default_max_connections() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_warning_before", with = "humantime_serde")]
    pub warning_before: Duration,
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Activity is written to the database at most this often per socket;
    /// warnings and expiry are judged this much late, so a session with
    /// activity inside its idle window never expires.
    #[serde(default = "default_activity_coalesce", with = "humantime_serde")]
    pub activity_coalesce: Duration,
    /// Shorter or longer idle timeouts for some roles, e.g.
    /// `{ ed-physician = "5m", reading-room = "30m" }`. With several
    /// matching roles the shortest applies.
    #[serde(default, deserialize_with = "durations_by_key")]
    pub idle_timeout_by_role: BTreeMap<String, Duration>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            warning_before: default_warning_before(),
            max_lifetime: default_max_lifetime(),
            activity_coalesce: default_activity_coalesce(),
            idle_timeout_by_role: BTreeMap::new(),
        }
    }
}

fn default_activity_coalesce() -> Duration {
    Duration::from_secs(1)
}

fn durations_by_key<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Duration>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, text)| {
            humantime::parse_duration(&text)
                .map(|duration| (key.clone(), duration))
                .map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))
        })
        .collect()
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_warning_before() -> Duration {
    Duration::from_secs(2 * 60)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// `[schedule]`: the calendar jobs. Each job fires on a cron expression
/// (with seconds: `sec min hour day-of-month month day-of-week`) read in
/// `timezone`, an IANA zone name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default = "default_schedule_timezone")]
    pub timezone: String,
    /// How long a daemon holds a firing it claimed: one that dies mid-job
    /// has its firing retried (at the next start-up, or by another daemon's
    /// catch-up) once this has passed.
    #[serde(default = "default_schedule_lease", with = "humantime_serde")]
    pub lease: Duration,
    #[serde(default)]
    pub audit_verify: JobConfig,
    #[serde(default)]
    pub retention: JobConfig,
    #[serde(default)]
    pub smtp_test: JobConfig,
    #[serde(default)]
    pub digest: JobConfig,
    #[serde(default)]
    pub compliance_report: JobConfig,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            timezone: default_schedule_timezone(),
            lease: default_schedule_lease(),
            audit_verify: JobConfig::default(),
            retention: JobConfig::default(),
            smtp_test: JobConfig::default(),
            digest: JobConfig::default(),
            compliance_report: JobConfig::default(),
        }
    }
}

fn default_schedule_timezone() -> String {
    "UTC".into()
}
fn default_schedule_lease() -> Duration {
    Duration::from_secs(3600)
}

/// One job's table. Keys a job does not use are refused by validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unset: the job's default ([`Job::default_cron`]).
    pub cron: Option<String>,
    /// Unset: on (a job that emails runs only with `recipients`).
    pub enabled: Option<bool>,
    /// Who gets the job's email (for `audit_verify`: a failure only).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// `retention`: rows settled longer ago than this are deleted.
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// `compliance_report`: `week` or `month`, the period before the firing
    /// that the report covers.
    pub period: Option<ReportPeriod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportPeriod {
    Week,
    Month,
}

/// The calendar jobs readbackd knows. The name is the `[schedule.<name>]`
/// table, the metrics' `job` label and the `job.ran` audit rows' `job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    AuditVerify,
    Retention,
    SmtpTest,
    Digest,
    ComplianceReport,
}

impl Job {
    pub const ALL: [Job; 5] = [
        Job::AuditVerify,
        Job::Retention,
        Job::SmtpTest,
        Job::Digest,
        Job::ComplianceReport,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::AuditVerify => "audit_verify",
            Job::Retention => "retention",
            Job::SmtpTest => "smtp_test",
            Job::Digest => "digest",
            Job::ComplianceReport => "compliance_report",
        }
    }

    /// Nightly checks at night, emails people read in the morning.
    pub fn default_cron(self) -> &'static str {
        match self {
            Job::AuditVerify => "0 30 2 * * *",
            Job::Retention => "0 0 3 * * *",
            Job::SmtpTest => "0 0 9 * * Mon",
            Job::Digest => "0 0 7 * * *",
            Job::ComplianceReport => "0 0 6 1 * *",
        }
    }

    /// Whether the job does anything without recipients.
    fn needs_recipients(self) -> bool {
        !matches!(self, Job::AuditVerify | Job::Retention)
    }
}

/// Default of `schedule.retention.max_age`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(180 * 24 * 3600);

impl ScheduleConfig {
    pub fn job(&self, job: Job) -> &JobConfig {
        match job {
            Job::AuditVerify => &self.audit_verify,
            Job::Retention => &self.retention,
            Job::SmtpTest => &self.smtp_test,
            Job::Digest => &self.digest,
            Job::ComplianceReport => &self.compliance_report,
        }
    }

    /// The jobs that are to run: enabled, and with recipients where the
    /// job is an email.
    pub fn active(&self) -> Vec<Job> {
        Job::ALL
            .into_iter()
            .filter(|&job| {
                let config = self.job(job);
                config.enabled != Some(false)
                    && (!job.needs_recipients() || !config.recipients.is_empty())
            })
            .collect()
    }

    pub fn cron(&self, job: Job) -> &str {
        self.job(job)
            .cron
            .as_deref()
            .unwrap_or_else(|| job.default_cron())
    }

    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        self.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!(
                "schedule.timezone: `{}` is not an IANA time zone (e.g. Europe/Berlin, UTC)",
                self.timezone
            )
        })
    }

    pub fn retention_age(&self) -> Duration {
        self.retention.max_age.unwrap_or(DEFAULT_RETENTION)
    }

    pub fn report_period(&self) -> ReportPeriod {
        self.compliance_report.period.unwrap_or(ReportPeriod::Month)
    }

    fn check(&self, smtp: &SmtpConfig, problems: &mut Vec<String>) {
        if let Err(e) = self.tz() {
            problems.push(e);
        }
        if self.lease.is_zero() {
            problems.push("schedule.lease: must be greater than zero".into());
        }
        for job in Job::ALL {
            let name = job.name();
            let config = self.job(job);
            if let Err(e) = parse_cron(self.cron(job)) {
                problems.push(format!("schedule.{name}.cron: {e}"));
            }
            for address in &config.recipients {
                if address.parse::<lettre::Address>().is_err() {
                    problems.push(format!(
                        "schedule.{name}.recipients: `{address}` is not an e-mail address"
                    ));
                }
            }
            if !config.recipients.is_empty() && smtp.url.is_none() {
                problems.push(format!(
                    "schedule.{name}.recipients: set smtp.url (and smtp.from) to send them email"
                ));
            }
            if config.max_age.is_some() && job != Job::Retention {
                problems.push(format!(
                    "schedule.{name}.max_age: only for schedule.retention"
                ));
            }
            if config.period.is_some() && job != Job::ComplianceReport {
                problems.push(format!(
                    "schedule.{name}.period: only for schedule.compliance_report"
                ));
            }
        }
        if self.retention.max_age.is_some_and(|d| d.is_zero()) {
            problems.push("schedule.retention.max_age: must be greater than zero".into());
        }
    }
}

/// Parses a cron expression the way the job scheduler reads it: six fields,
/// seconds first (`0 30 2 * * *` is 02:30:00 every day), day-of-month and
/// day-of-week both required to match when both are given.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .map_err(|e| format!("`{expression}` is not a cron expression with seconds ({e})"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            tick: default_tick(),
        }
    }
}

fn default_tick() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityConfig {
    /// Default time a recipient has to acknowledge.
    #[serde(with = "humantime_serde")]
    pub ack_within: Duration,
}

/// Defaults follow the ACR Practice Parameter for Communication of
/// Diagnostic Imaging Findings: category 1 in minutes, 2 in hours, 3 in days.
fn default_severities() -> BTreeMap<Severity, SeverityConfig> {
    [
        (Severity::Critical, 10 * 60),
        (Severity::Urgent, 2 * 3600),
        (Severity::Actionable, 3 * 86400),
    ]
    .into_iter()
    .map(|(severity, secs)| {
        (
            severity,
            SeverityConfig {
                ack_within: Duration::from_secs(secs),
            },
        )
    })
    .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain, for loopback), `smtp://host:587?tls=required`
    /// (STARTTLS), `smtps://host:465` (implicit TLS), with optional
    /// `user:password@`; or `file://DIR` to write each email to a file
    /// (trials without a mail server). Unset: escalation emails stay in the
    /// outbox until a server is configured.
    pub url: Option<String>,
    /// The sender, e.g. `readback@hospital.example` or `Readback <readback@hospital.example>`.
    pub from: Option<String>,
    /// How long one SMTP attempt may take, from connecting to the answer to
    /// DATA; a claimed email is leased for this plus 5 s.
    #[serde(default = "default_smtp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// After this many failed attempts an email is given up (and audited).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Allow a relay other than this host without TLS (`smtps://` or
    /// `?tls=required`). Refused unless set.
    #[serde(default)]
    pub allow_plaintext: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: None,
            from: None,
            timeout: default_smtp_timeout(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            max_attempts: default_max_attempts(),
            allow_plaintext: false,
        }
    }
}

fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_base() -> Duration {
    Duration::from_secs(15)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(600)
}
fn default_max_attempts() -> u32 {
    50
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    #[serde(default)]
    pub levels: Vec<EscalationLevelConfig>,
    /// Put the caller's notification id, patient id, study id, accession
    /// number and the message in emails.
    #[serde(default)]
    pub include_phi: bool,
    /// Put the title in emails (without `include_phi` too): a PACS whose
    /// titles may name the patient turns it off.
    #[serde(default = "default_true")]
    pub include_title: bool,
    /// Link in each email; `{reference}` is replaced by readback's reference
    /// (`RB-42`), `{id}` (with `include_phi` only) by the caller's id, e.g.
    /// `https://pacs.hospital.example/worklist?readback={reference}`.
    pub link_template: Option<String>,
    /// Repeat the last level this often until someone acknowledges.
    #[serde(default, with = "humantime_serde")]
    pub repeat_every: Option<Duration>,
    /// How many times the last level is repeated at most.
    #[serde(default = "default_repeat_limit")]
    pub repeat_limit: u32,
    /// A `critical` notification raised while its recipient has no
    /// connected socket starts escalating at once instead of at its
    /// acknowledgement deadline.
    #[serde(default)]
    pub escalate_when_offline: bool,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            levels: Vec::new(),
            include_phi: false,
            include_title: true,
            link_template: None,
            repeat_every: None,
            repeat_limit: default_repeat_limit(),
            escalate_when_offline: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_repeat_limit() -> u32 {
    12
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevelConfig {
    /// Delay after the acknowledgement deadline.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Addresses, or `recipient` for the recipient's e-mail (every known
    /// holder's, for a role notification).
    pub to: Vec<String>,
}

/// Where and how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` when systemd connected stderr to the journal
    /// (`JOURNAL_STREAM`), else `text`.
    #[default]
    Auto,
    /// The journal's native protocol: levels as priorities, fields as
    /// journal fields.
    Journald,
    /// Human-readable lines on stderr; coloured only on a terminal.
    #[serde(alias = "pretty")]
    Text,
    /// One JSON object a line on stderr.
    Json,
}

/// When the log file (`logging.dir`) starts a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    #[default]
    Daily,
    Hourly,
    Minutely,
    Never,
}

/// An algorithm tokens may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    PS256,
    ES256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `auto`, `journald`, `text` (or `pretty`) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `readback=debug,info`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write logs to files here (`readback.log.<date>`); unset: stderr
    /// only (journald under systemd).
    pub dir: Option<PathBuf>,
    /// `daily`, `hourly`, `minutely` or `never`.
    #[serde(default)]
    pub rotation: LogRotation,
    /// How many log files to keep.
    #[serde(default = "default_log_retention")]
    pub retention: usize,
}

fn default_log_retention() -> usize {
    14
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
            dir: None,
            rotation: LogRotation::default(),
            retention: default_log_retention(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// A configuration that could not be loaded, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl Config {
    /// Reads `path`, applies `READBACK_*` overrides from the environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::one(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        Self::from_figment(
            Figment::new()
                .merge(Toml::file_exact(path))
                .merge(env_overrides()),
        )
    }

    /// Parses a TOML string (environment overrides still apply).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::new()
                .merge(Toml::string(text))
                .merge(env_overrides()),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(|errors| ConfigError {
            problems: errors.into_iter().map(describe_figment_error).collect(),
        })?;
        config.auth.read_secret()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: relations between keys and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.listen_addr().is_err() {
            problems.push(format!(
                "server.listen: `{}` is not a host:port address",
                self.server.listen
            ));
        }
        if self.server.max_body_bytes < 1024 {
            problems.push("server.max_body_bytes: must be at least 1024".into());
        }
        let server = &self.server;
        if server.request_timeout.is_zero() {
            problems.push("server.request_timeout: must be greater than zero".into());
        }
        if server.max_connections_per_ip == 0 {
            problems.push("server.max_connections_per_ip: must be at least 1".into());
        }
        if server.max_pending_sessions_per_ip == 0 {
            problems.push("server.max_pending_sessions_per_ip: must be at least 1".into());
        }
        for net in &server.trusted_proxies {
            if net.prefix_len() == 0 {
                problems.push(format!(
                    "server.trusted_proxies: `{net}` trusts every peer's forwarding header (anyone could name any address); list the proxies"
                ));
            }
        }
        if self.audit.read_window.is_zero() {
            problems.push("audit.read_window: must be greater than zero".into());
        }
        let auth = &self.auth;
        match (&auth.jwt_secret, &auth.jwt_public_key_file, &auth.jwks_url) {
            (None, None, None) => {
                problems.push("auth: set jwt_secret (HS256), jwt_public_key_file (RS256/ES256) or jwks_url".into());
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => problems.push(
                "auth: set only one of jwt_secret, jwt_public_key_file and jwks_url, so the accepted keys are unambiguous".into(),
            ),
            (Some(secret), None, None) => {
                use secrecy::ExposeSecret;
                if secret.expose_secret().len() < MIN_SECRET_BYTES {
                    problems.push(format!(
                        "auth.jwt_secret: must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                    ));
                }
                if secret.expose_secret() == TRIAL_SECRET && !self.listens_on_loopback_only() {
                    problems.push(
                        "auth.jwt_secret: the published trial secret is allowed only when server.listen is a loopback address; generate one (`openssl rand -hex 32`)".into(),
                    );
                }
            }
            (None, Some(file), None) => {
                if let Err(e) = std::fs::metadata(file) {
                    problems.push(format!(
                        "auth.jwt_public_key_file: cannot read {}: {e}",
                        file.display()
                    ));
                }
            }
            (None, None, Some(url)) => auth.check_jwks(url, &mut problems),
        }
        if auth.jwks_url.is_none() && auth.jwks_algorithms.is_some() {
            problems.push("auth.jwks_algorithms: only used with auth.jwks_url".into());
        }
        if auth.leeway > MAX_LEEWAY {
            problems.push("auth.leeway: at most 5m".into());
        }
        if auth.max_token_lifetime.is_some_and(|d| d.is_zero()) {
            problems.push("auth.max_token_lifetime: must be more than 0s".into());
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database.url: `{url}` must start with sqlite:, postgres:// or postgresql://"
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be at least 1".into());
        }
        let sessions = &self.sessions;
        if sessions.idle_timeout.is_zero() {
            problems.push("sessions.idle_timeout: must be greater than zero".into());
        }
        if sessions.warning_before >= sessions.idle_timeout {
            problems
                .push("sessions.warning_before: must be shorter than sessions.idle_timeout".into());
        }
        if sessions.max_lifetime < sessions.idle_timeout {
            problems.push(
                "sessions.max_lifetime: must not be shorter than sessions.idle_timeout".into(),
            );
        }
        for (role, idle) in &sessions.idle_timeout_by_role {
            if idle.is_zero() || *idle > sessions.max_lifetime {
                problems.push(format!(
                    "sessions.idle_timeout_by_role.{role}: must be between 0 and sessions.max_lifetime"
                ));
            }
        }
        if self.scheduler.tick.is_zero() {
            problems.push("scheduler.tick: must be greater than zero".into());
        }
        for (name, severity) in &self.severities {
            if severity.ack_within.is_zero() {
                problems.push(format!(
                    "severities.{name}.ack_within: must be greater than zero"
                ));
            }
        }
        for severity in Severity::ALL {
            if !self.severities.contains_key(&severity) {
                problems.push(format!(
                    "severities.{}: missing (every severity needs an ack_within)",
                    severity.as_str()
                ));
            }
        }
        let mut previous = Duration::ZERO;
        for (index, level) in self.escalation.levels.iter().enumerate() {
            if level.to.is_empty() {
                problems.push(format!(
                    "escalation.levels[{index}].to: must name at least one address"
                ));
            }
            for target in &level.to {
                if target != "recipient" && target.parse::<lettre::Address>().is_err() {
                    problems.push(format!(
                        "escalation.levels[{index}].to: `{target}` is not an e-mail address (or `recipient`)"
                    ));
                }
            }
            if level.after < previous {
                problems.push(format!(
                    "escalation.levels[{index}].after: levels must be in order of `after`"
                ));
            }
            previous = level.after;
        }
        let realtime = &self.realtime;
        for pattern in &realtime.message_events {
            if let Err(why) = check_event_pattern(pattern) {
                problems.push(format!("realtime.message_events: `{pattern}` {why}"));
            }
        }
        if realtime.max_message_bytes < 64
            || realtime.max_message_bytes > self.server.max_body_bytes
        {
            problems.push(format!(
                "realtime.max_message_bytes: must be between 64 and server.max_body_bytes ({})",
                self.server.max_body_bytes
            ));
        }
        for (role, patterns) in &realtime.topics {
            for pattern in patterns {
                if let Err(why) = check_topic_pattern(pattern) {
                    problems.push(format!("realtime.topics.{role}: `{pattern}` {why}"));
                }
            }
        }
        if self.audit.refusal_window.is_zero() {
            problems.push("audit.refusal_window: must be more than 0s".into());
        }
        if realtime.max_sockets_per_user == 0 {
            problems.push("realtime.max_sockets_per_user: must be at least 1".into());
        }
        if realtime.max_replay == 0 {
            problems.push("realtime.max_replay: must be at least 1".into());
        }
        for (name, rate) in self.limits.all() {
            if rate.burst == 0 {
                problems.push(format!("limits.{name}_burst: must be at least 1"));
            }
            if !(rate.per_second > 0.0 && rate.per_second <= MAX_RATE_PER_SECOND) {
                problems.push(format!(
                    "limits.{name}_per_second: must be more than 0 and at most {MAX_RATE_PER_SECOND}"
                ));
            }
        }
        if realtime.max_topics_per_socket == 0 {
            problems.push("realtime.max_topics_per_socket: must be at least 1".into());
        }
        if let Some(template) = &self.escalation.link_template
            && template.contains("{id}")
            && !self.escalation.include_phi
        {
            problems.push(
                "escalation.link_template: `{id}` is the caller's id, which may embed an accession \
                 number or MRN; use `{reference}` (GET /api/v1/notifications/{reference} resolves it) \
                 or set escalation.include_phi = true"
                    .into(),
            );
        }
        if self.escalation.repeat_every.is_some_and(|d| d.is_zero()) {
            problems.push("escalation.repeat_every: must be greater than zero".into());
        }
        if let Some(from) = &self.smtp.from
            && from.parse::<lettre::message::Mailbox>().is_err()
        {
            problems.push(format!("smtp.from: `{from}` is not an e-mail address"));
        }
        if let Some(url) = &self.smtp.url {
            if !["smtp://", "smtps://", "file://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                problems.push(format!(
                    "smtp.url: `{url}` must start with smtp://, smtps:// or file://"
                ));
            }
            if self.smtp.from.is_none() {
                problems.push("smtp.from: required when smtp.url is set".into());
            }
        }
        self.schedule.check(&self.smtp, &mut problems);
        if let Some(tls) = &self.server.tls {
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if let Err(e) = std::fs::File::open(path) {
                    problems.push(format!("{key}: cannot read {}: {e}", path.display()));
                }
            }
        }
        if let Some(url) = &self.cluster.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problems.push(format!(
                "cluster.redis_url: `{url}` must start with redis:// or rediss://"
            ));
        }
        for (key, allowed, link) in self.links() {
            if link == Link::Plaintext && !allowed {
                problems.push(format!(
                    "{key}: would travel unencrypted over the network; use TLS (docs/security.md, \
                     *Transmission security*) or set {}.allow_plaintext = true",
                    key.split('.').next().unwrap_or(key)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Each configured link: its key, whether plaintext is allowed for it,
    /// and how it travels.
    fn links(&self) -> Vec<(&'static str, bool, Link)> {
        let listen = self.listen_addr().ok().map(|addr| addr.ip());
        let mut links = vec![(
            "server.listen",
            self.server.allow_plaintext,
            transport_security::listener(listen, self.server.tls.is_some()),
        )];
        if self.database.url.starts_with("postgres") {
            links.push((
                "database.url",
                self.database.allow_plaintext,
                transport_security::postgres(&self.database.url),
            ));
        }
        if let Some(url) = &self.smtp.url {
            links.push((
                "smtp.url",
                self.smtp.allow_plaintext,
                transport_security::smtp(url),
            ));
        }
        if let Some(url) = &self.cluster.redis_url {
            links.push((
                "cluster.redis_url",
                self.cluster.allow_plaintext,
                transport_security::redis(url),
            ));
        }
        links
    }

    /// The links that travel unencrypted over the network because the
    /// operator allowed it: the daemon names each loudly at start.
    pub fn plaintext_links(&self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = self
            .links()
            .into_iter()
            .filter(|(_, _, link)| *link == Link::Plaintext)
            .map(|(key, _, _)| key)
            .collect();
        // `auth` refuses it unless `jwks_allow_plaintext`.
        if self
            .auth
            .jwks_url
            .as_deref()
            .is_some_and(|url| transport_security::https(url) == Link::Plaintext)
        {
            keys.push("auth.jwks_url");
        }
        keys
    }

    /// The address to bind, resolved from `server.listen`.
    /// Whether `server.listen` is a loopback address (reachable from this
    /// host only).
    pub fn listens_on_loopback_only(&self) -> bool {
        self.listen_addr().is_ok_and(|addr| addr.ip().is_loopback())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, std::io::Error> {
        use std::net::ToSocketAddrs;
        self.server
            .listen
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))
    }

    /// The configured acknowledgement window for a severity.
    pub fn ack_within(&self, severity: Severity) -> Duration {
        self.severities
            .get(&severity)
            .map(|s| s.ack_within)
            .expect("validated: every severity is configured")
    }
}

/// `READBACK_<SECTION>__<KEY>` variables. Other `READBACK_*` variables
/// (such as `READBACK_CONFIG`, the config path) are not config keys.
fn env_overrides() -> Env {
    Env::prefixed("READBACK_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// Turns figment's error into one line that names the key.
fn describe_figment_error(error: figment::Error) -> String {
    use figment::error::Kind;
    let key = if error.path.is_empty() {
        String::new()
    } else {
        error.path.join(".")
    };
    let message = match &error.kind {
        // figment's path already ends with the unknown key itself.
        Kind::UnknownField(field, _) if key.ends_with(field.as_str()) => {
            return format!("{key}: unknown key");
        }
        Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        Kind::MissingField(field) => {
            let full = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            return format!("{full}: missing");
        }
        _ => error.kind.to_string(),
    };
    if key.is_empty() {
        message
    } else {
        format!("{key}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [auth]
        jwt_secret = "0123456789abcdef0123456789abcdef-test"
    "#;

    #[test]
    fn short_and_published_secrets_are_refused() {
        let short = Config::from_toml("[auth]\njwt_secret = \"0123456789abcdef-0123\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("auth.jwt_secret: must be at least 32 bytes"),
            "{short}"
        );
        let trial = format!("[auth]\njwt_secret = \"{TRIAL_SECRET}\"\n");
        // On loopback (the trial's own listen address) it is fine...
        assert!(Config::from_toml(&trial).is_ok());
        // ...off loopback it is refused.
        let exposed = Config::from_toml(&format!("[server]\nlisten = \"0.0.0.0:8001\"\n{trial}"))
            .unwrap_err()
            .to_string();
        assert!(exposed.contains("published trial secret"), "{exposed}");
    }

    #[test]
    fn a_jwks_url_is_checked() {
        let jwks = |auth: &str| Config::from_toml(&format!("[auth]\n{auth}\n"));
        let config = jwks("jwks_url = \"https://idp.hospital.example/jwks.json\"").unwrap();
        assert_eq!(config.auth.jwks_refresh, Duration::from_secs(300));
        assert_eq!(
            config.auth.jwks_algorithms(),
            [JwtAlgorithm::RS256, JwtAlgorithm::ES256]
        );
        // Plain HTTP only to loopback, or when allowed.
        assert!(jwks("jwks_url = \"http://127.0.0.1:8080/jwks.json\"").is_ok());
        assert!(jwks("jwks_url = \"http://[::1]:8080/jwks.json\"").is_ok());
        let plain = jwks("jwks_url = \"http://idp.hospital.example/jwks.json\"")
            .unwrap_err()
            .to_string();
        assert!(
            plain.contains("auth.jwks_url: `http://idp.hospital.example/jwks.json` is plain HTTP"),
            "{plain}"
        );
        assert!(
            jwks(
                "jwks_url = \"http://idp.hospital.example/jwks.json\"\njwks_allow_plaintext = true"
            )
            .is_ok()
        );
        let cases = [
            (
                "jwks_url = \"https://idp.example/jwks.json\"\njwt_secret = \"0123456789abcdef0123456789abcdef-test\"",
                "auth: set only one of jwt_secret, jwt_public_key_file and jwks_url",
            ),
            (
                "jwks_url = \"https://idp.example/jwks.json\"\njwks_algorithms = [\"RS256\", \"HS256\"]",
                "auth.jwks_algorithms: HS256 is never taken from a JWKS",
            ),
            (
                "jwks_url = \"https://idp.example/jwks.json\"\njwt_algorithm = \"HS256\"",
                "auth.jwks_algorithms: HS256 is never taken from a JWKS",
            ),
            (
                "jwks_url = \"https://idp.example/jwks.json\"\njwks_algorithms = []",
                "auth.jwks_algorithms: name at least one algorithm",
            ),
            (
                "jwks_url = \"ftp://idp.example/jwks.json\"",
                "auth.jwks_url: scheme `ftp` is not https",
            ),
            (
                "jwks_url = \"https://idp.example/jwks.json\"\njwks_unknown_kid_cooldown = \"0s\"",
                "auth.jwks_unknown_kid_cooldown: must be more than 0s",
            ),
            (
                "jwt_secret = \"0123456789abcdef0123456789abcdef-test\"\njwks_algorithms = [\"RS256\"]",
                "auth.jwks_algorithms: only used with auth.jwks_url",
            ),
        ];
        for (auth, problem) in cases {
            let error = jwks(auth).unwrap_err().to_string();
            assert!(error.contains(problem), "{auth}: {error}");
        }
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt_secret");
        std::fs::write(&file, "a-secret-from-a-file-0123456789abcdef\n").unwrap();
        let config = Config::from_toml(&format!(
            "[auth]\njwt_secret_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            config.auth.jwt_secret.unwrap().expose_secret(),
            "a-secret-from-a-file-0123456789abcdef"
        );
        let both = Config::from_toml(&format!(
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\njwt_secret_file = \"{}\"\n",
            file.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("only one of jwt_secret and jwt_secret_file"),
            "{both}"
        );
        let missing = Config::from_toml("[auth]\njwt_secret_file = \"/nonexistent/secret\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("auth.jwt_secret_file: cannot read /nonexistent/secret"),
            "{missing}"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_but_not_everyone() {
        let config = Config::from_toml(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\nclient_ip_header = \"forwarded\"\n{MINIMAL}"
        ))
        .unwrap();
        let nets: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(config.server.client_ip_header, ClientIpHeader::Forwarded);
        let bad = Config::from_toml(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("server.trusted_proxies"), "{bad}");
        assert!(
            bad.contains("`10.0.0.0/33` is not an IP address or CIDR"),
            "{bad}"
        );
        let everyone = Config::from_toml(&format!(
            "[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\nmax_connections_per_ip = 0\n{MINIMAL}"
        ))
        .unwrap_err()
        .to_string();
        assert!(everyone.contains("trusts every peer"), "{everyone}");
        assert!(
            everyone.contains("server.max_connections_per_ip: must be at least 1"),
            "{everyone}"
        );
    }

    #[test]
    fn minimal_config_gets_protocol_defaults() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8001");
        assert_eq!(config.database.url, "sqlite://data/readback.db");
        assert_eq!(
            config.ack_within(Severity::Critical),
            Duration::from_secs(600)
        );
        assert_eq!(config.sessions.idle_timeout, Duration::from_secs(900));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_named() {
        let err = Config::from_toml(
            r#"
            [auth]
            jwt_secret = "0123456789abcdef0123456789abcdef-test"
            [sessions]
            idle_timout = "5m"
            "#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("sessions.idle_timout: unknown key"),
            "{err}"
        );

        let err = Config::from_toml(
            r#"
            [auth]
            jwt_secret = "0123456789abcdef0123456789abcdef-test"
            [scheduler]
            tick = "soon"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("scheduler.tick"), "{err}");
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero_and_negative() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(
            config.limits.raises(),
            Rate {
                burst: 500,
                per_second: 50.0
            }
        );
        assert_eq!(config.realtime.max_replay, 1000);
        let fractional = Config::from_toml(&format!(
            "{MINIMAL}\n[limits]\naudit_queries_per_second = 0.5\nraises_burst = 3\n"
        ))
        .unwrap();
        assert_eq!(fractional.limits.audit_queries().per_second, 0.5);
        assert_eq!(fractional.limits.raises().burst, 3);
        let err = Config::from_toml(&format!(
            "{MINIMAL}\n[limits]\nraises_burst = 0\nclient_events_per_second = 0\n\
             connects_per_second = -1.5\n[realtime]\nmax_replay = 0\n"
        ))
        .unwrap_err()
        .to_string();
        for key in [
            "limits.raises_burst: must be at least 1",
            "limits.client_events_per_second: must be more than 0",
            "limits.connects_per_second: must be more than 0",
            "realtime.max_replay: must be at least 1",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
        let negative =
            Config::from_toml(&format!("{MINIMAL}\n[limits]\naudit_queries_burst = -1\n"))
                .unwrap_err()
                .to_string();
        assert!(
            negative.contains("limits.audit_queries_burst"),
            "{negative}"
        );
    }

    #[test]
    fn relations_between_keys_are_checked_all_at_once() {
        let err = Config::from_toml(
            r#"
            [auth]
            jwt_secret = "short"
            [database]
            url = "mysql://x"
            [sessions]
            idle_timeout = "1m"
            warning_before = "2m"
            "#,
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }
}
