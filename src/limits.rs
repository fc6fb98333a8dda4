//! Rate limits per identity: the limiter types the edges check before they
//! do any work for a caller.
//!
//! Owns: [`Limits`], one keyed limiter per kind of work limited per caller
//! (raises and audit queries per token `sub`, connects per user) and the
//! quota of the per-socket limiter of client events ([`PerSocket`]), all
//! GCRA limiters from the `governor` crate; [`RefusedLogins`], which holds
//! back the requests of an address that keeps presenting bad tokens (after
//! OpenSSH's per-source penalties: the cheapest refusal is the one that
//! waits); and the pruning that keeps the keyed maps to the callers seen
//! lately.
//! Never: decide what a refusal looks like on the wire (each edge maps
//! [`RetryAfter`] once: `429` with `Retry-After`, a `rate_limited` ack), or
//! touch the database — a refused caller costs a map lookup, nothing more.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{LimitsConfig, Rate};

/// A refusal: the caller may try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// For `Retry-After`, which counts whole seconds: rounded up, at least 1.
    pub fn whole_seconds(self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }

    /// For payloads, which count milliseconds: rounded up, at least 1.
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_micros().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// `burst` at once, one more every `1 / per_second` seconds.
fn quota(rate: Rate) -> Quota {
    // Validated by `Config::validate`: burst ≥ 1, 0 < per_second ≤ 10⁶.
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("a period of at least 1 ns")
        .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN))
}

/// Above this many tracked callers a limiter prunes at once instead of
/// waiting for the next pass: a bound on memory even if callers churn
/// faster than [`PRUNE_EVERY`].
const PRUNE_ABOVE: usize = 10_000;

/// The longest a request is held at a time, however slow the configured
/// refill: it stays well inside `server.request_timeout` and a shutdown.
const LONGEST_HOLD: Duration = Duration::from_secs(5);

/// How often the keyed limiters forget callers whose budget is full again.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One budget per key (a caller's `sub`, a user id, a client address).
pub struct PerKey<K: Clone + Hash + Eq = String> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Clone + Hash + Eq> PerKey<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota(rate)),
        }
    }

    /// Spends one unit of `key`'s budget, or says how long until there is
    /// one.
    pub fn check<Q: ?Sized + ToOwned<Owned = K>>(&self, key: &Q) -> Result<(), RetryAfter> {
        if self.limiter.len() >= PRUNE_ABOVE {
            self.prune();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                RetryAfter(not_until.wait_time_from(DefaultClock::default().now()))
            })
    }

    /// Forgets the keys whose budget has refilled (they are
    /// indistinguishable from a caller never seen), so the map holds only
    /// the callers of the last `burst / per_second` seconds.
    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many callers are tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The addresses that were refused a login more often than
/// `limits.refused_logins_*` allow, and until when their requests are held.
///
/// A held request waits (a timer, no parsing of its token, no audit work)
/// and is then served as any other: an address that presents a good token
/// again is slowed, never refused. A flood from one address is so reduced
/// to about one refusal per connection per refill period.
pub struct RefusedLogins {
    budget: PerKey<IpAddr>,
    held: Mutex<HashMap<IpAddr, Instant>>,
}

impl RefusedLogins {
    pub fn new(rate: Rate) -> Self {
        Self {
            budget: PerKey::new(rate),
            held: Mutex::default(),
        }
    }

    /// Counts one refused login from `source`; over its budget, `source`
    /// is held until the budget allows another.
    pub fn refused(&self, source: IpAddr) {
        let source = network_of(source);
        if let Err(RetryAfter(wait)) = self.budget.check(&source) {
            let now = Instant::now();
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if held.len() >= PRUNE_ABOVE {
                held.retain(|_, until| *until > now);
            }
            held.insert(source, now + wait);
        }
    }

    /// How long a request of `source` must wait before it is served, if
    /// `source` is held.
    pub fn hold(&self, source: IpAddr) -> Option<Duration> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *held.get(&network_of(source))?;
        until
            .checked_duration_since(Instant::now())
            .map(|wait| wait.min(LONGEST_HOLD))
    }

    fn prune(&self) {
        self.budget.prune();
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, until| *until > now);
        held.shrink_to_fit();
    }
}

/// The key of an address's budget: an IPv4 address itself, an IPv6
/// address's /64 — one site's subnet, whose 2⁶⁴ addresses an attacker
/// could otherwise take one fresh budget each from.
fn network_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// One socket's budget of client events; dropped with the socket.
pub struct PerSocket(DefaultDirectRateLimiter);

impl std::fmt::Debug for PerSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerSocket")
    }
}

impl PerSocket {
    /// Spends one unit, or says how long until there is one.
    pub fn check(&self) -> Result<(), RetryAfter> {
        self.0.check().map_err(|not_until| {
            RetryAfter(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

/// Every limit of the daemon, built once from `[limits]`.
pub struct Limits {
    /// `POST /api/v1/notifications`, per caller.
    pub raises: PerKey,
    /// `/api/v1/audit`, timelines and the report, per caller.
    pub audit_queries: PerKey,
    /// Socket.IO connections, per user.
    pub connects: PerKey,
    /// Refused logins, per client address.
    pub refused_logins: Arc<RefusedLogins>,
    client_events: Quota,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            raises: PerKey::new(config.raises()),
            audit_queries: PerKey::new(config.audit_queries()),
            connects: PerKey::new(config.connects()),
            refused_logins: Arc::new(RefusedLogins::new(config.refused_logins())),
            client_events: quota(config.client_events()),
        }
    }

    /// A fresh budget of client events for a new socket.
    pub fn socket_events(&self) -> PerSocket {
        PerSocket(DefaultDirectRateLimiter::direct(self.client_events))
    }

    fn prune(&self) {
        for limiter in [&self.raises, &self.audit_queries, &self.connects] {
            limiter.prune();
        }
        self.refused_logins.prune();
    }

    /// Prunes the keyed limiters every [`PRUNE_EVERY`] until `stop`.
    pub fn spawn_pruner(self: &Arc<Self>, tasks: &TaskTracker, stop: CancellationToken) {
        let limits = self.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => limits.prune(),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(burst: u32, per_second: f64) -> Rate {
        Rate { burst, per_second }
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_and_other_keys_are_apart() {
        let limiter = PerKey::new(rate(3, 0.5));
        for _ in 0..3 {
            assert!(limiter.check("pacs").is_ok());
        }
        let wait = limiter.check("pacs").unwrap_err();
        assert!(wait.0 > Duration::from_millis(1500), "{wait:?}");
        assert!(wait.0 <= Duration::from_secs(2), "{wait:?}");
        assert_eq!(wait.whole_seconds(), 2);
        assert!(limiter.check("ris").is_ok());
    }

    #[tokio::test]
    async fn pruning_forgets_callers_whose_budget_refilled() {
        let limiter = PerKey::new(rate(1, 1_000_000.0));
        for i in 0..100 {
            limiter.check(&format!("caller-{i}")).unwrap();
        }
        assert_eq!(limiter.tracked(), 100);
        tokio::time::sleep(Duration::from_millis(5)).await;
        limiter.prune();
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn a_socket_budget_is_its_own() {
        let limits = Limits::new(&LimitsConfig {
            client_events_burst: 2,
            client_events_per_second: 0.1,
            ..LimitsConfig::default()
        });
        let (one, two) = (limits.socket_events(), limits.socket_events());
        assert!(one.check().is_ok() && one.check().is_ok());
        assert!(one.check().is_err());
        assert!(two.check().is_ok());
    }

    #[test]
    fn an_address_refused_too_often_is_held_and_others_are_not() {
        let refused = RefusedLogins::new(rate(2, 0.5));
        let (mallory, alice): (IpAddr, IpAddr) =
            ("192.0.2.66".parse().unwrap(), "192.0.2.1".parse().unwrap());
        refused.refused(mallory);
        refused.refused(mallory);
        assert_eq!(refused.hold(mallory), None, "within its burst");
        refused.refused(mallory);
        let wait = refused.hold(mallory).expect("held over its burst");
        assert!(
            wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert_eq!(refused.hold(alice), None);
    }

    #[test]
    fn an_ipv6_subnet_shares_one_budget() {
        let refused = RefusedLogins::new(rate(2, 0.5));
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            refused.refused(host.parse().unwrap());
        }
        assert!(refused.hold("2001:db8:1:2::9".parse().unwrap()).is_some());
        assert_eq!(refused.hold("2001:db8:1:3::1".parse().unwrap()), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).whole_seconds(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).whole_seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(3)).whole_seconds(), 3);
        assert_eq!(RetryAfter(Duration::from_micros(1500)).millis(), 2);
        assert_eq!(RetryAfter(Duration::ZERO).millis(), 1);
    }
}
