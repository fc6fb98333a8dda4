//! `/api/v1/audit`, the per-notification timeline, and the report.
//! Every query of the log is itself audited (who looked at what).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Authorized, Budget, QueryParams, Reader, Roles, query_time, within_limit};
use crate::audit::reads::{Read, Reads};
use crate::audit::review::{self, row_json, to_csv};
use crate::audit::{Action, AuditEvent};
use crate::auth::{Identity, roles};
use crate::clock::Timestamp;
use crate::severity::Severity;
use crate::state::AppState;
use crate::store::audit::{self as sql, AuditFilter, WALK_PAGE, append_alone};
use crate::store::reports::GroupBy;
use crate::validation::{FieldError, check_identifier};

/// Auditors and admins only.
pub struct AuditorOrAdmin;
impl Roles for AuditorOrAdmin {
    const ALLOWED: &'static [&'static str] = &[roles::AUDITOR, roles::ADMIN];
    const DESCRIPTION: &'static str = "auditor or admin";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditQuery {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    patient_id: Option<String>,
    study_id: Option<String>,
    notification_id: Option<String>,
    action: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    format: Option<String>,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

async fn record_query(state: &AppState, caller: &Identity, what: Value) -> Result<(), ApiError> {
    append_alone(
        &state.store,
        &AuditEvent::new(Action::AuditQueried, Timestamp::now())
            .by(caller)
            .detail(what),
    )
    .await?;
    Ok(())
}

pub async fn list(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AuditorOrAdmin>,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
    within_limit(&state, Budget::AuditQueries, &caller)?;
    if let Some(action) = &query.action
        && Action::parse(action).is_none()
    {
        return Err(FieldError::new("action", format!("unknown action `{action}`")).into());
    }
    let filter = AuditFilter {
        from: query_time("from", &query.from)?,
        to: query_time("to", &query.to)?,
        user_id: query.user_id.clone(),
        patient_id: query.patient_id.clone(),
        study_id: query.study_id.clone(),
        notification_id: query.notification_id.clone(),
        action: query.action.clone(),
    };
    let format = query.format.as_deref().unwrap_or("json");
    if !["json", "csv", "ndjson"].contains(&format) {
        return Err(FieldError::new("format", "must be json, csv or ndjson").into());
    }
    // In JSON a page; CSV and NDJSON export every matching row unless a
    // limit is given.
    let limit = match (query.limit, format) {
        (Some(limit), _) if !(1..=MAX_PAGE).contains(&limit) => {
            return Err(
                FieldError::new("limit", format!("must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        (Some(limit), _) => Some(limit),
        (None, "json") => Some(DEFAULT_PAGE),
        (None, _) => None,
    };
    let after = match &query.cursor {
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API returned"))?,
        None => 0,
    };
    let filters = json!({
        "from": query.from, "to": query.to, "userId": query.user_id, "patientId": query.patient_id,
        "studyId": query.study_id, "notificationId": query.notification_id, "action": query.action,
        "cursor": query.cursor, "limit": limit,
    });

    if format == "json" {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        let mut conn = state.store.conn().await?;
        let mut rows = sql::page(&mut conn, &filter, after, limit + 1).await?;
        drop(conn);
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        // Recorded before anything is answered: no row leaves unaudited.
        record_query(
            &state,
            &caller,
            json!({ "query": "audit", "format": format, "filters": filters, "rows": rows.len() }),
        )
        .await?;
        let items: Vec<Value> = rows.iter().map(row_json).collect();
        return Ok(Json(json!({ "items": items, "nextCursor": next_cursor })).into_response());
    }

    // An export is recorded before its first row is read (who asked for
    // what), and what it sent when it ends (`audit.exported`).
    record_query(
        &state,
        &caller,
        json!({ "query": "audit", "format": format, "filters": filters }),
    )
    .await?;
    let csv = format == "csv";
    let export = Export {
        tally: ExportTally {
            reads: state.reads.clone(),
            reader: caller,
            format: if csv { "csv" } else { "ndjson" },
            filters,
            rows: 0,
            complete: false,
        },
        state,
        filter,
        after,
        left: limit,
        first: true,
    };
    // Streamed page by page: a month of rows never sits in memory.
    let pages = stream::unfold(export, move |mut export| async move {
        if export.left == Some(0) {
            return None;
        }
        let size = export.left.map_or(WALK_PAGE, |l| l.min(WALK_PAGE));
        let rows = async {
            let mut conn = export.state.store.conn().await?;
            sql::page(&mut conn, &export.filter, export.after, size).await
        }
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Ends the stream, incomplete.
                export.left = Some(0);
                return Some((Err(std::io::Error::other(e.to_string())), export));
            }
        };
        if rows.is_empty() && !(csv && export.first) {
            export.tally.complete = true;
            // Recorded as it is dropped.
            drop(export);
            return None;
        }
        export.after = rows.last().map_or(export.after, |r| r.seq);
        let chunk = if csv {
            to_csv(&rows, export.first)
        } else {
            let mut out = Vec::new();
            for row in &rows {
                out.extend_from_slice(row_json(row).to_string().as_bytes());
                out.push(b'\n');
            }
            out
        };
        export.tally.rows += rows.len() as u64;
        export.left = export.left.map(|l| l - rows.len() as u32);
        if export.left == Some(0) || rows.len() < size as usize {
            export.left = Some(0);
            export.tally.complete = true;
        }
        export.first = false;
        Some((Ok(chunk), export))
    });
    let content_type = if csv {
        "text/csv; charset=utf-8; header=present"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(pages),
    )
        .into_response())
}

/// A streaming export between its pages.
struct Export {
    state: AppState,
    filter: AuditFilter,
    after: i64,
    /// Rows still to send, when limited.
    left: Option<u32>,
    first: bool,
    tally: ExportTally,
}

/// What an export sent, recorded (`audit.exported`, through the counted
/// reads) when its stream ends or is dropped — also when the client hangs
/// up halfway.
struct ExportTally {
    reads: Reads,
    reader: Identity,
    format: &'static str,
    filters: Value,
    rows: u64,
    complete: bool,
}

impl Drop for ExportTally {
    fn drop(&mut self) {
        self.reads.record(
            &self.reader,
            Read::Export {
                format: self.format,
                filters: std::mem::take(&mut self.filters),
                rows: self.rows,
                complete: self.complete,
            },
        );
    }
}

/// Every audit row of one notification, in order.
pub async fn timeline(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<Reader>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    within_limit(&state, Budget::AuditQueries, &caller)?;
    check_identifier("id", &id)?;
    let trace = crate::notifications::service::get(&state.notifications, &id).await?;
    let filter = AuditFilter {
        notification_id: Some(id.clone()),
        ..AuditFilter::default()
    };
    let mut conn = state.store.conn().await?;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = sql::page(&mut conn, &filter, after, WALK_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page.iter().map(row_json));
        if page.len() < WALK_PAGE as usize {
            break;
        }
    }
    drop(conn);
    record_query(
        &state,
        &caller,
        json!({ "query": "timeline", "notificationId": id, "rows": events.len() }),
    )
    .await?;
    Ok(Json(json!({
        "notificationId": id,
        "state": trace.notification.state,
        "events": events,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    severity: Option<String>,
    group_by: Option<String>,
}

pub async fn acknowledgements(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<AuditorOrAdmin>,
    QueryParams(query): QueryParams<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    within_limit(&state, Budget::AuditQueries, &caller)?;
    let now = Timestamp::now();
    let to = query_time("to", &query.to)?.unwrap_or(now);
    let from = query_time("from", &query.from)?
        .unwrap_or_else(|| Timestamp::from_millis(to.as_millis() - 30 * 86_400_000));
    if from >= to {
        return Err(FieldError::new("from", "must be before `to`").into());
    }
    let severity = query
        .severity
        .as_deref()
        .map(|s| {
            s.parse::<Severity>().map_err(|()| {
                FieldError::new("severity", "must be one of critical, urgent, actionable")
            })
        })
        .transpose()?;
    let group_by = match query.group_by.as_deref() {
        None => GroupBy::Severity,
        Some(text) => GroupBy::parse(text)
            .ok_or_else(|| FieldError::new("groupBy", "must be user, role or severity"))?,
    };
    record_query(
        &state,
        &caller,
        json!({ "query": "report.acknowledgements", "from": from, "to": to, "severity": severity, "groupBy": group_by.as_str() }),
    )
    .await?;
    let report = review::report(&state.store, from, to, severity, group_by).await?;
    Ok(Json(report.to_json()))
}
