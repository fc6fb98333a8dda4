//! The audit vocabulary: what happened, to what, by whom.
//!
//! Owns: the `Action` names written to `audit_log.action` and the plain
//! `AuditEvent` value that domain code fills in. Rows are written by the
//! store, in the same transaction as the change they record whenever there
//! is one. Never: update or delete a row — the table refuses it too.

use serde_json::Value;

use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::notifications::Notification;

/// Every kind of audit row. The string form is stable: reviewers filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NotificationRaised,
    NotificationDelivered,
    NotificationReplayed,
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
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::NotificationRaised => "notification.raised",
            Action::NotificationDelivered => "notification.delivered",
            Action::NotificationReplayed => "notification.replayed",
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
        }
    }

    pub fn by(mut self, actor: &Identity) -> Self {
        self.actor_id = Some(actor.user_id.clone());
        self.actor_role = actor.primary_role().map(str::to_owned);
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
    pub fn about(mut self, notification: &Notification) -> Self {
        self.notification_id = Some(notification.id.clone());
        self.patient_id = notification.patient_id.clone();
        self.study_id = notification.study_id.clone();
        if let crate::notifications::Recipient::User(user) = &notification.recipient
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
