//! Refused logins, aggregated: unauthenticated work stays cheap.
//!
//! Owns: counting refused tokens (HTTP and Socket.IO) per source address,
//! channel and reason in memory, and writing one `auth.refused` audit row
//! per such key and window (`audit.refusal_window`) with its count, first
//! and last time and a truncated sample of the path and user agent. A
//! flood of forged tokens thus costs a hash-map increment per request and
//! one audit transaction per window, instead of a transaction per request
//! competing with raises for the database and the audit chain's head.
//! Never: store attacker-sized text (every stored string is truncated), or
//! grow without bound (past [`MAX_KEYS`] sources, refusals share one key).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::window::{self, Window};
use super::{Action, AuditEvent};
use crate::clock::Timestamp;
use crate::store::Store;

/// Distinct (source, channel, reason) keys kept per window; refusals past
/// it are counted under one key with no source.
pub const MAX_KEYS: usize = 1000;
/// Longest text stored from a refused request (path, user agent, reason).
pub const MAX_TEXT: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: Option<IpAddr>,
    channel: &'static str,
    reason: String,
}

#[derive(Debug)]
struct Tally {
    count: u64,
    first_at: Timestamp,
    last_at: Timestamp,
    path: Option<String>,
    user_agent: Option<String>,
}

impl window::Tally<Key> for Tally {
    const WHAT: &'static str = "refused logins";

    fn row(&self, key: &Key) -> AuditEvent {
        row(key, self)
    }

    fn merge(&mut self, older: Tally) {
        self.count += older.count;
        self.first_at = older.first_at;
    }
}

/// The refusals of the current window; cheap to clone.
#[derive(Clone, Default)]
pub struct Refusals {
    window: Window<Key, Tally>,
}

/// One refused token, as the edge saw it.
pub struct Refusal<'a> {
    pub source: Option<IpAddr>,
    /// `http` or `socket.io`.
    pub channel: &'static str,
    pub reason: &'a str,
    pub path: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// `text` cut to at most [`MAX_TEXT`] characters.
fn bounded(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

impl Refusals {
    /// Counts one refusal; written at the end of the window.
    pub fn record(&self, refusal: &Refusal<'_>) {
        let now = Timestamp::now();
        self.window.count(|pending| {
            let mut key = Key {
                source: refusal.source,
                channel: refusal.channel,
                reason: bounded(refusal.reason),
            };
            if pending.len() >= MAX_KEYS && !pending.contains_key(&key) {
                key = Key {
                    source: None,
                    channel: refusal.channel,
                    reason: "many sources".into(),
                };
            }
            let tally = pending.entry(key).or_insert_with(|| Tally {
                count: 0,
                first_at: now,
                last_at: now,
                path: refusal.path.map(bounded),
                user_agent: refusal.user_agent.map(bounded),
            });
            tally.count += 1;
            tally.last_at = now;
        });
    }

    /// Flushes every `window` on `tasks`, and a last time when `stop`
    /// fires (after serving has ended, so no refusal is left unwritten).
    pub fn spawn_flusher(
        &self,
        tasks: &TaskTracker,
        store: Store,
        window: Duration,
        stop: CancellationToken,
    ) {
        self.window.spawn_flusher(tasks, store, window, stop);
    }
}

/// The `auth.refused` row of one key's window.
fn row(key: &Key, tally: &Tally) -> AuditEvent {
    AuditEvent::new(Action::AuthRefused, tally.last_at)
        .outcome("refused")
        .detail(json!({
            "channel": key.channel,
            "reason": key.reason,
            "source": key.source.map(|ip| ip.to_string()),
            "count": tally.count,
            "firstAt": tally.first_at,
            "lastAt": tally.last_at,
            "path": tally.path,
            "userAgent": tally.user_agent,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_key_and_bounded() {
        let refusals = Refusals::default();
        let long = "x".repeat(100_000);
        for _ in 0..500 {
            refusals.record(&Refusal {
                source: Some("10.0.0.1".parse().unwrap()),
                channel: "http",
                reason: "InvalidSignature",
                path: Some(&long),
                user_agent: Some(&long),
            });
        }
        for i in 0..(MAX_KEYS as u32 + 50) {
            refusals.record(&Refusal {
                source: Some(IpAddr::from(i.to_be_bytes())),
                channel: "socket.io",
                reason: "missing",
                path: None,
                user_agent: None,
            });
        }
        refusals.window.count(|pending| {
            assert_eq!(pending.len(), MAX_KEYS + 1, "one overflow key");
            let flood = pending
                .iter()
                .find(|(k, _)| k.channel == "http")
                .map(|(_, t)| t)
                .unwrap();
            assert_eq!(flood.count, 500);
            assert_eq!(flood.path.as_ref().unwrap().len(), MAX_TEXT);
            assert_eq!(flood.user_agent.as_ref().unwrap().len(), MAX_TEXT);
            let total: u64 = pending.values().map(|t| t.count).sum();
            assert_eq!(total, 500 + MAX_KEYS as u64 + 50);
        });
    }
}
