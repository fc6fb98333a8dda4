//! The audit log: what happened, to what, by whom — tamper-evident.
//!
//! Owns: the `Action` names written to `audit_log.action`, the plain
//! `AuditEvent` value that domain code fills in, the hash chain (each row's
//! hash covers its content and the previous row's hash) and its check, the
//! DICOM event codes, in [`review`] what reviewers do with the log (query,
//! export, verify, report), and in [`checkpoint`] the signed statements
//! that tie the chain to a key outside the database. Rows are written by
//! the store, in the same transaction as the change they record.
//! Never: update, delete or overwrite a row, or move the chain head other
//! than forward onto the last row — the database refuses all of these too,
//! the chain shows it if someone with database access does, and a signed
//! checkpoint shows it even when the whole chain was recomputed.

pub mod checkpoint;
pub mod reads;
pub mod refusals;
pub mod review;
pub mod window;

use serde_json::Value;

use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::notifications::{FindingContent, Notification, Recipient};

/// Every kind of audit row. The string form is stable: reviewers filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NotificationRaised,
    NotificationDelivered,
    NotificationReplayed,
    NotificationUndelivered,
    NotificationAcknowledged,
    NotificationCancelled,
    AuthRefused,
    AccessDenied,
    AdminBroadcast,
    AdminDisconnect,
    SessionStarted,
    SessionRegistered,
    SessionWarned,
    SessionExtended,
    SessionExpired,
    SessionTerminated,
    NotificationEscalated,
    EmailSent,
    EmailFailed,
    EmailSkipped,
    EmailRetried,
    AuditQueried,
    EscalationRecipientOffline,
    ConnectionReplaced,
    NotificationRead,
    AuditExported,
    ReplaySent,
    JobRan,
}

impl Action {
    pub const ALL: [Action; 28] = [
        Action::NotificationRaised,
        Action::NotificationDelivered,
        Action::NotificationReplayed,
        Action::NotificationUndelivered,
        Action::NotificationAcknowledged,
        Action::NotificationCancelled,
        Action::AuthRefused,
        Action::AccessDenied,
        Action::AdminBroadcast,
        Action::AdminDisconnect,
        Action::SessionStarted,
        Action::SessionRegistered,
        Action::SessionWarned,
        Action::SessionExtended,
        Action::SessionExpired,
        Action::SessionTerminated,
        Action::NotificationEscalated,
        Action::EmailSent,
        Action::EmailFailed,
        Action::EmailSkipped,
        Action::EmailRetried,
        Action::AuditQueried,
        Action::EscalationRecipientOffline,
        Action::ConnectionReplaced,
        Action::NotificationRead,
        Action::AuditExported,
        Action::ReplaySent,
        Action::JobRan,
    ];

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::NotificationRaised => "notification.raised",
            Action::NotificationDelivered => "notification.delivered",
            Action::NotificationReplayed => "notification.replayed",
            Action::NotificationUndelivered => "notification.undelivered",
            Action::NotificationAcknowledged => "notification.acknowledged",
            Action::NotificationCancelled => "notification.cancelled",
            Action::AuthRefused => "auth.refused",
            Action::AccessDenied => "access.denied",
            Action::AdminBroadcast => "admin.broadcast",
            Action::AdminDisconnect => "admin.disconnect",
            Action::SessionStarted => "session.started",
            Action::SessionRegistered => "session.registered",
            Action::SessionWarned => "session.warned",
            Action::SessionExtended => "session.extended",
            Action::SessionExpired => "session.expired",
            Action::SessionTerminated => "session.terminated",
            Action::NotificationEscalated => "notification.escalated",
            Action::EmailSent => "email.sent",
            Action::EmailFailed => "email.failed",
            Action::EmailSkipped => "email.skipped",
            Action::EmailRetried => "email.retried",
            Action::AuditQueried => "audit.queried",
            Action::EscalationRecipientOffline => "escalation.recipient_offline",
            Action::ConnectionReplaced => "connection.replaced",
            Action::NotificationRead => "notification.read",
            Action::AuditExported => "audit.exported",
            Action::ReplaySent => "replay.sent",
            Action::JobRan => "job.ran",
        }
    }
}

/// One audit row before it is stored (`seq` is assigned by the database).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: Timestamp,
    pub action: Action,
    pub actor_id: Option<String>,
    pub actor_role: Option<String>,
    pub notification_id: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    /// `ok`, `refused`, `duplicate`, ...
    pub outcome: &'static str,
    pub detail: Value,
    /// Where the actor was; stored in the detail as `clientAddr`.
    pub client_addr: Option<std::net::IpAddr>,
}

impl AuditEvent {
    pub fn new(action: Action, at: Timestamp) -> Self {
        Self {
            at,
            action,
            actor_id: None,
            actor_role: None,
            notification_id: None,
            session_id: None,
            user_id: None,
            patient_id: None,
            study_id: None,
            outcome: "ok",
            detail: Value::Object(Default::default()),
            client_addr: None,
        }
    }

    /// The actor, and where it was (its client address, when the edge
    /// resolved one).
    pub fn by(mut self, actor: &Identity) -> Self {
        self.actor_id = Some(actor.user_id.clone());
        self.actor_role = actor.primary_role().map(str::to_owned);
        self.client_addr = actor.client_addr;
        self
    }

    /// The system itself (scheduler, delivery) acting.
    pub fn by_system(mut self) -> Self {
        self.actor_id = Some("readbackd".into());
        self.actor_role = Some("system".into());
        self
    }

    /// Copies the notification's identifiers, so a reviewer can find the row
    /// by notification, patient or study.
    pub fn about(self, notification: &Notification) -> Self {
        self.about_finding(&notification.content())
    }

    /// [`Self::about`] for any view of a finding (e.g. one not stored yet).
    pub fn about_finding(mut self, finding: &FindingContent<'_>) -> Self {
        self.notification_id = Some(finding.id.to_owned());
        self.patient_id = finding.patient_id.map(str::to_owned);
        self.study_id = finding.study_id.map(str::to_owned);
        if let Recipient::User(user) = finding.recipient
            && self.user_id.is_none()
        {
            self.user_id = Some(user.clone());
        }
        self
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn session(mut self, session_id: Option<&str>) -> Self {
        self.session_id = session_id.map(str::to_owned);
        self
    }

    pub fn outcome(mut self, outcome: &'static str) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The hash before the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A stored audit row, as reviewers see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    pub seq: i64,
    pub at: Timestamp,
    pub action: String,
    pub actor_id: Option<String>,
    pub actor_role: Option<String>,
    pub notification_id: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub outcome: String,
    /// The JSON text exactly as stored (the hash covers these bytes).
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The bytes a row's hash covers: every column but the hashes, as a JSON
/// array (unambiguous: strings are quoted and escaped, nulls are `null`).
pub fn canonical(row: &AuditRow) -> String {
    serde_json::json!([
        row.seq,
        row.at.as_millis(),
        row.action,
        row.actor_id,
        row.actor_role,
        row.notification_id,
        row.session_id,
        row.user_id,
        row.patient_id,
        row.study_id,
        row.outcome,
        row.detail,
    ])
    .to_string()
}

/// SHA-256 over the previous row's hash and this row's canonical content.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

impl AuditEvent {
    /// The row this event becomes at chain position `seq` after `prev_hash`.
    pub fn into_row(mut self, seq: i64, prev_hash: &str) -> AuditRow {
        // In the detail rather than a column of its own: covered by the
        // hash like the rest, with no migration of the chain's format.
        if let (Some(addr), Value::Object(detail)) = (self.client_addr, &mut self.detail) {
            detail.insert("clientAddr".into(), Value::String(addr.to_string()));
        }
        let mut row = AuditRow {
            seq,
            at: self.at,
            action: self.action.as_str().to_string(),
            actor_id: self.actor_id,
            actor_role: self.actor_role,
            notification_id: self.notification_id,
            session_id: self.session_id,
            user_id: self.user_id,
            patient_id: self.patient_id,
            study_id: self.study_id,
            outcome: self.outcome.to_string(),
            detail: self.detail.to_string(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        row.hash = chain_hash(prev_hash, &canonical(&row));
        row
    }
}

/// What `audit verify` found wrong, at the first bad row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("row {seq}: its content does not match its hash (changed after it was written)")]
    Changed { seq: i64 },
    #[error(
        "row {seq}: does not follow row {previous} (rows {previous}..{seq} deleted, or inserted out of order)"
    )]
    Gap { previous: i64, seq: i64 },
    #[error(
        "row {seq}: its previous-hash does not match row {previous} (rows swapped, replaced or inserted)"
    )]
    Broken { previous: i64, seq: i64 },
    #[error("the log ends at row {last} but the chain head says {head} (rows at the end deleted)")]
    Truncated { last: i64, head: i64 },
    #[error(
        "notification {notification_id}: its stored content no longer matches the contentDigest in row {seq} \
         (title, message, severity, recipient, identifiers or deadline changed after it was raised)"
    )]
    ContentChanged { seq: i64, notification_id: String },
    #[error(
        "notification {notification_id}, raised in row {seq}, is missing from the notifications table"
    )]
    ContentMissing { seq: i64, notification_id: String },
    #[error(
        "row {seq} no longer has the hash signed in checkpoint {checkpoint} (the log was rewritten after that checkpoint)"
    )]
    CheckpointMismatch { seq: i64, checkpoint: String },
    #[error(
        "the log ends at row {head} but checkpoint {checkpoint} vouches for row {seq} (rows removed, or the log replaced)"
    )]
    CheckpointBeyondHead {
        seq: i64,
        head: i64,
        checkpoint: String,
    },
}

/// Walks the chain row by row, in `seq` order, in constant memory.
pub struct ChainCheck {
    previous_seq: i64,
    previous_hash: String,
    pub rows: u64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            previous_seq: 0,
            previous_hash: GENESIS_HASH.to_string(),
            rows: 0,
        }
    }
}

impl ChainCheck {
    pub fn check(&mut self, row: &AuditRow) -> Result<(), Tamper> {
        if row.seq != self.previous_seq + 1 {
            return Err(Tamper::Gap {
                previous: self.previous_seq,
                seq: row.seq,
            });
        }
        if row.prev_hash != self.previous_hash {
            return Err(Tamper::Broken {
                previous: self.previous_seq,
                seq: row.seq,
            });
        }
        if chain_hash(&row.prev_hash, &canonical(row)) != row.hash {
            return Err(Tamper::Changed { seq: row.seq });
        }
        self.previous_seq = row.seq;
        self.previous_hash.clone_from(&row.hash);
        self.rows += 1;
        Ok(())
    }

    /// After the last row: the head must point at it.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<(), Tamper> {
        if head_seq != self.previous_seq || head_hash != self.previous_hash {
            return Err(Tamper::Truncated {
                last: self.previous_seq,
                head: head_seq,
            });
        }
        Ok(())
    }
}

/// DICOM audit event codes (DCM) for the actions that map to one, so an
/// ATNA / FHIR AuditEvent export is a lookup: (EventID, EventTypeCode).
pub fn dicom_event(action: &str) -> Option<(&'static str, Option<&'static str>)> {
    match action {
        // 110114 User Authenticated; 110122 Login, 110123 Logout.
        "session.started" | "auth.refused" => Some(("110114", Some("110122"))),
        "session.expired" | "session.terminated" => Some(("110114", Some("110123"))),
        // 110100 Application Activity.
        "admin.broadcast" | "admin.disconnect" => Some(("110100", None)),
        // 110112 Query.
        "audit.queried" => Some(("110112", None)),
        // 110110 Patient Record (read); 110106 Export.
        "notification.read" => Some(("110110", None)),
        "audit.exported" => Some(("110106", None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let row = AuditEvent::new(Action::NotificationRaised, Timestamp::from_millis(seq))
                    .user(format!("u{seq}"))
                    .into_row(seq, &prev);
                prev = row.hash.clone();
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRow]) -> Result<(), Tamper> {
        let mut check = ChainCheck::default();
        for row in rows {
            check.check(row)?;
        }
        let last = rows.last().unwrap();
        check
            .finish(rows.len() as i64, &last.hash)
            .or_else(|e| match e {
                // The head in these tests is the untouched chain's.
                Tamper::Truncated { .. } => Ok(()),
                other => Err(other),
            })
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(verify(&rows(10)), Ok(()));
    }

    #[test]
    fn changes_deletions_and_swaps_name_the_row() {
        let mut changed = rows(10);
        changed[4].user_id = Some("mallory".into());
        assert_eq!(verify(&changed), Err(Tamper::Changed { seq: 5 }));

        let mut deleted = rows(10);
        deleted.remove(6);
        assert_eq!(
            verify(&deleted),
            Err(Tamper::Gap {
                previous: 6,
                seq: 8
            })
        );

        let mut swapped = rows(10);
        let (a, b) = (swapped[2].seq, swapped[3].seq);
        swapped.swap(2, 3);
        swapped[2].seq = a;
        swapped[3].seq = b;
        assert_eq!(
            verify(&swapped),
            Err(Tamper::Broken {
                previous: 2,
                seq: 3
            })
        );

        let all = rows(10);
        let mut check = ChainCheck::default();
        for row in &all[..8] {
            check.check(row).unwrap();
        }
        assert_eq!(
            check.finish(10, &all[9].hash),
            Err(Tamper::Truncated { last: 8, head: 10 })
        );
    }
}
