//! `/api/v1/notifications`: raise, read, list, cancel.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{
    AnyRole, Authorized, Budget, JsonBody, QueryParams, Reader, ServiceOrAdmin, from_json,
    page_limit, query_time, within_limit,
};
use crate::audit::reads::Read;
use crate::notifications::service::Trace;
use crate::notifications::{Notification, State as NotificationState, service};
use crate::state::AppState;
use crate::store::notifications::ListFilter;
use crate::validation::{FieldError, MAX_REASON_LEN, check_identifier, check_text};

/// The stored notification with its state, as the API shows it; with its
/// trace (deliveries, escalations, emails) when there is one.
pub fn view(notification: &Notification, trace: Option<&Trace>) -> Value {
    let mut body = serde_json::to_value(notification.to_wire(false)).expect("serializable");
    let object = body.as_object_mut().expect("object");
    object.remove("replayed");
    object.insert("recipient".into(), json!(notification.recipient));
    object.insert("state".into(), json!(notification.state));
    object.insert("createdBy".into(), json!(notification.created_by));
    object.insert(
        "acknowledgement".into(),
        match (&notification.acknowledged_at, &notification.acknowledged_by) {
            (Some(at), Some(by)) => json!({ "acknowledgedAt": at, "acknowledgedBy": by }),
            _ => Value::Null,
        },
    );
    object.insert(
        "cancellation".into(),
        match &notification.cancelled_at {
            Some(at) => json!({
                "cancelledAt": at,
                "cancelledBy": notification.cancelled_by,
                "reason": notification.cancel_reason,
            }),
            None => Value::Null,
        },
    );
    if let Some(trace) = trace {
        object.insert("deliveries".into(), json!(trace.deliveries));
        object.insert("escalations".into(), json!(trace.escalations));
        object.insert("emails".into(), json!(trace.emails));
    }
    body
}

pub async fn raise(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ServiceOrAdmin>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Per service identity, so one looping integration cannot starve
    // another; refused before anything is stored.
    within_limit(&state, Budget::Raises, &caller)?;
    let idempotency_key =
        match headers.get("idempotency-key") {
            Some(value) => Some(value.to_str().map_err(|_| {
                FieldError::new("Idempotency-Key", "must be visible ASCII characters")
            })?),
            None => None,
        };
    let raised = service::raise(&state.notifications, &caller, &body, idempotency_key).await?;
    let status = if raised.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let trace = Trace {
        notification: raised.notification,
        deliveries: raised.deliveries,
        escalations: Vec::new(),
        emails: Vec::new(),
    };
    Ok((status, Json(view(&trace.notification, Some(&trace)))))
}

/// A read of PHI: audited — counted in memory and written once per
/// `audit.read_window`, so the read waits for no audit write.
pub async fn get(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<Reader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_identifier("id", &id)?;
    let trace = service::get(&state.notifications, &id).await?;
    state.reads.record(&caller, Read::One(&trace.notification));
    Ok(Json(view(&trace.notification, Some(&trace))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    state: Option<String>,
    user_id: Option<String>,
    patient_id: Option<String>,
    study_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

impl ListQuery {
    /// The filters given, as the read's audit row records them.
    fn audited(&self) -> Value {
        let mut filters = serde_json::Map::new();
        for (name, value) in [
            ("state", &self.state),
            ("userId", &self.user_id),
            ("patientId", &self.patient_id),
            ("studyId", &self.study_id),
            ("since", &self.since),
            ("until", &self.until),
            ("cursor", &self.cursor),
        ] {
            if let Some(value) = value {
                filters.insert(name.into(), json!(value));
            }
        }
        if let Some(limit) = self.limit {
            filters.insert("limit".into(), json!(limit));
        }
        Value::Object(filters)
    }
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// A read of PHI: audited like [`get`], with its filters and what it
/// returned.
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<Reader>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let filters = query.audited();
    let filter = ListFilter {
        state: query
            .state
            .as_deref()
            .map(|s| {
                s.parse::<NotificationState>().map_err(|()| {
                    FieldError::new(
                        "state",
                        "must be one of pending, acknowledged, escalated, cancelled",
                    )
                })
            })
            .transpose()?,
        user_id: query.user_id,
        patient_id: query.patient_id,
        study_id: query.study_id,
        since: query_time("since", &query.since)?,
        until: query_time("until", &query.until)?,
        before_seq: query
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .ok()
                    .filter(|seq| *seq > 0)
                    .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API returned"))
            })
            .transpose()?,
        limit: limit + 1,
    };
    let mut page = service::list(&state.notifications, &filter).await?;
    let next_cursor = if page.len() > limit as usize {
        page.truncate(limit as usize);
        page.last().map(|n| n.seq.to_string())
    } else {
        None
    };
    state.reads.record(
        &caller,
        Read::List {
            filters,
            notifications: &page,
        },
    );
    let items: Vec<Value> = page.iter().map(|n| view(n, None)).collect();
    Ok(Json(json!({ "items": items, "nextCursor": next_cursor })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MineQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/me/notifications`: the caller's own open notifications,
/// due first — how a viewer reads what a bounded replay left out (the
/// `replay_truncated` event gives the cursor to start from). Audited, and
/// counted against the caller's `limits.audit_queries_*` budget.
pub async fn mine(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AnyRole>,
    QueryParams(query): QueryParams<MineQuery>,
) -> Result<Json<Value>, ApiError> {
    within_limit(&state, Budget::AuditQueries, &caller)?;
    let limit = page_limit(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let (page, next_cursor) = service::open_page(
        &state.notifications,
        &caller,
        query.cursor.as_deref(),
        limit,
    )
    .await?;
    let items: Vec<Value> = page.iter().map(|n| view(n, None)).collect();
    Ok(Json(json!({ "items": items, "nextCursor": next_cursor })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

pub async fn cancel(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<ServiceOrAdmin>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    check_identifier("id", &id)?;
    let CancelBody { reason } = from_json(&body)?;
    check_text("reason", &reason, MAX_REASON_LEN)?;
    let cancelled = service::cancel(&state.notifications, &caller, &id, &reason).await?;
    Ok(Json(view(&cancelled, None)))
}
