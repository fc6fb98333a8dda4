//! Room names: how a user, a role, a session or a topic is addressed.
//!
//! Owns: the one spelling of each room (`user:{id}`, `role:{name}`,
//! `session:{id}`, `topic:{name}`, `connection:{id}`), shared by the
//! services that emit and the handlers that join.
//! Never: depend on socketioxide or on any other readback module.

pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}
pub fn role_room(role: &str) -> String {
    format!("role:{role}")
}
pub fn session_room(session_id: &str) -> String {
    format!("session:{session_id}")
}

pub fn topic_room(topic: &str) -> String {
    format!("topic:{topic}")
}

/// The room of one connection, which only its own socket joins: how every
/// daemon of a cluster learns a socket's connection id (rooms are all a
/// daemon knows about another daemon's sockets) and can reach that socket.
pub fn connection_room(connection_id: &str) -> String {
    format!("{CONNECTION_PREFIX}{connection_id}")
}

/// The prefix of [`connection_room`].
pub const CONNECTION_PREFIX: &str = "connection:";

/// The operator console's live feed: admins and auditors only.
pub const CONSOLE_TOPIC: &str = "readback.console";
