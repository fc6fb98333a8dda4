//! Critical notifications: what they are and the rules they follow.
//!
//! Owns: the domain types (`Severity`, `Recipient`, `State`,
//! `Notification`), parsing a raise request into a value that cannot be
//! invalid, who may acknowledge, and the wire form sent to viewers. The
//! orchestration that stores, delivers and audits lives in [`service`].
//! Never: touch the network or the database from the plain functions here,
//! so every rule is tested without either.

pub mod service;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::realtime::rooms::{role_room, user_room};
pub use crate::severity::Severity;
use crate::validation::{
    FieldError, MAX_ACK_WITHIN_MS, MAX_ID_LEN, MAX_MESSAGE_LEN, MAX_TITLE_LEN, check_identifier,
    check_text, deserialize_json,
};

/// Lifecycle of a notification. Only `pending` and `escalated` are open:
/// they are replayed, may be acknowledged and may be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Acknowledged,
    Escalated,
    Cancelled,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Pending,
        State::Acknowledged,
        State::Escalated,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Acknowledged => "acknowledged",
            State::Escalated => "escalated",
            State::Cancelled => "cancelled",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Escalated)
    }
}

impl FromStr for State {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        State::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
    }
}

/// Who must acknowledge: one user, or any holder of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    User(String),
    Role(String),
}

impl Recipient {
    /// The Socket.IO room whose sockets receive this recipient's events.
    pub fn room(&self) -> String {
        match self {
            Recipient::User(user) => user_room(user),
            Recipient::Role(role) => role_room(role),
        }
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Recipient::User(user) => map.serialize_entry("userId", user)?,
            Recipient::Role(role) => map.serialize_entry("role", role)?,
        }
        map.end()
    }
}

/// A stored notification with its current state.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub severity: Severity,
    pub title: String,
    pub message: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub accession_number: Option<String>,
    pub recipient: Recipient,
    pub created_by: String,
    pub created_at: Timestamp,
    pub ack_deadline: Timestamp,
    pub state: State,
    pub acknowledged_at: Option<Timestamp>,
    pub acknowledged_by: Option<String>,
    pub cancelled_at: Option<Timestamp>,
    pub cancelled_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub request_hash: String,
}

/// The `CriticalNotification` payload of the contract.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CriticalNotification<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub severity: Severity,
    pub title: &'a str,
    pub message: Option<&'a str>,
    pub patient_id: Option<&'a str>,
    pub study_id: Option<&'a str>,
    pub accession_number: Option<&'a str>,
    pub created_at: Timestamp,
    pub ack_deadline: Timestamp,
    pub replayed: bool,
    /// readback's own handle of the notification (see [`Reference`]).
    pub reference: Reference,
}

/// readback's own name for a notification, `RB-<number>`: the database
/// assigns the number, so it carries nothing a caller chose. A PACS's `id`
/// may embed an accession number or MRN; this is what goes where PHI must
/// not (escalation email, pagers) and what `GET /notifications/{id}` also
/// resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference(pub i64);

impl Reference {
    const PREFIX: &'static str = "RB-";

    /// `RB-42` → 42; anything else (a caller's id) → `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(Self::PREFIX)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Self)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0)
    }
}

impl Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Notification {
    pub fn to_wire(&self, replayed: bool) -> CriticalNotification<'_> {
        CriticalNotification {
            id: &self.id,
            kind: &self.kind,
            severity: self.severity,
            title: &self.title,
            message: self.message.as_deref(),
            patient_id: self.patient_id.as_deref(),
            study_id: self.study_id.as_deref(),
            accession_number: self.accession_number.as_deref(),
            created_at: self.created_at,
            ack_deadline: self.ack_deadline,
            replayed,
            reference: self.reference(),
        }
    }

    pub fn reference(&self) -> Reference {
        Reference(self.seq)
    }

    /// Only the recipient, or for a role notification a holder of the role,
    /// may acknowledge.
    pub fn may_be_acknowledged_by(&self, caller: &Identity) -> bool {
        match &self.recipient {
            Recipient::User(user) => *user == caller.user_id,
            Recipient::Role(role) => caller.has_role(role),
        }
    }
}

/// A validated raise request, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub id: String,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request body: a retry with the same id or key
    /// must carry the same body.
    pub request_hash: String,
    pub kind: String,
    pub severity: Severity,
    pub title: String,
    pub message: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub accession_number: Option<String>,
    pub recipient: Recipient,
    pub created_by: String,
    pub created_at: Timestamp,
    pub ack_deadline: Timestamp,
}

/// The body of `POST /api/v1/notifications`, as the client sent it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RaiseRequest {
    pub id: Option<String>,
    pub recipient: RecipientRequest,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub severity: String,
    pub title: String,
    pub message: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub accession_number: Option<String>,
    pub ack_within: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipientRequest {
    pub user_id: Option<String>,
    pub role: Option<String>,
}

/// Everything a raise needs besides the body.
pub struct RaiseContext<'a> {
    pub caller: &'a Identity,
    pub idempotency_key: Option<&'a str>,
    pub now: Timestamp,
    /// The configured window for each severity.
    pub ack_within: &'a dyn Fn(Severity) -> Duration,
}

/// Parses a raise body (already JSON) into a notification that can be stored.
pub fn parse_raise(
    body: &Value,
    context: &RaiseContext<'_>,
) -> Result<NewNotification, FieldError> {
    let request: RaiseRequest = deserialize_json(body)?;
    let id = match request.id {
        Some(id) => {
            check_identifier("id", &id)?;
            id
        }
        None => format!("ntf_{}", ulid::Ulid::new()),
    };
    let idempotency_key = match context.idempotency_key {
        Some(key) => {
            if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(FieldError::new(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                ));
            }
            Some(key.to_string())
        }
        None => None,
    };
    let recipient = match (request.recipient.user_id, request.recipient.role) {
        (Some(user), None) => {
            check_text("recipient.userId", &user, 256)?;
            Recipient::User(user)
        }
        (None, Some(role)) => {
            check_text("recipient.role", &role, 256)?;
            Recipient::Role(role)
        }
        _ => {
            return Err(FieldError::new(
                "recipient",
                "must have exactly one of userId or role",
            ));
        }
    };
    let kind = request.kind.unwrap_or_else(|| "critical_finding".into());
    check_identifier("type", &kind)?;
    let severity: Severity = request
        .severity
        .parse()
        .map_err(|()| FieldError::new("severity", "must be one of critical, urgent, actionable"))?;
    check_text("title", &request.title, MAX_TITLE_LEN)?;
    let optional = |field: &str, value: &Option<String>, max: usize| match value {
        Some(v) => check_text(field, v, max),
        None => Ok(()),
    };
    optional("message", &request.message, MAX_MESSAGE_LEN)?;
    optional("patientId", &request.patient_id, MAX_ID_LEN)?;
    optional("studyId", &request.study_id, MAX_ID_LEN)?;
    optional("accessionNumber", &request.accession_number, MAX_ID_LEN)?;
    let ack_within = match request.ack_within {
        Some(0) => {
            return Err(FieldError::new(
                "ackWithin",
                "must be at least 1 millisecond",
            ));
        }
        Some(ms) if ms > MAX_ACK_WITHIN_MS => {
            return Err(FieldError::new("ackWithin", "must be at most 90 days"));
        }
        Some(ms) => Duration::from_millis(ms),
        None => (context.ack_within)(severity),
    };
    Ok(NewNotification {
        id,
        idempotency_key,
        request_hash: request_hash(body),
        kind,
        severity,
        title: request.title,
        message: request.message,
        patient_id: request.patient_id,
        study_id: request.study_id,
        accession_number: request.accession_number,
        recipient,
        created_by: context.caller.user_id.clone(),
        created_at: context.now,
        ack_deadline: context.now.plus(ack_within),
    })
}

/// SHA-256 of the body's canonical JSON (object keys sorted), hex.
pub fn request_hash(body: &Value) -> String {
    // serde_json's Map is ordered by key, so `to_string` is canonical.
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

/// What a finding says, as raised: the part of a notification that never
/// changes afterwards (not its state or acknowledgement).
pub struct FindingContent<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub severity: Severity,
    pub title: &'a str,
    pub message: Option<&'a str>,
    pub patient_id: Option<&'a str>,
    pub study_id: Option<&'a str>,
    pub accession_number: Option<&'a str>,
    pub recipient: &'a Recipient,
    pub created_by: &'a str,
    pub created_at: Timestamp,
    pub ack_deadline: Timestamp,
}

/// `content()` for the stored and the new notification, which name these
/// fields alike.
macro_rules! finding_content {
    ($($kind:ty),*) => {$(
        impl $kind {
            pub fn content(&self) -> FindingContent<'_> {
                FindingContent {
                    id: &self.id,
                    kind: &self.kind,
                    severity: self.severity,
                    title: &self.title,
                    message: self.message.as_deref(),
                    patient_id: self.patient_id.as_deref(),
                    study_id: self.study_id.as_deref(),
                    accession_number: self.accession_number.as_deref(),
                    recipient: &self.recipient,
                    created_by: &self.created_by,
                    created_at: self.created_at,
                    ack_deadline: self.ack_deadline,
                }
            }
        }
    )*};
}
finding_content!(Notification, NewNotification);

/// SHA-256 (hex) of what a finding said when it was raised: every field a
/// reviewer relies on, none that changes later (state, acknowledgement).
/// The `notification.raised` audit row carries it, so the hash chain covers
/// the finding's content although the content lives in `notifications`.
/// The input is a JSON array in a fixed order (absent fields are `null`,
/// times are epoch milliseconds): unambiguous, and documented in
/// docs/audit.md so a reviewer can recompute it without readback.
pub fn content_digest(notification: &Notification) -> String {
    finding_digest(&notification.content())
}

/// [`content_digest`] of any view of a finding.
pub fn finding_digest(finding: &FindingContent<'_>) -> String {
    let (user, role) = match finding.recipient {
        Recipient::User(user) => (Some(user), None),
        Recipient::Role(role) => (None, Some(role)),
    };
    let canonical = serde_json::json!([
        "readback.finding/1",
        finding.id,
        finding.kind,
        finding.severity.as_str(),
        finding.title,
        finding.message,
        finding.patient_id,
        finding.study_id,
        finding.accession_number,
        user,
        role,
        finding.created_by,
        finding.created_at.as_millis(),
        finding.ack_deadline.as_millis(),
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Identity {
        Identity {
            user_id: "pacs".into(),
            roles: vec!["service".into()],
            session_id: None,
            email: None,
            name: None,
            client_addr: None,
        }
    }

    fn parse(body: Value) -> Result<NewNotification, FieldError> {
        let caller = caller();
        let windows = |s: Severity| match s {
            Severity::Critical => Duration::from_secs(600),
            _ => Duration::from_secs(7200),
        };
        parse_raise(
            &body,
            &RaiseContext {
                caller: &caller,
                idempotency_key: None,
                now: Timestamp::from_millis(1_000_000),
                ack_within: &windows,
            },
        )
    }

    fn valid() -> Value {
        json!({
            "recipient": {"userId": "user-123"},
            "severity": "critical",
            "title": "Critical Finding Detected",
            "patientId": "patient-789",
        })
    }

    #[test]
    fn a_valid_body_gets_an_id_and_the_severity_deadline() {
        let n = parse(valid()).unwrap();
        assert!(n.id.starts_with("ntf_"));
        assert_eq!(n.kind, "critical_finding");
        assert_eq!(n.recipient, Recipient::User("user-123".into()));
        assert_eq!(n.ack_deadline, Timestamp::from_millis(1_000_000 + 600_000));
        let mut body = valid();
        body["ackWithin"] = json!(5000);
        body["id"] = json!("caller-1");
        let n = parse(body).unwrap();
        assert_eq!(n.id, "caller-1");
        assert_eq!(n.ack_deadline, Timestamp::from_millis(1_005_000));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (json!({"severity": "critical", "title": "t"}), "recipient"),
            (
                json!({"recipient": {"userId": 5}, "severity": "critical", "title": "t"}),
                "recipient.userId",
            ),
            (
                json!({"recipient": {"userId": "u", "role": "r"}, "severity": "critical", "title": "t"}),
                "recipient",
            ),
            (
                json!({"recipient": {"userId": "u"}, "severity": "sort-of", "title": "t"}),
                "severity",
            ),
            (
                json!({"recipient": {"userId": "u"}, "severity": "critical", "title": ""}),
                "title",
            ),
            (
                json!({"recipient": {"userId": "u"}, "severity": "critical", "title": "t", "ackWithin": -1}),
                "ackWithin",
            ),
            (
                json!({"recipient": {"userId": "u"}, "severity": "critical", "title": "t", "id": "x".repeat(100_000)}),
                "id",
            ),
            (
                json!({"recipient": {"userId": "u"}, "severity": "critical", "title": "t", "colour": "red"}),
                "colour",
            ),
            (json!([1, 2]), "body"),
        ];
        for (body, field) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    fn stored() -> Notification {
        Notification {
            seq: 1,
            id: "n".into(),
            kind: "critical_finding".into(),
            severity: Severity::Critical,
            title: "t".into(),
            message: None,
            patient_id: None,
            study_id: None,
            accession_number: None,
            recipient: Recipient::User("alice".into()),
            created_by: "pacs".into(),
            created_at: Timestamp::from_millis(0),
            ack_deadline: Timestamp::from_millis(1),
            state: State::Pending,
            acknowledged_at: None,
            acknowledged_by: None,
            cancelled_at: None,
            cancelled_by: None,
            cancel_reason: None,
            request_hash: String::new(),
        }
    }

    #[test]
    fn only_the_recipient_or_a_role_holder_may_acknowledge() {
        let mut n = stored();
        let mut bob = caller();
        bob.user_id = "bob".into();
        bob.roles = vec!["radiologist".into()];
        assert!(!n.may_be_acknowledged_by(&bob));
        n.recipient = Recipient::Role("radiologist".into());
        assert!(n.may_be_acknowledged_by(&bob));
        n.recipient = Recipient::Role("neuro".into());
        assert!(!n.may_be_acknowledged_by(&bob));
    }

    #[test]
    fn the_request_hash_ignores_key_order() {
        let a = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let b: Value = serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
    }

    #[test]
    fn the_content_digest_covers_the_content_and_nothing_that_changes_later() {
        let original = content_digest(&stored());
        assert_eq!(original.len(), 64);
        let changes: [fn(&mut Notification); 9] = [
            |n| n.title = "t2".into(),
            |n| n.message = Some(String::new()),
            |n| n.severity = Severity::Urgent,
            |n| n.recipient = Recipient::Role("alice".into()),
            |n| n.patient_id = Some("p".into()),
            |n| n.study_id = Some("s".into()),
            |n| n.accession_number = Some("a".into()),
            |n| n.ack_deadline = Timestamp::from_millis(2),
            |n| n.created_by = "mallory".into(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut n = stored();
            change(&mut n);
            assert_ne!(content_digest(&n), original, "change {i}");
        }
        let mut acknowledged = stored();
        acknowledged.state = State::Acknowledged;
        acknowledged.acknowledged_by = Some("alice".into());
        assert_eq!(content_digest(&acknowledged), original);
    }
}
