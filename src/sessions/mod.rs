//! Sessions: idle timeout, warning before expiry, maximum lifetime.
//!
//! Owns: the rules (which idle timeout applies to whom, when a session
//! expires, when it is warned) as plain functions, and in [`service`] the
//! orchestration — starting sessions on connect, recording activity
//! cheaply, extending, terminating, and the scheduler's claim of what is
//! due. All session state lives in the database, so a restart or a second
//! daemon picks up exactly where the first left off.
//! Never: keep a timer per session in memory — the scheduler asks the
//! database what is due.

pub mod service;

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::config::SessionsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Active,
    Expired,
    Terminated,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Expired => "expired",
            SessionState::Terminated => "terminated",
        }
    }
}

impl FromStr for SessionState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "active" => Ok(SessionState::Active),
            "expired" => Ok(SessionState::Expired),
            "terminated" => Ok(SessionState::Terminated),
            _ => Err(()),
        }
    }
}

/// The timing rules of one session, fixed when it starts (or re-registered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub warning_before: Duration,
}

impl SessionPolicy {
    /// The configured policy for a user with these roles: the shortest
    /// per-role idle timeout among the roles that have one (the most
    /// restrictive workstation wins), else the default.
    pub fn for_roles(config: &SessionsConfig, roles: &[String]) -> Self {
        let idle_timeout = roles
            .iter()
            .filter_map(|role| config.idle_timeout_by_role.get(role).copied())
            .min()
            .unwrap_or(config.idle_timeout);
        Self {
            idle_timeout,
            max_lifetime: config.max_lifetime,
            warning_before: config.warning_before.min(idle_timeout / 2),
        }
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub state: SessionState,
    pub started_at: Timestamp,
    pub last_activity_at: Timestamp,
    pub idle_timeout_ms: i64,
    pub max_lifetime_ms: i64,
    pub warning_before_ms: i64,
    pub expires_at: Timestamp,
    pub warned_for: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub end_reason: Option<String>,
}

/// When a session with this start and last activity expires: idle timeout
/// after the last activity, but never later than its maximum lifetime.
pub fn expires_at(
    started_at: Timestamp,
    last_activity: Timestamp,
    policy: &SessionPolicy,
) -> Timestamp {
    last_activity
        .plus(policy.idle_timeout)
        .min(started_at.plus(policy.max_lifetime))
}

/// When the scheduler must next look at a session: at its warning time,
/// unless it was already warned for this expiry, then at the expiry.
pub fn next_due_at(
    expires_at: Timestamp,
    warned_for: Option<Timestamp>,
    warning_before: Duration,
) -> Timestamp {
    if warned_for == Some(expires_at) {
        expires_at
    } else {
        Timestamp::from_millis(
            expires_at.as_millis() - i64::try_from(warning_before.as_millis()).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config() -> SessionsConfig {
        SessionsConfig {
            idle_timeout: Duration::from_secs(900),
            warning_before: Duration::from_secs(120),
            max_lifetime: Duration::from_secs(3600),
            activity_coalesce: Duration::from_secs(1),
            idle_timeout_by_role: BTreeMap::from([
                ("ed".to_string(), Duration::from_secs(300)),
                ("reading-room".to_string(), Duration::from_secs(1800)),
            ]),
        }
    }

    #[test]
    fn the_shortest_role_override_wins() {
        let config = config();
        let roles = |r: &[&str]| {
            r.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            SessionPolicy::for_roles(&config, &roles(&["radiologist"])).idle_timeout,
            Duration::from_secs(900)
        );
        assert_eq!(
            SessionPolicy::for_roles(&config, &roles(&["reading-room", "ed"])).idle_timeout,
            Duration::from_secs(300)
        );
        assert_eq!(
            SessionPolicy::for_roles(&config, &roles(&["reading-room"])).idle_timeout,
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn expiry_is_capped_by_the_maximum_lifetime() {
        let policy = SessionPolicy::for_roles(&config(), &[]);
        let start = Timestamp::from_millis(0);
        assert_eq!(
            expires_at(start, Timestamp::from_millis(1_000), &policy),
            Timestamp::from_millis(901_000)
        );
        assert_eq!(
            expires_at(start, Timestamp::from_millis(3_000_000), &policy),
            Timestamp::from_millis(3_600_000)
        );
    }

    #[test]
    fn a_warning_is_due_once_per_expiry() {
        let expiry = Timestamp::from_millis(1_000_000);
        let warning = Duration::from_secs(120);
        assert_eq!(
            next_due_at(expiry, None, warning),
            Timestamp::from_millis(880_000)
        );
        assert_eq!(next_due_at(expiry, Some(expiry), warning), expiry);
        assert_eq!(
            next_due_at(expiry, Some(Timestamp::from_millis(5)), warning),
            Timestamp::from_millis(880_000)
        );
    }
}
