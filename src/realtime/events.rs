//! The Socket.IO events of the contract: their names, in one place, and the
//! payloads readback sends, as types.
//!
//! Owns: every event name readback emits or listens to (docs/socketio.md)
//! and the `Serialize` payloads of the server → client events other than
//! `critical_notification` (which is `notifications::CriticalNotification`).
//! Field names are the contract's (camelCase); a payload type is the only
//! way to build one, so a misspelt field cannot reach a client.
//! Never: depend on another readback module but the clock — services and
//! handlers both build on it.

use serde::Serialize;

use crate::clock::Timestamp;

// Server → client.
pub const CONNECTED: &str = "connected";
pub const CRITICAL_NOTIFICATION: &str = "critical_notification";
pub const NOTIFICATION_ACKNOWLEDGED: &str = "notification_acknowledged";
pub const NOTIFICATION_CANCELLED: &str = "notification_cancelled";
pub const SESSION_TIMEOUT_WARNING: &str = "session_timeout_warning";
pub const SESSION_EXPIRED: &str = "session_expired";
pub const SESSION_EXTENDED: &str = "session_extended";
pub const SYSTEM_ALERT: &str = "system_alert";
pub const ERROR: &str = "error";
pub const USER_ONLINE: &str = "user_online";
pub const USER_OFFLINE: &str = "user_offline";
pub const CONSOLE_UPDATE: &str = "console_update";
pub const TOKEN_EXPIRED: &str = "token_expired";
pub const REPLAY_TRUNCATED: &str = "replay_truncated";

// Client → server.
pub const ACTIVITY: &str = "activity";
pub const ACKNOWLEDGE_NOTIFICATION: &str = "acknowledge_notification";
pub const EXTEND_SESSION: &str = "extend_session";
pub const SUBSCRIBE: &str = "subscribe";
pub const UNSUBSCRIBE: &str = "unsubscribe";
pub const REAUTH: &str = "reauth";

/// Every name above: `POST /api/v1/messages` may not use them.
pub const ALL: [&str; 20] = [
    CONNECTED,
    CRITICAL_NOTIFICATION,
    NOTIFICATION_ACKNOWLEDGED,
    NOTIFICATION_CANCELLED,
    SESSION_TIMEOUT_WARNING,
    SESSION_EXPIRED,
    SESSION_EXTENDED,
    SYSTEM_ALERT,
    ERROR,
    ACTIVITY,
    ACKNOWLEDGE_NOTIFICATION,
    EXTEND_SESSION,
    SUBSCRIBE,
    UNSUBSCRIBE,
    USER_ONLINE,
    USER_OFFLINE,
    CONSOLE_UPDATE,
    TOKEN_EXPIRED,
    REAUTH,
    REPLAY_TRUNCATED,
];

/// `token_expired`: the socket's token has expired; it is disconnected at
/// `disconnectAt` unless it sends `reauth` with a fresh token first.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenExpired {
    pub expired_at: Timestamp,
    pub disconnect_at: Timestamp,
    pub timestamp: Timestamp,
}

/// `replay_truncated`: the connect replayed `sent` open notifications (the
/// ones due first) and `remaining` more are open; the client reads them
/// with `GET /api/v1/me/notifications?cursor={nextCursor}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayTruncated<'a> {
    pub sent: usize,
    pub remaining: u64,
    pub next_cursor: &'a str,
    pub timestamp: Timestamp,
}

/// `notification_acknowledged`: to every socket of the recipient(s), so
/// other tabs can dismiss it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationAcknowledged<'a> {
    pub notification_id: &'a str,
    pub acknowledged_at: Timestamp,
    pub acknowledged_by: &'a str,
}

/// `notification_cancelled`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationCancelled<'a> {
    pub notification_id: &'a str,
    pub cancelled_at: Timestamp,
    pub reason: &'a str,
}

/// `session_timeout_warning`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionTimeoutWarning<'a> {
    pub session_id: &'a str,
    /// Milliseconds until `expires_at`.
    pub time_remaining: i64,
    pub expires_at: Timestamp,
    pub timestamp: Timestamp,
}

/// `session_expired`: `reason` is `idle`, `max_lifetime` or `terminated`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExpired<'a> {
    pub session_id: Option<&'a str>,
    pub reason: &'a str,
    pub timestamp: Timestamp,
}

/// `session_extended`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExtended<'a> {
    pub session_id: &'a str,
    pub extended_at: Timestamp,
    pub expires_at: Timestamp,
}

/// `connected`: the first event a socket receives.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected<'a> {
    /// The socket's connection id (the name the API and the audit log give
    /// it), not socket.io-client's `socket.id`.
    pub socket_id: &'a str,
    pub user_id: &'a str,
    pub session_id: Option<&'a str>,
    pub roles: &'a [String],
    pub timestamp: Timestamp,
}

/// `console_update`: ids only; the console reads details through the API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleUpdate<'a> {
    pub kind: &'a str,
    pub notification_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub timestamp: Timestamp,
}

/// `user_online` / `user_offline`, to admins.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence<'a> {
    pub user_id: &'a str,
    pub roles: &'a [String],
    pub timestamp: Timestamp,
}
