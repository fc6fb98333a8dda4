//! Socket.IO: viewers' connections, rooms and events.
//!
//! Owns: the namespace handlers (authentication on connect, rooms
//! `user:`/`role:`/`session:`, replay, client events) and [`Hub`], the
//! adapter-independent way the rest of readback emits to rooms and asks who
//! is connected. Handlers are generic over socketioxide's `Adapter`, so a
//! cluster adapter can replace the in-process one without touching them.
//! Never: decide whether a notification may be acknowledged or store
//! anything itself — it calls the domain functions for that.

mod handlers;
pub mod messages;
pub mod topics;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::socket::RemoteActionError;
use socketioxide::{SendError, SocketError, SocketIo};

use crate::clock::Timestamp;
use crate::notifications::session_room;

pub use handlers::attach;

/// What a socket is, as far as readback cares.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    pub socket_id: String,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
    pub session_id: Option<String>,
    /// Known for sockets connected to this daemon.
    pub connected_at: Option<Timestamp>,
}

/// One socket an event was handed to.
#[derive(Debug, Clone)]
pub struct Sent {
    pub socket_id: String,
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

/// Per-connection data kept in the socket's extensions.
#[derive(Debug)]
pub struct Connection {
    pub identity: crate::auth::Identity,
    pub connected_at: Timestamp,
}

/// Emitting and looking up sockets, whatever the adapter.
pub trait HubOps: Send + Sync + 'static {
    /// Emits to every socket in any of `rooms`; failures are logged.
    fn emit<'a>(&'a self, rooms: Vec<String>, event: &'a str, payload: Value) -> BoxFuture<'a, ()>;
    /// Emits to every socket of the namespace.
    fn emit_all<'a>(&'a self, event: &'a str, payload: Value) -> BoxFuture<'a, ()>;
    /// Emits to each socket in `rooms` one by one, except the sockets in
    /// `skip`, and says which were reached and which were missed. Never
    /// skips a socket in silence: one whose send buffer is full is
    /// disconnected and listed in `missed`.
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
}

/// The handle the domain and HTTP layers use to reach sockets.
#[derive(Clone)]
pub struct Hub(Arc<dyn HubOps>);

impl Hub {
    pub fn new<A: Adapter>(io: SocketIo<A>) -> Self {
        Self(Arc::new(io))
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
        let payload = serde_json::json!({
            "kind": kind,
            "notificationId": notification_id,
            "userId": user_id,
            "timestamp": Timestamp::now(),
        });
        self.0
            .emit(
                vec![topics::topic_room(topics::CONSOLE_TOPIC)],
                "console_update",
                payload,
            )
            .await;
    }
}

impl std::ops::Deref for Hub {
    type Target = dyn HubOps;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Reads user, roles and session from a socket's rooms: the only thing a
/// remote node knows about a socket.
fn info_from_rooms(socket_id: String, rooms: &[impl AsRef<str>]) -> SocketInfo {
    let mut info = SocketInfo {
        socket_id,
        user_id: None,
        roles: Vec::new(),
        session_id: None,
        connected_at: None,
    };
    for room in rooms {
        let room = room.as_ref();
        if let Some(user) = room.strip_prefix("user:") {
            info.user_id = Some(user.to_string());
        } else if let Some(role) = room.strip_prefix("role:") {
            info.roles.push(role.to_string());
        } else if let Some(session) = room.strip_prefix("session:") {
            info.session_id = Some(session.to_string());
        }
    }
    info.roles.sort();
    info
}

impl<A: Adapter> HubOps for SocketIo<A> {
    fn emit<'a>(&'a self, rooms: Vec<String>, event: &'a str, payload: Value) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.to(rooms.clone()).emit(event, &payload).await {
                // The cluster link is down: this daemon's sockets still get it.
                tracing::warn!(event, error = %e, "cluster emit failed; emitting locally");
                let _ = self.local().to(rooms).emit(event, &payload).await;
            }
        })
    }

    fn emit_all<'a>(&'a self, event: &'a str, payload: Value) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.emit(event, &payload).await {
                tracing::warn!(event, error = %e, "cluster broadcast failed; emitting locally");
                let _ = self.local().emit(event, &payload).await;
            }
        })
    }

    fn deliver<'a>(
        &'a self,
        rooms: Vec<String>,
        event: &'static str,
        payload: Value,
        skip: &'a [String],
    ) -> BoxFuture<'a, Delivered> {
        Box::pin(async move {
            let mut delivered = Delivered::default();
            let sockets = match self.to(rooms.clone()).fetch_sockets().await {
                Ok(sockets) => sockets,
                Err(e) => {
                    // The cluster link is down: deliver to this daemon's
                    // sockets; the others get it by replay on reconnect.
                    tracing::warn!(event, error = %e, "could not list cluster sockets; delivering locally");
                    for socket in self.local().to(rooms).sockets() {
                        let info = info_from_rooms(socket.id.to_string(), &socket.rooms());
                        if skip.contains(&info.socket_id) {
                            continue;
                        }
                        let sent = Sent {
                            socket_id: info.socket_id,
                            user_id: info.user_id.unwrap_or_default(),
                            session_id: info.session_id,
                        };
                        match socket.emit(event, &payload) {
                            Ok(()) => delivered.reached.push(sent),
                            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                                tracing::warn!(event, socket = %sent.socket_id, "send buffer full; disconnecting the socket");
                                let _ = socket.disconnect();
                                delivered.missed.push((sent, SEND_BUFFER_FULL));
                            }
                            Err(e) => {
                                tracing::debug!(event, socket = %sent.socket_id, error = %e, "socket gone before the emit")
                            }
                        }
                    }
                    return delivered;
                }
            };
            for socket in sockets {
                let rooms = socket.rooms().await.unwrap_or_default();
                let info = info_from_rooms(socket.data().id.to_string(), &rooms);
                if skip.contains(&info.socket_id) {
                    continue;
                }
                let sent = Sent {
                    socket_id: info.socket_id,
                    user_id: info.user_id.unwrap_or_default(),
                    session_id: info.session_id,
                };
                match socket.emit(event, &payload).await {
                    Ok(()) => delivered.reached.push(sent),
                    Err(RemoteActionError::Socket(SocketError::InternalChannelFull)) => {
                        tracing::warn!(event, socket = %sent.socket_id, "send buffer full; disconnecting the socket");
                        if let Err(e) = socket.disconnect().await {
                            tracing::warn!(socket = %sent.socket_id, error = %e, "could not disconnect a full socket");
                        }
                        delivered.missed.push((sent, SEND_BUFFER_FULL));
                    }
                    Err(RemoteActionError::Socket(e)) => {
                        tracing::debug!(event, socket = %sent.socket_id, error = %e, "socket gone before the emit")
                    }
                    Err(e) => {
                        tracing::warn!(event, socket = %sent.socket_id, error = %e, "emit failed");
                        delivered.missed.push((sent, "emit_failed"));
                    }
                }
            }
            delivered
        })
    }

    fn sockets(&self, room: Option<String>) -> BoxFuture<'_, Vec<SocketInfo>> {
        Box::pin(async move {
            let fetched = match &room {
                Some(room) => self.to(room.clone()).fetch_sockets().await,
                None => self.fetch_sockets().await,
            };
            let sockets = match fetched {
                Ok(sockets) => sockets,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list cluster sockets; listing local ones");
                    let local = match room {
                        Some(room) => self.local().to(room).sockets(),
                        None => self.local().sockets(),
                    };
                    return local
                        .into_iter()
                        .map(|socket| {
                            let mut info = info_from_rooms(socket.id.to_string(), &socket.rooms());
                            info.connected_at = socket
                                .extensions
                                .get::<Arc<Connection>>()
                                .map(|c| c.connected_at);
                            info
                        })
                        .collect();
                }
            };
            let mut infos = Vec::with_capacity(sockets.len());
            for socket in sockets {
                let sid = socket.data().id;
                let rooms = socket.rooms().await.unwrap_or_default();
                let mut info = info_from_rooms(sid.to_string(), &rooms);
                info.connected_at = self
                    .get_socket(sid)
                    .and_then(|local| local.extensions.get::<Arc<Connection>>())
                    .map(|connection| connection.connected_at);
                infos.push(info);
            }
            infos
        })
    }

    fn disconnect(&self, room: String) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let count = self
                .to(room.clone())
                .fetch_sockets()
                .await
                .map(|s| s.len())
                .unwrap_or(0);
            if let Err(e) = self.to(room.clone()).disconnect().await {
                tracing::warn!(error = %e, "cluster disconnect failed; disconnecting locally");
                let _ = self.local().to(room).disconnect().await;
            }
            count
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }

    fn local_count(&self) -> usize {
        self.local().sockets().len()
    }
}
