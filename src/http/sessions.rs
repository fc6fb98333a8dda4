//! `/api/v1/sessions/{id}`: register, read and terminate sessions.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{
    AnyRole, Authorized, JsonBody, QueryParams, Reader, ServiceOrAdmin, from_json, page_limit,
};
use crate::auth::roles;
use crate::error::Error;
use crate::sessions::Session;
use crate::sessions::service::{self, Registration};
use crate::state::AppState;
use crate::validation::{FieldError, check_text};

fn view(session: &Session) -> Value {
    json!({
        "sessionId": session.id,
        "userId": session.user_id,
        "state": session.state,
        "startedAt": session.started_at,
        "lastActivityAt": session.last_activity_at,
        "expiresAt": session.expires_at,
        "idleTimeout": session.idle_timeout_ms,
        "maxLifetime": session.max_lifetime_ms,
        "endedAt": session.ended_at,
        "endReason": session.end_reason,
        "warned": session.warned_for.is_some(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    user_id: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/sessions?userId=&limit=`: active sessions, soonest expiry
/// first.
pub async fn list(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<Reader>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(user) = &query.user_id {
        check_text("userId", user, 256)?;
    }
    let limit = page_limit(query.limit, 50, 500)?;
    let sessions =
        service::list_active(&state.sessions, query.user_id.as_deref(), i64::from(limit)).await?;
    let items: Vec<Value> = sessions.iter().map(view).collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegisterBody {
    user_id: String,
    idle_timeout: Option<u64>,
    max_lifetime: Option<u64>,
}

pub async fn register(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ServiceOrAdmin>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_text("sessionId", &id, 256)?;
    let body: RegisterBody = from_json(&body)?;
    check_text("userId", &body.user_id, 256)?;
    let ceiling = state.config.sessions.max_lifetime;
    let within = |field: &str, ms: Option<u64>| -> Result<Option<Duration>, FieldError> {
        match ms {
            None => Ok(None),
            Some(0) => Err(FieldError::new(field, "must be at least 1 millisecond")),
            Some(ms) if Duration::from_millis(ms) > ceiling => Err(FieldError::new(
                field,
                format!(
                    "must be at most sessions.max_lifetime ({} ms)",
                    ceiling.as_millis()
                ),
            )),
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
        }
    };
    let idle_timeout = within("idleTimeout", body.idle_timeout)?;
    let max_lifetime = within("maxLifetime", body.max_lifetime)?;
    if let (Some(idle), Some(max)) = (idle_timeout, max_lifetime)
        && idle > max
    {
        return Err(FieldError::new("idleTimeout", "must not be longer than maxLifetime").into());
    }
    let registration = Registration {
        user_id: body.user_id,
        idle_timeout,
        max_lifetime,
    };
    let (session, created) = service::register(&state.sessions, &caller, &id, registration).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&session))))
}

pub async fn get(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AnyRole>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_text("sessionId", &id, 256)?;
    let session = service::get(&state.sessions, &id).await?;
    let privileged = caller.has_any_role(&[roles::SERVICE, roles::ADMIN]);
    if !privileged && session.user_id != caller.user_id {
        // The same answer as for an unknown id, so ids cannot be probed.
        return Err(Error::NotFound(format!("session {id} not found")).into());
    }
    Ok(Json(view(&session)))
}

pub async fn terminate(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ServiceOrAdmin>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_text("sessionId", &id, 256)?;
    let session = service::terminate(&state.sessions, &caller, &id).await?;
    Ok(Json(view(&session)))
}
