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
//! anything itself — it calls the domain functions for that.

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
    pub identity: crate::auth::Identity,
    pub connected_at: Timestamp,
}
