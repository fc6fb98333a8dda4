//! `POST /api/v1/messages`: ordinary real-time updates to users, roles,
//! topics or everyone. Not stored: they are not critical findings.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Authorized, JsonBody, ServiceOrAdmin};
use crate::clock::Timestamp;
use crate::realtime::messages::{self, MessagePolicy};
use crate::state::AppState;

pub async fn send(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ServiceOrAdmin>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = Timestamp::now();
    let realtime = &state.config.realtime;
    let policy = MessagePolicy {
        allowed_events: &realtime.message_events,
        max_data_bytes: realtime.max_message_bytes,
    };
    let message = messages::parse(&body, &policy, now)?;
    match message.to.rooms() {
        Some(rooms) => state.hub.emit(rooms, &message.event, message.payload).await,
        None => state.hub.emit_all(&message.event, message.payload).await,
    }
    state.metrics.messages_sent.inc();
    tracing::info!(event = %message.event, to = ?message.to, user_id = %caller.user_id, "message sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "ok": true, "event": message.event, "timestamp": now })),
    ))
}
