//! The default namespace: connect, replay, and the client events.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError, SocketIo};
use socketioxide_core::adapter::DefinedAdapter;

use super::{Connection, Sent, events, topics};
use crate::audit::{Action, AuditEvent};
use crate::auth::TokenError;
use crate::client_addr::{ClientAddr, SessionPlaces};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::limits::RetryAfter;
use crate::notifications::service;
use crate::realtime::rooms::{connection_room, role_room, session_room, user_room};
use crate::sessions::service::{self as sessions, OnConnect, SessionClock};
use crate::state::AppState;
use crate::validation::{FieldError, check_identifier, check_text};

/// Registers the default namespace. Returns the adapter's init result
/// (a future for cluster adapters, `()` for the local one).
///
/// Everything a socket needs before its client may speak happens in the
/// connect middlewares, which socketioxide runs *before* it sends the
/// CONNECT packet: socket.io-client flushes what a viewer emitted while
/// connecting the moment CONNECT arrives, so by then the socket must be
/// authenticated, its session known, its event handlers registered and its
/// rooms joined. The connect handler only announces and replays.
pub fn attach<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, state: AppState) -> A::InitRes {
    let auth_state = state.clone();
    let authenticate = move |socket: SocketRef<A>, TryData(auth): TryData<Value>| {
        let state = auth_state.clone();
        async move { authenticate(socket, auth.ok(), state).await }
    };
    let admit_state = state.clone();
    let admit = move |socket: SocketRef<A>| {
        let state = admit_state.clone();
        async move { admit(socket, state).await }
    };
    let connect = move |socket: SocketRef<A>| {
        let state = state.clone();
        async move { on_connect(socket, state).await }
    };
    // `with` runs the middleware it is given before the ones already there.
    io.ns("/", connect.with(admit).with(authenticate))
}

/// Largest handshake `auth` payload: a token and a few fields, not a
/// place to park megabytes.
const MAX_HANDSHAKE_AUTH_BYTES: usize = 16 * 1024;

/// Verifies the handshake token. A refusal becomes the `connect_error`
/// message (`Display` of [`TokenError`]) and an audit row.
async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    auth: Option<Value>,
    state: AppState,
) -> Result<(), TokenError> {
    let oversized = auth
        .as_ref()
        .is_some_and(|a| a.to_string().len() > MAX_HANDSHAKE_AUTH_BYTES);
    let verified = match token_from_handshake(&socket, auth.as_ref()) {
        _ if oversized => Err(TokenError::Invalid("handshake auth too large".into())),
        Some(token) => state.verifier.verify_fetching(&token).await,
        None => Err(TokenError::Missing),
    };
    let parts = socket.req_parts();
    // Resolved by the outermost HTTP middleware for the handshake request,
    // kept with the Engine.IO session.
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.ip);
    match verified {
        Ok(mut verified) => {
            verified.identity.client_addr = client;
            if let Some(places) = parts.extensions.get::<Arc<SessionPlaces>>() {
                places.authenticated();
            }
            let connection = Connection::new(verified, state.limits.socket_events());
            // Before anything can name this socket: its own room carries its
            // connection id to every daemon of a cluster.
            socket.join(connection_room(&connection.id));
            socket.extensions.insert(Arc::new(connection));
            Ok(())
        }
        Err(refusal) => {
            state.metrics.auth_refused.inc();
            if let Some(client) = client {
                state.limits.refused_logins.refused(client);
            }
            state.refusals.record(&crate::audit::refusals::Refusal {
                source: client,
                channel: "socket.io",
                reason: refusal.reason(),
                path: None,
                user_agent: parts
                    .headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok()),
            });
            tracing::info!(reason = refusal.reason(), "socket authentication refused");
            Err(refusal)
        }
    }
}

/// The token from `auth.token`, else `?token=`, else `Authorization: Bearer`.
fn token_from_handshake<A: Adapter>(socket: &SocketRef<A>, auth: Option<&Value>) -> Option<String> {
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(token.to_string());
    }
    let parts = socket.req_parts();
    if let Some(query) = parts.uri.query()
        && let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        && let Some((_, token)) = pairs.into_iter().find(|(key, _)| key == "token")
    {
        return Some(token);
    }
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// What the admission decided about a socket whose token is valid.
#[derive(Debug, Clone, Copy)]
enum Admission {
    /// In its rooms, with its event handlers.
    Admitted,
    /// The token's session has ended: the client is told, then dropped.
    SessionEnded,
    /// The token's session id belongs to another user.
    ForeignSession,
}

/// Connect middleware, after [`authenticate`]: the database work of a
/// connection (user directory, session), then the handlers and the rooms —
/// all before the CONNECT packet is sent, so nothing the client sends the
/// moment it is connected can find the socket half-registered.
async fn admit<A: Adapter>(socket: SocketRef<A>, state: AppState) -> Result<(), Refused> {
    let Some(connection) = socket.extensions.get::<Arc<Connection>>() else {
        // Unreachable: `authenticate` runs first and refuses without one.
        return Ok(());
    };
    let identity = &connection.identity;
    // Each connect costs a replay: a client reconnecting in a loop is
    // refused before any of that work (the database included).
    if state.limits.connects.check(&identity.user_id).is_err() {
        state.metrics.rate_limited("connects");
        tracing::debug!(user_id = %identity.user_id, "connecting too often; refused");
        return Err(Refused::TooManyAttempts);
    }
    // A revoked user's tokens issued before the revocation stay out. If the
    // database cannot say, the connection is let in (its token is valid,
    // and a viewer must keep receiving findings through a database blip:
    // its replay waits for the database); sessions, which carry logoff,
    // fail closed below.
    let revoked = async {
        let mut conn = state.store.conn().await?;
        crate::store::revocations::revoked_at(&mut conn, &identity.user_id, Timestamp::now()).await
    }
    .await;
    match revoked {
        Ok(Some(revoked_at))
            if connection
                .token_issued_at
                .is_none_or(|iat| iat < revoked_at) =>
        {
            tracing::info!(user_id = %identity.user_id, "token issued before a revocation; refused");
            return Err(Refused::Revoked);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(connection_id = %connection.id, error = %e, "cannot check revocations; letting a valid token in");
        }
    }
    crate::escalation::service::remember(&state.escalations, identity).await;
    let admission = match sessions::on_connect(&state.sessions, identity).await {
        Ok(OnConnect::NoSession) => Admission::Admitted,
        Ok(OnConnect::Active(clock)) => {
            socket.extensions.insert(Arc::new(clock));
            Admission::Admitted
        }
        Ok(OnConnect::Ended { reason }) => {
            socket.extensions.insert(Arc::new(EndedSession(reason)));
            Admission::SessionEnded
        }
        Ok(OnConnect::Foreign) => Admission::ForeignSession,
        Err(e) => {
            // Fail closed: a session that cannot be checked may have been
            // terminated; the client retries (socket.io-client reconnects).
            tracing::error!(connection_id = %connection.id, error = %e, "cannot check the token's session; connection refused");
            return Err(Refused::Unavailable);
        }
    };
    socket.extensions.insert(admission);
    let Admission::Admitted = admission else {
        // Whatever it sends before it is dropped is refused, not ignored.
        refuse_all_events(&socket, admission);
        return Ok(());
    };
    if state.config.realtime.single_connection_per_user {
        replace_older_connections(&state, &connection).await;
    } else {
        // A radiologist has a few tabs and devices, not hundreds: the newest
        // connection over the cap is refused (on this daemon; counting
        // across daemons would cost a cluster round trip per connect).
        let held = state.hub.local_count_in(user_room(&identity.user_id));
        if held >= state.config.realtime.max_sockets_per_user {
            tracing::warn!(user_id = %identity.user_id, held, "too many connections; refused");
            return Err(Refused::TooManyConnections);
        }
    }
    register_events(&socket, &state);
    let mut rooms = vec![user_room(&identity.user_id)];
    rooms.extend(identity.roles.iter().map(|role| role_room(role)));
    if let Some(session) = &identity.session_id {
        rooms.push(session_room(session));
    }
    socket.join(rooms);
    Ok(())
}

/// Why an authenticated connection was refused: its `connect_error`
/// message.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The database cannot say whether the token's session is still valid.
    #[error("Service temporarily unavailable")]
    Unavailable,
    /// The user holds `realtime.max_sockets_per_user` sockets already.
    #[error("Too many connections")]
    TooManyConnections,
    /// An admin revoked the user's tokens issued before now.
    #[error("Authentication token revoked")]
    Revoked,
    /// The user connected more often than `limits.connects_*` allow.
    #[error("Too many connection attempts")]
    TooManyAttempts,
}

/// Why the token's session ended, for the `session_expired` event.
#[derive(Debug)]
struct EndedSession(String);

/// The connect handler, run after the CONNECT packet went out: says hello,
/// then replays.
async fn on_connect<A: Adapter>(socket: SocketRef<A>, state: AppState) {
    let Some(connection) = socket.extensions.get::<Arc<Connection>>() else {
        let _ = socket.disconnect();
        return;
    };
    if !socket.connected() {
        // Gone already (dropped right after CONNECT): its disconnect
        // handler has run, there is nobody to greet.
        return;
    }
    match socket.extensions.get::<Admission>() {
        Some(Admission::Admitted) => {}
        Some(Admission::SessionEnded) => {
            let reason = socket
                .extensions
                .get::<Arc<EndedSession>>()
                .map(|ended| ended.0.clone())
                .unwrap_or_default();
            let _ = socket.emit(
                events::SESSION_EXPIRED,
                &events::SessionExpired {
                    session_id: connection.identity.session_id.as_deref(),
                    reason: &reason,
                    timestamp: Timestamp::now(),
                },
            );
            let _ = socket.disconnect();
            return;
        }
        Some(Admission::ForeignSession) | None => {
            let _ = socket.emit(
                events::ERROR,
                &json!({ "code": "forbidden", "message": "the token's session belongs to another user", "event": "connect" }),
            );
            let _ = socket.disconnect();
            return;
        }
    }
    let identity = &connection.identity;
    tracing::info!(connection_id = %connection.id, user_id = %identity.user_id, "connected");
    if state.config.realtime.presence_events {
        announce_presence(&state, &connection, true).await;
    }
    let _ = socket.emit(
        events::CONNECTED,
        &events::Connected {
            socket_id: &connection.id,
            user_id: &identity.user_id,
            session_id: identity.session_id.as_deref(),
            roles: &identity.roles,
            timestamp: Timestamp::now(),
        },
    );
    watch_token_expiry(
        &state.tasks,
        socket.clone(),
        connection.clone(),
        state.config.auth.expired_token_grace,
    );
    replay(&socket, &state, &connection).await;
}

/// A socket never outlives its token: at `exp` it is sent `token_expired`,
/// and `grace` later disconnected — unless `reauth` moved the expiry.
/// Ends when the socket goes.
fn watch_token_expiry<A: Adapter>(
    tasks: &tokio_util::task::TaskTracker,
    socket: SocketRef<A>,
    connection: Arc<Connection>,
    grace: std::time::Duration,
) {
    tasks.spawn(async move {
        let until = |at: Timestamp| {
            let millis = u64::try_from(at.millis_since(Timestamp::now()).max(0)).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(millis))
        };
        loop {
            let expires_at = connection.token_expires_at();
            tokio::select! {
                () = connection.gone.cancelled() => return,
                () = connection.reauthenticated.notified() => continue,
                () = until(expires_at) => {}
            }
            if connection.token_expires_at() != expires_at {
                continue;
            }
            let disconnect_at = expires_at.plus(grace);
            let _ = socket.emit(
                events::TOKEN_EXPIRED,
                &events::TokenExpired {
                    expired_at: expires_at,
                    disconnect_at,
                    timestamp: Timestamp::now(),
                },
            );
            tokio::select! {
                () = connection.gone.cancelled() => return,
                () = connection.reauthenticated.notified() => continue,
                () = until(disconnect_at) => {}
            }
            if connection.token_expires_at() == expires_at {
                tracing::info!(connection_id = %connection.id, user_id = %connection.identity.user_id, "token expired; disconnecting");
                let _ = socket.disconnect();
                return;
            }
        }
    });
}

/// For a socket that is about to be dropped: every event with an ack is
/// answered with the reason, so no client waits on a callback that never
/// comes.
fn refuse_all_events<A: Adapter>(socket: &SocketRef<A>, admission: Admission) {
    socket.on_fallback(move |Event(event): Event, reply: Reply<A>| async move {
        let error = match admission {
            Admission::SessionEnded => Error::Expired("the token's session has ended".into()),
            _ => Error::Forbidden("the token's session belongs to another user".into()),
        };
        reply.answer(&event, Err(error));
    });
}

/// `single_connection_per_user`: before this socket joins its user's room,
/// the user's other sockets (on any node) are told why and disconnected.
async fn replace_older_connections(state: &AppState, connection: &Connection) {
    let identity = &connection.identity;
    let room = user_room(&identity.user_id);
    let now = Timestamp::now();
    state
        .hub
        .emit(
            vec![room.clone()],
            events::SYSTEM_ALERT,
            json!({
                "message": "You signed in on another connection; this one is closed.",
                "level": "warning",
                "timestamp": now,
                "reason": "replaced_by_new_connection",
            }),
        )
        .await;
    let replaced = state.hub.disconnect(room).await;
    if replaced == 0 {
        return;
    }
    tracing::info!(connection_id = %connection.id, user_id = %identity.user_id, replaced, "older connections replaced");
    let event = AuditEvent::new(Action::ConnectionReplaced, now)
        .by(identity)
        .user(identity.user_id.clone())
        .session(identity.session_id.as_deref())
        .detail(json!({ "socketId": connection.id, "disconnected": replaced }));
    if let Err(e) = crate::store::audit::append_alone(&state.store, &event).await {
        tracing::warn!(error = %e, "could not audit a replaced connection");
    }
}

/// `presence_events`: `user_online` when a user's first socket connects,
/// `user_offline` when the last one goes, to the `role:admin` room.
async fn announce_presence(state: &AppState, connection: &Connection, online: bool) {
    let identity = &connection.identity;
    let others = state
        .hub
        .sockets(Some(user_room(&identity.user_id)))
        .await
        .into_iter()
        .filter(|s| s.connection_id != connection.id)
        .count();
    if others > 0 {
        return;
    }
    let (event, kind) = if online {
        (events::USER_ONLINE, "connected")
    } else {
        (events::USER_OFFLINE, "disconnected")
    };
    state
        .hub
        .send(
            vec![role_room(crate::auth::roles::ADMIN)],
            event,
            &events::Presence {
                user_id: &identity.user_id,
                roles: &identity.roles,
                timestamp: Timestamp::now(),
            },
        )
        .await;
    state
        .hub
        .console_update(kind, None, Some(&identity.user_id))
        .await;
}

/// Any client event counts as activity on the socket's session.
async fn touch<A: Adapter>(socket: &SocketRef<A>, state: &AppState) -> Option<Timestamp> {
    let clock = socket.extensions.get::<Arc<SessionClock>>()?;
    Some(sessions::touch(&state.sessions, &clock).await)
}

/// Sends the user's open notifications (direct or through a role), oldest
/// first, marked `replayed` — at most `realtime.max_replay` of them, the
/// ones due first; when more are open, `replay_truncated` tells the client
/// how many and where to read them. The work of one connect is bounded by
/// that, and connects per user by `limits.connects_*`.
async fn replay<A: Adapter>(socket: &SocketRef<A>, state: &AppState, connection: &Connection) {
    let identity = &connection.identity;
    // A connected viewer must get its backlog: while the database is busy
    // or away (a reconnect storm, a failover), retry for as long as the
    // socket stays connected. A socket that goes meanwhile gets it on its
    // next connect.
    let mut retry_in = std::time::Duration::from_millis(100);
    let max = state.config.realtime.max_replay;
    let backlog = loop {
        match service::backlog(&state.notifications, identity, max).await {
            Ok(backlog) => break backlog,
            Err(e) => {
                if !socket.connected() {
                    return;
                }
                tracing::warn!(connection_id = %connection.id, error = %e, ?retry_in, "replay failed; retrying");
                tokio::time::sleep(retry_in).await;
                retry_in = (retry_in * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    state
        .metrics
        .replayed(backlog.notifications.len(), backlog.next_cursor.is_some());
    if backlog.notifications.is_empty() {
        return;
    }
    let sent = Sent {
        connection_id: connection.id.clone(),
        user_id: identity.user_id.clone(),
        session_id: identity.session_id.clone(),
    };
    let mut reached = Vec::with_capacity(backlog.notifications.len());
    let mut stalled_on = None;
    let mut complete = true;
    for notification in &backlog.notifications {
        match emit_waiting(
            socket,
            events::CRITICAL_NOTIFICATION,
            &notification.to_wire(true),
        )
        .await
        {
            Queued::Yes => reached.push(notification),
            // Disconnected meanwhile: the rest is replayed on the next connect.
            Queued::Gone(error) => {
                tracing::debug!(connection_id = %connection.id, error, "socket gone during the replay");
                complete = false;
                break;
            }
            Queued::Stalled => {
                // Not reading for too long: dropped, so a real client
                // reconnects and gets the rest then.
                tracing::warn!(connection_id = %connection.id, "replay stalled on a full send buffer; disconnecting");
                let _ = socket.clone().disconnect();
                stalled_on = Some(notification);
                complete = false;
                break;
            }
        }
    }
    if complete && let Some(next_cursor) = &backlog.next_cursor {
        let truncated = events::ReplayTruncated {
            sent: reached.len(),
            remaining: backlog.remaining,
            next_cursor,
            timestamp: Timestamp::now(),
        };
        let _ = emit_waiting(socket, events::REPLAY_TRUNCATED, &truncated).await;
    }
    let (deliveries, events) =
        service::replay_records(&sent, &reached, stalled_on, backlog.remaining);
    if let Err(e) = service::record(&state.notifications, deliveries, events, true).await {
        tracing::error!(connection_id = %connection.id, error = %e, "could not record replayed deliveries");
    }
}

/// Whether [`emit_waiting`] queued the event.
enum Queued {
    Yes,
    /// The socket is gone: why the emit failed.
    Gone(String),
    /// Its send buffer stayed full for [`STALLED_AFTER`].
    Stalled,
}

/// How long a replay waits for a full send buffer to drain before it gives
/// the socket up as stalled.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Emits to one socket, waiting while its send buffer is full (a replay of
/// hundreds of notifications outruns the socket's writer), but not forever.
async fn emit_waiting<A: Adapter, T: serde::Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    payload: &T,
) -> Queued {
    let started = std::time::Instant::now();
    loop {
        match socket.emit(event, payload) {
            Ok(()) => return Queued::Yes,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                if started.elapsed() >= STALLED_AFTER {
                    return Queued::Stalled;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Err(e) => return Queued::Gone(e.to_string()),
        }
    }
}

/// Registers a client event with a payload, answered through [`Reply`].
/// `activity` says whether it counts as activity on the session first
/// (`extend_session` records its own).
fn on_request<A, F, Fut>(
    socket: &SocketRef<A>,
    state: &AppState,
    event: &'static str,
    activity: bool,
    handle: F,
) where
    A: Adapter,
    F: Fn(SocketRef<A>, AppState, Option<Value>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, Error>> + Send + 'static,
{
    let state = state.clone();
    socket.on(
        event,
        move |socket: SocketRef<A>, TryData(data): TryData<Value>, reply: Reply<A>| {
            let (state, handle) = (state.clone(), handle.clone());
            async move {
                let Some(reply) = within_limit(&socket, &state, event, reply) else {
                    return;
                };
                if activity {
                    touch(&socket, &state).await;
                }
                let result = handle(socket, state, data.ok()).await;
                reply.answer(event, result);
            }
        },
    );
}

/// Spends one unit of the socket's budget of client events: within it, the
/// reply to answer with; over it, the event is refused `rate_limited`
/// before it touches anything (the session's activity included).
fn within_limit<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    event: &str,
    reply: Reply<A>,
) -> Option<Reply<A>> {
    let Some(connection) = socket.extensions.get::<Arc<Connection>>() else {
        // Unreachable (handlers are registered after authentication); the
        // handler refuses it as not authenticated.
        return Some(reply);
    };
    match connection.events.check() {
        Ok(()) => Some(reply),
        Err(retry_after) => {
            state.metrics.rate_limited("client_events");
            tracing::debug!(connection_id = %connection.id, event, ?retry_after, "client event rate limited");
            reply.rate_limited(event, retry_after);
            None
        }
    }
}

fn register_events<A: Adapter>(socket: &SocketRef<A>, state: &AppState) {
    on_request(
        socket,
        state,
        events::ACKNOWLEDGE_NOTIFICATION,
        true,
        |socket, state, data| async move { acknowledge(&socket, &state, data).await },
    );
    on_request(
        socket,
        state,
        events::EXTEND_SESSION,
        false,
        |socket, state, data| async move { extend_session(&socket, &state, data).await },
    );
    on_request(
        socket,
        state,
        events::REAUTH,
        false,
        |socket, state, data| async move { reauth(&socket, &state, data) },
    );
    on_request(
        socket,
        state,
        events::SUBSCRIBE,
        true,
        |socket, state, data| async move { subscribe(&socket, &state, data) },
    );
    on_request(
        socket,
        state,
        events::UNSUBSCRIBE,
        true,
        |socket, _state, data| async move { unsubscribe(&socket, data) },
    );
    let activity_state = state.clone();
    socket.on(
        events::ACTIVITY,
        move |socket: SocketRef<A>, reply: Reply<A>| {
            let state = activity_state.clone();
            async move {
                let Some(reply) = within_limit(&socket, &state, events::ACTIVITY, reply) else {
                    return;
                };
                let expires_at = touch(&socket, &state).await;
                reply.answer(
                    events::ACTIVITY,
                    Ok(json!({ "ok": true, "expiresAt": expires_at })),
                );
            }
        },
    );
    let fallback_state = state.clone();
    socket.on_fallback(
        move |socket: SocketRef<A>, Event(event): Event, reply: Reply<A>| {
            let state = fallback_state.clone();
            async move {
                let Some(reply) = within_limit(&socket, &state, &event, reply) else {
                    return;
                };
                touch(&socket, &state).await;
                let error =
                    Error::Invalid(FieldError::new("event", format!("unknown event `{event}`")));
                reply.answer(&event, Err(error));
            }
        },
    );
    let disconnect_state = state.clone();
    socket.on_disconnect(move |socket: SocketRef<A>, reason: DisconnectReason| {
        let state = disconnect_state.clone();
        async move {
            let Some(connection) = socket.extensions.get::<Arc<Connection>>() else {
                return;
            };
            connection.gone.cancel();
            tracing::info!(connection_id = %connection.id, %reason, "disconnected");
            if state.config.realtime.presence_events {
                announce_presence(&state, &connection, false).await;
            }
        }
    });
}

fn connection_of<A: Adapter>(socket: &SocketRef<A>) -> Result<Arc<Connection>, Error> {
    socket
        .extensions
        .get::<Arc<Connection>>()
        .ok_or_else(|| Error::Forbidden("not authenticated".into()))
}

/// A client event's payload, which must be a JSON object of `shape`.
fn payload_object(data: Option<Value>, shape: &str) -> Result<Value, FieldError> {
    data.filter(Value::is_object)
        .ok_or_else(|| FieldError::new("payload", format!("must be an object {shape}")))
}

fn required_string<'a>(data: &'a Value, field: &str) -> Result<&'a str, FieldError> {
    match data.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(FieldError::new(field, "must be a string")),
        None => Err(FieldError::new(field, "is required")),
    }
}

/// `reauth { token }`: a fresh token for the same user, roles and session
/// moves the socket's expiry later, so a long-lived viewer need not
/// reconnect when its identity provider renews the token.
fn reauth<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    data: Option<Value>,
) -> Result<Value, Error> {
    let connection = connection_of(socket)?;
    let data = payload_object(data, "{ token }")?;
    let token = required_string(&data, "token")?;
    let verified = state.verifier.verify_until(token).map_err(|e| match e {
        TokenError::Expired => Error::Expired(e.to_string()),
        _ => Error::Forbidden(e.to_string()),
    })?;
    let (identity, expires_at) = (verified.identity, verified.expires_at);
    if identity.user_id != connection.identity.user_id
        || identity.roles != connection.identity.roles
        || identity.session_id != connection.identity.session_id
    {
        return Err(Error::Forbidden(
            "the new token must be for the same user, roles and session".into(),
        ));
    }
    connection
        .token_expires_at
        .store(expires_at.as_millis(), std::sync::atomic::Ordering::Relaxed);
    connection.reauthenticated.notify_waiters();
    Ok(json!({ "ok": true, "expiresAt": expires_at }))
}

/// `subscribe { topic }`: joins `topic:{topic}` if the socket's roles may.
fn subscribe<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    data: Option<Value>,
) -> Result<Value, Error> {
    let connection = connection_of(socket)?;
    let data = payload_object(data, "{ topic }")?;
    let topic = required_string(&data, "topic")?;
    let realtime = &state.config.realtime;
    topics::may_subscribe(&connection.identity, topic, &realtime.topics)?;
    let room = topics::topic_room(topic);
    let rooms = socket.rooms();
    if !rooms.iter().any(|r| *r == room)
        && rooms.iter().filter(|r| r.starts_with("topic:")).count()
            >= realtime.max_topics_per_socket
    {
        return Err(Error::Conflict(format!(
            "a connection may subscribe to at most {} topics; unsubscribe from one first",
            realtime.max_topics_per_socket
        )));
    }
    socket.join(room);
    Ok(json!({ "ok": true, "topic": topic }))
}

/// `unsubscribe { topic }`: leaves `topic:{topic}` (fine if not joined).
fn unsubscribe<A: Adapter>(socket: &SocketRef<A>, data: Option<Value>) -> Result<Value, Error> {
    connection_of(socket)?;
    let data = payload_object(data, "{ topic }")?;
    let topic = required_string(&data, "topic")?;
    topics::check_name(topic)?;
    socket.leave(topics::topic_room(topic));
    Ok(json!({ "ok": true, "topic": topic }))
}

/// `extend_session { sessionId }`: only the token's own session.
async fn extend_session<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    data: Option<Value>,
) -> Result<Value, Error> {
    let connection = connection_of(socket)?;
    let data = payload_object(data, "{ sessionId }")?;
    let session_id = required_string(&data, "sessionId")?;
    check_text("sessionId", session_id, 256)?;
    let expires_at = sessions::extend(&state.sessions, &connection.identity, session_id).await?;
    Ok(json!({ "ok": true, "sessionId": session_id, "expiresAt": expires_at }))
}

/// `acknowledge_notification { notificationId, userId? }`.
async fn acknowledge<A: Adapter>(
    socket: &SocketRef<A>,
    state: &AppState,
    data: Option<Value>,
) -> Result<Value, Error> {
    let connection = connection_of(socket)?;
    let identity = &connection.identity;
    let data = payload_object(data, "{ notificationId }")?;
    let id = required_string(&data, "notificationId")?;
    check_identifier("notificationId", id)?;
    match data.get("userId") {
        None | Some(Value::Null) => {}
        Some(Value::String(user)) if *user == identity.user_id => {}
        Some(Value::String(_)) => {
            return Err(Error::Forbidden(
                "userId does not match the authenticated user".into(),
            ));
        }
        Some(_) => return Err(FieldError::new("userId", "must be a string").into()),
    }
    let acknowledged =
        service::acknowledge(&state.notifications, identity, id, Some(&connection.id)).await?;
    Ok(json!({
        "ok": true,
        "notificationId": acknowledged.notification_id,
        "acknowledgedAt": acknowledged.acknowledged_at,
        "acknowledgedBy": acknowledged.acknowledged_by,
    }))
}

/// Answers a client event: through the ack callback when the client asked
/// for one, else (for refusals) with an `error` event.
pub struct Reply<A: Adapter> {
    socket: SocketRef<A>,
    ack: AckSender<A>,
    wants_ack: bool,
}

impl<A: Adapter> FromMessageParts<A> for Reply<A> {
    type Error = Infallible;
    fn from_message_parts(
        socket: &Arc<Socket<A>>,
        value: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self {
            socket: SocketRef::from_message_parts(socket, value, ack_id)?,
            ack: AckSender::from_message_parts(socket, value, ack_id)?,
            wants_ack: ack_id.is_some(),
        })
    }
}

impl<A: Adapter> Reply<A> {
    fn answer(self, event: &str, result: Result<Value, Error>) {
        match result {
            Ok(answer) => {
                if let Err(e) = self.ack.send(&answer) {
                    tracing::debug!(event, error = %e, "could not answer a client event");
                }
            }
            Err(error) => {
                if let Error::Store(e) = &error {
                    tracing::error!(event, error = %e, "client event failed");
                }
                self.refuse(event, error.code(), &error.public_message(), None);
            }
        }
    }

    /// Over the socket's budget of client events: `rate_limited`, with the
    /// milliseconds until the next event would be accepted.
    fn rate_limited(self, event: &str, retry_after: RetryAfter) {
        self.refuse(
            event,
            "rate_limited",
            &format!(
                "too many events on this connection; retry after {} ms",
                retry_after.millis()
            ),
            Some(retry_after.millis()),
        );
    }

    /// The one shape of a refusal: `{ ok: false, code, message }` through
    /// the ack callback when the client asked for one, else an `error`
    /// event `{ code, message, event }`.
    fn refuse(self, event: &str, code: &str, message: &str, retry_after_ms: Option<u64>) {
        let mut refusal = if self.wants_ack {
            json!({ "ok": false, "code": code, "message": message })
        } else {
            json!({ "code": code, "message": message, "event": event })
        };
        if let Some(millis) = retry_after_ms {
            refusal["retryAfter"] = json!(millis);
        }
        let sent = if self.wants_ack {
            self.ack.send(&refusal)
        } else {
            self.socket.emit(events::ERROR, &refusal)
        };
        if let Err(e) = sent {
            tracing::debug!(event, error = %e, "could not answer a client event");
        }
    }
}
