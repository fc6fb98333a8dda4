//! The hub: how the services reach sockets, whatever the adapter.
//!
//! Owns: [`Hub`] and the [`HubOps`] it delegates to (emit to rooms, deliver
//! socket by socket and say who was reached and who was missed, list,
//! disconnect), and the console feed. Services depend on this file only;
//! the socketioxide implementation is in `realtime::socketio`.
//! Never: depend on socketioxide, or decide anything about what it sends.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::events::{CONSOLE_UPDATE, ConsoleUpdate};
use super::rooms::{CONSOLE_TOPIC, session_room, topic_room};
use crate::clock::Timestamp;

/// What a socket is, as far as readback cares.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    /// Its connection id (`realtime::Connection::id`), never its Engine.IO
    /// session id.
    pub connection_id: String,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
    pub session_id: Option<String>,
    /// Known for sockets connected to this daemon.
    pub connected_at: Option<Timestamp>,
}

/// One socket an event was handed to.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its connection id, as in [`SocketInfo`].
    pub connection_id: String,
    pub user_id: String,
    pub session_id: Option<String>,
}

/// What [`HubOps::deliver`] did, socket by socket.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Sockets the event was queued for.
    pub reached: Vec<Sent>,
    /// Sockets it could not be queued for, with why. A socket whose send
    /// buffer was full has been disconnected, so its client reconnects and
    /// gets the event by replay.
    pub missed: Vec<(Sent, &'static str)>,
}

/// Why an event could not be queued for a socket whose send buffer was full.
pub const SEND_BUFFER_FULL: &str = "send_buffer_full";

/// Emitting and looking up sockets, whatever the adapter.
pub trait HubOps: Send + Sync + 'static {
    /// Emits to every socket in any of `rooms`; failures are logged.
    fn emit<'a>(&'a self, rooms: Vec<String>, event: &'a str, payload: Value) -> BoxFuture<'a, ()>;
    /// Emits to every socket of the namespace.
    fn emit_all<'a>(&'a self, event: &'a str, payload: Value) -> BoxFuture<'a, ()>;
    /// Emits to each socket in `rooms` one by one, except the sockets whose
    /// connection ids are in `skip`, and says which were reached and which
    /// were missed. Never skips a socket in silence: one whose send buffer
    /// is full is disconnected and listed in `missed`.
    fn deliver<'a>(
        &'a self,
        rooms: Vec<String>,
        event: &'static str,
        payload: Value,
        skip: &'a [String],
    ) -> BoxFuture<'a, Delivered>;
    /// Sockets in `room`, or all sockets.
    fn sockets(&self, room: Option<String>) -> BoxFuture<'_, Vec<SocketInfo>>;
    /// Disconnects every socket in `room`; returns how many there were.
    fn disconnect(&self, room: String) -> BoxFuture<'_, usize>;
    /// Disconnects every socket of this daemon (shutdown).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// How many sockets are connected to this daemon.
    fn local_count(&self) -> usize;
    /// How many sockets of this daemon are in `room`.
    fn local_count_in(&self, room: String) -> usize;
}

/// The handle the domain and HTTP layers use to reach sockets.
#[derive(Clone)]
pub struct Hub(Arc<dyn HubOps>);

impl Hub {
    /// Wraps an implementation (socketioxide's, in `realtime::socketio`).
    pub fn from_ops(ops: Arc<dyn HubOps>) -> Self {
        Self(ops)
    }

    /// Disconnects the sockets of one session.
    pub async fn disconnect_session(&self, session_id: &str) -> usize {
        self.0.disconnect(session_room(session_id)).await
    }

    /// Tells the operator console what changed (`raised`, `acknowledged`,
    /// `cancelled`, `escalated`, `connected`, `disconnected`, `session`).
    /// Carries ids only: the console reads details through the API, which
    /// decides what each role may see.
    pub async fn console_update(
        &self,
        kind: &'static str,
        notification_id: Option<&str>,
        user_id: Option<&str>,
    ) {
        let update = ConsoleUpdate {
            kind,
            notification_id,
            user_id,
            timestamp: Timestamp::now(),
        };
        self.send(vec![topic_room(CONSOLE_TOPIC)], CONSOLE_UPDATE, &update)
            .await;
    }
}

impl Hub {
    /// Emits a typed payload (serialized once for every socket).
    pub async fn send<T: serde::Serialize>(
        &self,
        rooms: Vec<String>,
        event: &'static str,
        payload: &T,
    ) {
        let payload = serde_json::to_value(payload).expect("payloads serialize");
        self.0.emit(rooms, event, payload).await;
    }
}

impl std::ops::Deref for Hub {
    type Target = dyn HubOps;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
