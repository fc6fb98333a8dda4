//! Reads of PHI through the API, audited without slowing reads down.
//!
//! Owns: counting reads of notifications (`GET /notifications/{id}`, the
//! list) and exports of the audit log in memory, per reader, client
//! address and what was read (a notification; a list's filters; an
//! export's filters and format), and writing one row per such key and
//! window (`audit.read_window`) with its count: `notification.read` (with
//! the notification's identifiers, so its timeline and a search by patient
//! show who read it) and `audit.exported` (with the rows sent and whether
//! the export was complete). A PACS polling a notification's state costs
//! a hash-map increment per poll and a row per window, and no read waits
//! for the audit chain's head or competes with raises for it.
//! Never: drop a read (a window the database refuses is kept for the next;
//! past [`MAX_KEYS`] keys the window is written early), or store an
//! unbounded list (at most [`MAX_IDS`] notification ids per list key).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::window::{self, Window};
use super::{Action, AuditEvent};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::notifications::{Notification, Recipient};
use crate::store::Store;

/// Keys per window before it is written early.
pub const MAX_KEYS: usize = 1000;
/// Notification ids kept per list key and window (a list page's most).
pub const MAX_IDS: usize = 500;

/// One read, as the edge served it.
pub enum Read<'a> {
    /// One notification (`GET /notifications/{id}`).
    One(&'a Notification),
    /// A list: its filters as given, and what it returned.
    List {
        filters: Value,
        notifications: &'a [Notification],
    },
    /// An audit export (CSV, NDJSON) that ended: how many rows it sent and
    /// whether it sent all it was asked for (the client may hang up).
    Export {
        format: &'static str,
        filters: Value,
        rows: u64,
        complete: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum What {
    One(String),
    /// The filters' JSON text.
    List(String),
    Export {
        format: &'static str,
        filters: String,
        complete: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    actor_id: String,
    actor_role: Option<String>,
    client: Option<IpAddr>,
    what: What,
}

#[derive(Debug)]
struct Tally {
    /// Reads (requests).
    count: u64,
    /// Rows returned or sent, over all of them.
    rows: u64,
    first_at: Timestamp,
    last_at: Timestamp,
    /// One notification's identifiers (columns of its row).
    patient_id: Option<String>,
    study_id: Option<String>,
    recipient_user: Option<String>,
    filters: Value,
    ids: BTreeSet<String>,
    ids_truncated: bool,
}

impl window::Tally<Key> for Tally {
    const WHAT: &'static str = "audited reads";

    fn row(&self, key: &Key) -> AuditEvent {
        row(key, self)
    }

    fn merge(&mut self, older: Tally) {
        self.count += older.count;
        self.rows += older.rows;
        self.first_at = self.first_at.min(older.first_at);
        self.last_at = self.last_at.max(older.last_at);
        self.ids_truncated |= older.ids_truncated;
        for id in older.ids {
            self.add_id(id);
        }
    }
}

impl Tally {
    fn add_id(&mut self, id: String) {
        if self.ids.len() < MAX_IDS || self.ids.contains(&id) {
            self.ids.insert(id);
        } else {
            self.ids_truncated = true;
        }
    }
}

/// The reads of the current window; cheap to clone.
#[derive(Clone, Default)]
pub struct Reads {
    window: Window<Key, Tally>,
}

impl Reads {
    /// Counts one read by `reader`; written at the end of the window.
    pub fn record(&self, reader: &Identity, read: Read<'_>) {
        let now = Timestamp::now();
        let (what, rows, filters) = match &read {
            Read::One(notification) => (What::One(notification.id.clone()), 1, Value::Null),
            Read::List {
                filters,
                notifications,
            } => (
                What::List(filters.to_string()),
                notifications.len() as u64,
                filters.clone(),
            ),
            Read::Export {
                format,
                filters,
                rows,
                complete,
            } => (
                What::Export {
                    format,
                    filters: filters.to_string(),
                    complete: *complete,
                },
                *rows,
                filters.clone(),
            ),
        };
        let key = Key {
            actor_id: reader.user_id.clone(),
            actor_role: reader.primary_role().map(str::to_owned),
            client: reader.client_addr,
            what,
        };
        let full = self.window.count(|pending| {
            let tally = pending.entry(key).or_insert_with(|| {
                let (patient_id, study_id, recipient_user) = match &read {
                    Read::One(n) => (
                        n.patient_id.clone(),
                        n.study_id.clone(),
                        match &n.recipient {
                            Recipient::User(user) => Some(user.clone()),
                            Recipient::Role(_) => None,
                        },
                    ),
                    _ => (None, None, None),
                };
                Tally {
                    count: 0,
                    rows: 0,
                    first_at: now,
                    last_at: now,
                    patient_id,
                    study_id,
                    recipient_user,
                    filters,
                    ids: BTreeSet::new(),
                    ids_truncated: false,
                }
            });
            tally.count += 1;
            tally.rows += rows;
            tally.last_at = now;
            if let Read::List { notifications, .. } = &read {
                for notification in *notifications {
                    tally.add_id(notification.id.clone());
                }
            }
            pending.len() >= MAX_KEYS
        });
        if full {
            self.window.write_early();
        }
    }

    /// Flushes every `window` (or when the window is full) on `tasks`, and
    /// a last time when `stop` fires (after serving has ended).
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

/// The audit row of one key's window.
fn row(key: &Key, tally: &Tally) -> AuditEvent {
    let (action, mut detail) = match &key.what {
        What::One(_) => (Action::NotificationRead, json!({ "via": "get" })),
        What::List(_) => (
            Action::NotificationRead,
            json!({
                "via": "list",
                "filters": tally.filters,
                "rows": tally.rows,
                "notificationIds": tally.ids,
            }),
        ),
        What::Export {
            format, complete, ..
        } => (
            Action::AuditExported,
            json!({
                "format": format,
                "filters": tally.filters,
                "rows": tally.rows,
                "complete": complete,
            }),
        ),
    };
    detail["count"] = json!(tally.count);
    detail["firstAt"] = json!(tally.first_at);
    detail["lastAt"] = json!(tally.last_at);
    if tally.ids_truncated {
        detail["notificationIdsTruncated"] = json!(true);
    }
    let mut event = AuditEvent::new(action, tally.last_at).detail(detail);
    event.actor_id = Some(key.actor_id.clone());
    event.actor_role.clone_from(&key.actor_role);
    event.client_addr = key.client;
    if let What::One(id) = &key.what {
        event.notification_id = Some(id.clone());
        event.patient_id.clone_from(&tally.patient_id);
        event.study_id.clone_from(&tally.study_id);
        event.user_id.clone_from(&tally.recipient_user);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(addr: &str) -> Identity {
        Identity {
            user_id: "audrey".into(),
            roles: vec!["auditor".into()],
            session_id: None,
            email: None,
            name: None,
            client_addr: Some(addr.parse().unwrap()),
        }
    }

    #[test]
    fn reads_are_counted_per_reader_address_and_target() {
        let reads = Reads::default();
        for _ in 0..3 {
            reads.record(
                &reader("192.0.2.1"),
                Read::Export {
                    format: "csv",
                    filters: json!({ "action": "x" }),
                    rows: 10,
                    complete: true,
                },
            );
        }
        reads.record(
            &reader("192.0.2.2"),
            Read::Export {
                format: "csv",
                filters: json!({ "action": "x" }),
                rows: 4,
                complete: false,
            },
        );
        let rows: Vec<Value> = reads.window.count(|pending| {
            assert_eq!(pending.len(), 2);
            pending
                .iter()
                .map(|(k, t)| row(k, t).into_row(1, "").detail)
                .map(|d| serde_json::from_str(&d).unwrap())
                .collect()
        });
        let full = rows.iter().find(|r| r["complete"] == true).unwrap();
        assert_eq!(full["count"], 3);
        assert_eq!(full["rows"], 30);
        assert_eq!(full["clientAddr"], "192.0.2.1");
        let partial = rows.iter().find(|r| r["complete"] == false).unwrap();
        assert_eq!(partial["clientAddr"], "192.0.2.2");
    }

    #[test]
    fn list_ids_are_bounded() {
        let mut tally = Tally {
            count: 0,
            rows: 0,
            first_at: Timestamp::from_millis(0),
            last_at: Timestamp::from_millis(0),
            patient_id: None,
            study_id: None,
            recipient_user: None,
            filters: Value::Null,
            ids: BTreeSet::new(),
            ids_truncated: false,
        };
        for i in 0..(MAX_IDS + 10) {
            tally.add_id(format!("n{i}"));
        }
        tally.add_id("n0".into());
        assert_eq!(tally.ids.len(), MAX_IDS);
        assert!(tally.ids_truncated);
    }
}
