//! Connections and broadcasts: who is online, alerts, forced disconnects.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{
    AdminOnly, AnyRole, Authorized, JsonBody, OptionalJsonBody, QueryParams, Reader,
    ServiceOrAdmin, from_json,
};
use crate::audit::{Action, AuditEvent};
use crate::clock::Timestamp;
use crate::realtime::events;
use crate::realtime::hub::SocketInfo;
use crate::realtime::rooms::{role_room, user_room};
use crate::state::AppState;
use crate::store::audit::append_alone;
use crate::validation::{FieldError, MAX_REASON_LEN, check_text};

const LEVELS: [&str; 3] = ["info", "warning", "critical"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    role: Option<String>,
    message: String,
    level: String,
}

pub async fn broadcast(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminOnly>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let BroadcastBody {
        role,
        message,
        level,
    } = from_json(&body)?;
    check_text("message", &message, MAX_REASON_LEN)?;
    if !LEVELS.contains(&level.as_str()) {
        return Err(FieldError::new("level", "must be one of info, warning, critical").into());
    }
    if let Some(role) = &role {
        check_text("role", role, 256)?;
    }
    let now = Timestamp::now();
    let payload = json!({
        "message": message,
        "level": level,
        "timestamp": now,
        "role": role,
        "from": caller.user_id,
    });
    let sockets = match &role {
        Some(role) => {
            let room = role_room(role);
            let count = state.hub.sockets(Some(room.clone())).await.len();
            state
                .hub
                .emit(vec![room], events::SYSTEM_ALERT, payload)
                .await;
            count
        }
        None => {
            let count = state.hub.sockets(None).await.len();
            state.hub.emit_all(events::SYSTEM_ALERT, payload).await;
            count
        }
    };
    append_alone(
        &state.store,
        &AuditEvent::new(Action::AdminBroadcast, now)
            .by(&caller)
            .detail(
                json!({ "role": role, "level": level, "message": message, "sockets": sockets }),
            ),
    )
    .await?;
    Ok(Json(
        json!({ "ok": true, "role": role, "level": level, "sockets": sockets, "timestamp": now }),
    ))
}

/// Groups sockets by user; each user's earliest connection is named
/// `since_key` (`connectedAt` for connections, `since` for presence).
fn by_user(sockets: Vec<SocketInfo>, since_key: &str) -> Vec<Value> {
    let mut users: BTreeMap<String, Vec<SocketInfo>> = BTreeMap::new();
    for socket in sockets {
        if let Some(user) = socket.user_id.clone() {
            users.entry(user).or_default().push(socket);
        }
    }
    users
        .into_iter()
        .map(|(user_id, sockets)| {
            let mut roles: Vec<&str> = sockets
                .iter()
                .flat_map(|s| s.roles.iter().map(String::as_str))
                .collect();
            roles.sort_unstable();
            roles.dedup();
            let since = sockets.iter().filter_map(|s| s.connected_at).min();
            let mut user = json!({
                "userId": user_id,
                "sockets": sockets.len(),
                "roles": roles,
            });
            user[since_key] = json!(since);
            user
        })
        .collect()
}

pub async fn connections(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<Reader>,
) -> Json<Value> {
    let sockets = state.hub.sockets(None).await;
    let total = sockets.len();
    let users = by_user(sockets, "connectedAt");
    Json(json!({ "users": users, "totalUsers": users.len(), "totalSockets": total }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    role: Option<String>,
}

/// `GET /api/v1/presence?role=`: users with at least one socket, on any
/// node, with their roles and since when.
pub async fn presence(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<Reader>,
    QueryParams(query): QueryParams<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    let room = match &query.role {
        Some(role) => {
            check_text("role", role, 256)?;
            Some(role_room(role))
        }
        None => None,
    };
    let users = by_user(state.hub.sockets(room).await, "since");
    Ok(Json(json!({ "users": users, "total": users.len() })))
}

async fn status_of(state: &AppState, user_id: &str) -> Value {
    let sockets = state.hub.sockets(Some(user_room(user_id))).await;
    let mut sessions: Vec<&str> = sockets
        .iter()
        .filter_map(|s| s.session_id.as_deref())
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    // Connection ids, never Engine.IO session ids (realtime::Connection).
    let socket_ids: Vec<&str> = sockets.iter().map(|s| s.connection_id.as_str()).collect();
    json!({
        "userId": user_id,
        "connected": !sockets.is_empty(),
        "sockets": sockets.len(),
        "socketIds": socket_ids,
        "sessions": sessions,
    })
}

pub async fn user_status(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ServiceOrAdmin>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_text("userId", &user_id, 256)?;
    Ok(Json(status_of(&state, &user_id).await))
}

pub async fn me(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AnyRole>,
) -> Json<Value> {
    let mut status = status_of(&state, &caller.user_id).await;
    status["roles"] = json!(caller.roles);
    status["sessionId"] = json!(caller.session_id);
    Json(status)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct DisconnectBody {
    reason: Option<String>,
    /// Milliseconds during which the user's tokens issued before now are
    /// refused on connect.
    refuse_for: Option<u64>,
}

/// The longest `refuseFor`: 30 days.
const MAX_REFUSE_FOR_MS: u64 = 30 * 86_400_000;

pub async fn disconnect_user(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AdminOnly>,
    Path(user_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<Value>, ApiError> {
    check_text("userId", &user_id, 256)?;
    let (reason, refuse_for) = match body {
        Some(body) => {
            let body = from_json::<DisconnectBody>(&body)?;
            (body.reason, body.refuse_for)
        }
        None => (None, None),
    };
    if refuse_for.is_some_and(|ms| ms == 0 || ms > MAX_REFUSE_FOR_MS) {
        return Err(FieldError::new(
            "refuseFor",
            "must be 1 to 2592000000 milliseconds (30 days)",
        )
        .into());
    }
    if let Some(reason) = &reason {
        check_text("reason", reason, MAX_REASON_LEN)?;
    }
    let now = Timestamp::now();
    if let Some(ms) = refuse_for {
        // Before the disconnect, so a reconnect racing it is refused too.
        let mut conn = state.store.conn().await?;
        crate::store::revocations::revoke(
            &mut conn,
            &user_id,
            now,
            now.plus(std::time::Duration::from_millis(ms)),
            &caller.user_id,
            reason.as_deref(),
        )
        .await?;
    }
    let room = user_room(&user_id);
    if let Some(reason) = &reason {
        // Tell the viewer why before the connection drops.
        state
            .hub
            .emit(
                vec![room.clone()],
                events::SYSTEM_ALERT,
                json!({ "message": reason, "level": "warning", "timestamp": now, "reason": "disconnected_by_admin" }),
            )
            .await;
    }
    let disconnected = state.hub.disconnect(room).await;
    append_alone(
        &state.store,
        &AuditEvent::new(Action::AdminDisconnect, now)
            .by(&caller)
            .user(user_id.clone())
            .detail(json!({ "reason": reason, "sockets": disconnected, "refuseFor": refuse_for })),
    )
    .await?;
    Ok(Json(json!({
        "userId": user_id,
        "disconnected": disconnected,
        "refusedUntil": refuse_for.map(|ms| now.plus(std::time::Duration::from_millis(ms))),
    })))
}
