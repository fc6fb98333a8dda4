//! Socket.IO: viewers' connections, rooms and events.
//!
//! Owns: the namespace handlers (authentication and admission before
//! CONNECT, rooms `user:`/`role:`/`session:`, replay, client events) in
//! `handlers.rs`; [`Hub`] (`hub.rs`), the adapter-independent way the
//! services emit to rooms and ask who is connected, implemented over
//! socketioxide in `socketio.rs`; room names (`rooms.rs`); the cluster
//! adapters (`cluster.rs`). Handlers are generic over socketioxide's `Adapter`, so a
//! cluster adapter can replace the in-process one without touching them.
//! Never: decide whether a notification may be acknowledged or store
//! anything itself — it calls the domain functions for that; name a socket
//! by its Engine.IO session id anywhere outside the process (API, audit,
//! logs): that id is a bearer handle — with long-polling, whoever sends it
//! speaks as the socket without a token. Sockets are named by their
//! [`Connection::id`] instead.

pub mod cluster;
pub mod events;
mod handlers;
pub mod hub;
pub mod messages;
pub mod rooms;
mod socketio;
pub mod topics;

use crate::clock::Timestamp;

pub use handlers::attach;
pub use hub::{Delivered, Hub, HubOps, SEND_BUFFER_FULL, Sent, SocketInfo};

/// Per-connection data kept in the socket's extensions.
#[derive(Debug)]
pub struct Connection {
    /// The connection id (`con_` and a ULID), minted by readback: the one
    /// name of this socket in API answers (`socketId`), audit rows and
    /// logs. Unrelated to the Engine.IO session id, so knowing it gives
    /// no way into the session.
    pub id: String,
    pub identity: crate::auth::Identity,
    pub connected_at: Timestamp,
    /// When the socket's token expires (ms since the epoch); `reauth` moves
    /// it later.
    pub token_expires_at: std::sync::atomic::AtomicI64,
    /// Rung by `reauth`, so the expiry watch looks again.
    pub reauthenticated: tokio::sync::Notify,
    /// Cancelled when the socket disconnects: ends its expiry watch.
    pub gone: tokio_util::sync::CancellationToken,
    /// The token's `iat`, for revocations ("tokens issued before …").
    pub token_issued_at: Option<Timestamp>,
    /// This socket's budget of client events (`[limits]`).
    pub events: crate::limits::PerSocket,
}

impl Connection {
    pub fn new(verified: crate::auth::Verified, events: crate::limits::PerSocket) -> Self {
        let crate::auth::Verified {
            identity,
            expires_at: token_expires_at,
            issued_at,
        } = verified;
        Self {
            id: format!("con_{}", ulid::Ulid::new()),
            identity,
            token_issued_at: issued_at,
            connected_at: Timestamp::now(),
            token_expires_at: std::sync::atomic::AtomicI64::new(token_expires_at.as_millis()),
            reauthenticated: tokio::sync::Notify::new(),
            gone: tokio_util::sync::CancellationToken::new(),
            events,
        }
    }

    pub fn token_expires_at(&self) -> Timestamp {
        Timestamp::from_millis(
            self.token_expires_at
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}
