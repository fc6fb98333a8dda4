//! socketioxide behind the [`Hub`]: every adapter (in-process, Redis,
//! PostgreSQL) implements [`HubOps`] the same way.
//!
//! Owns: turning hub calls into socketioxide operations, falling back to
//! this daemon's sockets when the cluster link is down, disconnecting a
//! socket whose send buffer is full instead of skipping it, and naming
//! each socket by its connection id (read from its `connection:` room).
//! Never: decide what is sent or to whom.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::socket::RemoteActionError;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};

use super::Connection;
use super::hub::{Delivered, Hub, HubOps, SEND_BUFFER_FULL, Sent, SocketInfo};
use super::rooms::CONNECTION_PREFIX;

impl Hub {
    pub fn new<A: Adapter>(io: SocketIo<A>) -> Self {
        Self::from_ops(Arc::new(io))
    }
}

/// How one emit to one socket ended.
enum Outcome {
    Queued,
    /// Its send buffer was full: it has been disconnected.
    Full,
    /// It disconnected before the emit; it gets a replay on reconnect.
    Gone(String),
    /// The cluster could not carry it.
    Failed(String),
}

impl Outcome {
    fn record(self, event: &str, sent: Sent, delivered: &mut Delivered) {
        match self {
            Outcome::Queued => delivered.reached.push(sent),
            Outcome::Full => {
                tracing::warn!(event, connection_id = %sent.connection_id, "send buffer full; socket disconnected");
                delivered.missed.push((sent, SEND_BUFFER_FULL));
            }
            Outcome::Gone(error) => {
                tracing::debug!(event, connection_id = %sent.connection_id, error, "socket gone before the emit");
            }
            Outcome::Failed(error) => {
                tracing::warn!(event, connection_id = %sent.connection_id, error, "emit failed");
                delivered.missed.push((sent, "emit_failed"));
            }
        }
    }
}

/// The socket an event is handed to, from its session id and rooms.
fn sent_to(sid: Sid, rooms: &[impl AsRef<str>]) -> Sent {
    let info = info_from_rooms(sid, rooms);
    Sent {
        connection_id: info.connection_id,
        user_id: info.user_id.unwrap_or_default(),
        session_id: info.session_id,
    }
}

/// Reads connection id, user, roles and session from a socket's rooms: the
/// only thing a remote node knows about a socket. The session id `sid`
/// only stands in, digested, for a socket with no `connection:` room — one
/// of a daemon from before connection ids, in a cluster upgraded one daemon
/// at a time.
fn info_from_rooms(sid: Sid, rooms: &[impl AsRef<str>]) -> SocketInfo {
    let mut info = SocketInfo {
        connection_id: String::new(),
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
        } else if let Some(connection) = room.strip_prefix(CONNECTION_PREFIX) {
            info.connection_id = connection.to_string();
        }
    }
    if info.connection_id.is_empty() {
        info.connection_id = unnamed_connection(sid);
    }
    info.roles.sort();
    info
}

/// A connection id for a socket that has none: a digest of its session id,
/// the same on every daemon, from which the session id cannot be found.
fn unnamed_connection(sid: Sid) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sid.as_str().as_bytes());
    format!("con_{}", hex::encode(&digest[..16]))
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
                        let sent = sent_to(socket.id, &socket.rooms());
                        if skip.contains(&sent.connection_id) {
                            continue;
                        }
                        let outcome = match socket.emit(event, &payload) {
                            Ok(()) => Outcome::Queued,
                            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                                let _ = socket.clone().disconnect();
                                Outcome::Full
                            }
                            Err(e) => Outcome::Gone(e.to_string()),
                        };
                        outcome.record(event, sent, &mut delivered);
                    }
                    return delivered;
                }
            };
            for socket in sockets {
                let rooms = socket.rooms().await.unwrap_or_default();
                let sent = sent_to(socket.data().id, &rooms);
                if skip.contains(&sent.connection_id) {
                    continue;
                }
                let outcome = match socket.emit(event, &payload).await {
                    Ok(()) => Outcome::Queued,
                    Err(RemoteActionError::Socket(SocketError::InternalChannelFull)) => {
                        if let Err(e) = socket.disconnect().await {
                            tracing::warn!(connection_id = %sent.connection_id, error = %e, "could not disconnect a full socket");
                        }
                        Outcome::Full
                    }
                    Err(RemoteActionError::Socket(e)) => Outcome::Gone(e.to_string()),
                    Err(e) => Outcome::Failed(e.to_string()),
                };
                outcome.record(event, sent, &mut delivered);
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
                            let mut info = info_from_rooms(socket.id, &socket.rooms());
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
                let mut info = info_from_rooms(sid, &rooms);
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
                .map_or(0, |s| s.len());
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

    fn local_count_in(&self, room: String) -> usize {
        self.local().to(room).sockets().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_named_by_its_connection_room() {
        let sid = Sid::new();
        let info = info_from_rooms(
            sid,
            &[
                "user:u1",
                "role:radiologist",
                "session:s1",
                "connection:con_01ABC",
            ],
        );
        assert_eq!(info.connection_id, "con_01ABC");
        assert_eq!(info.user_id.as_deref(), Some("u1"));
        assert_eq!(info.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn a_socket_without_one_gets_a_stable_name_that_hides_its_session_id() {
        let sid = Sid::new();
        let once = info_from_rooms(sid, &["user:u1"]).connection_id;
        let again = info_from_rooms(sid, &["user:u1"]).connection_id;
        assert_eq!(once, again);
        assert!(once.starts_with("con_"), "{once}");
        assert!(!once.contains(sid.as_str()), "{once}");
        assert_ne!(
            once,
            info_from_rooms(Sid::new(), &["user:u1"]).connection_id
        );
    }
}
