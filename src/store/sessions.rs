//! SQL for sessions, including the scheduler's once-only claims.
//!
//! A claim is an `UPDATE ... RETURNING` guarded by the row's state, so of
//! several daemons on one database exactly one claims each warning and each
//! expiry (PostgreSQL re-checks the guard after waiting for a concurrent
//! update of the same row; SQLite has a single writer).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::StoreError;
use crate::clock::Timestamp;
use crate::sessions::Session;

const COLUMNS: &str = "id, user_id, state, started_at, last_activity_at, idle_timeout_ms, \
     max_lifetime_ms, warning_before_ms, expires_at, warned_for, ended_at, end_reason";

/// `min(activity + idle, start + max lifetime)`, written portably
/// (`LEAST` is PostgreSQL-only, two-argument `MIN` SQLite-only).
const EXPIRY_AT_ACTIVITY: &str = "(CASE WHEN $1 + idle_timeout_ms < started_at + max_lifetime_ms \
     THEN $1 + idle_timeout_ms ELSE started_at + max_lifetime_ms END)";

/// How many due sessions one tick claims at most; the rest wait a tick.
const CLAIM_BATCH: i64 = 500;

fn from_row(row: &AnyRow) -> Result<Session, sqlx::Error> {
    let time = |name: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row
            .try_get::<Option<i64>, _>(name)?
            .map(Timestamp::from_millis))
    };
    Ok(Session {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        state: row.try_get::<String, _>("state")?.parse().map_err(|()| {
            sqlx::Error::ColumnDecode {
                index: "state".into(),
                source: "unknown session state".into(),
            }
        })?,
        started_at: Timestamp::from_millis(row.try_get("started_at")?),
        last_activity_at: Timestamp::from_millis(row.try_get("last_activity_at")?),
        idle_timeout_ms: row.try_get("idle_timeout_ms")?,
        max_lifetime_ms: row.try_get("max_lifetime_ms")?,
        warning_before_ms: row.try_get("warning_before_ms")?,
        expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
        warned_for: time("warned_for")?,
        ended_at: time("ended_at")?,
        end_reason: row.try_get("end_reason")?,
    })
}

/// Inserts a new active session; `false` when the id already exists.
pub async fn insert(
    conn: &mut AnyConnection,
    session: &Session,
    next_due_at: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO sessions (id, user_id, state, started_at, last_activity_at, idle_timeout_ms, \
         max_lifetime_ms, warning_before_ms, expires_at, warned_for, next_due_at) \
         VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, NULL, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&session.id)
    .bind(&session.user_id)
    .bind(session.started_at.as_millis())
    .bind(session.last_activity_at.as_millis())
    .bind(session.idle_timeout_ms)
    .bind(session.max_lifetime_ms)
    .bind(session.warning_before_ms)
    .bind(session.expires_at.as_millis())
    .bind(next_due_at.as_millis())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn find(conn: &mut AnyConnection, id: &str) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sessions WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// Active sessions, soonest expiry first; of one user when `user_id` is set.
pub async fn list_active(
    conn: &mut AnyConnection,
    user_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Session>, StoreError> {
    let filter = if user_id.is_some() {
        "AND user_id = $2"
    } else {
        ""
    };
    let mut query = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sessions WHERE state = 'active' {filter} \
         ORDER BY expires_at, id LIMIT $1"
    )))
    .bind(limit);
    if let Some(user) = user_id {
        query = query.bind(user);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Records activity at `at`: moves the expiry (within the maximum
/// lifetime) and the next due time. Returns the new expiry, or `None` when
/// the session is not active (or already has later activity).
pub async fn touch(
    conn: &mut AnyConnection,
    id: &str,
    at: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let sql = format!(
        "UPDATE sessions SET last_activity_at = $1, expires_at = {EXPIRY_AT_ACTIVITY}, \
         next_due_at = CASE WHEN warned_for = {EXPIRY_AT_ACTIVITY} THEN {EXPIRY_AT_ACTIVITY} \
                            ELSE {EXPIRY_AT_ACTIVITY} - warning_before_ms END \
         WHERE id = $2 AND state = 'active' AND last_activity_at < $1 RETURNING expires_at"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(at.as_millis())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64, _>("expires_at"))
        .transpose()?
        .map(Timestamp::from_millis))
}

/// Replaces the timing rules of an active session (re-registration).
pub async fn update_policy(
    conn: &mut AnyConnection,
    session: &Session,
    next_due_at: Timestamp,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE sessions SET idle_timeout_ms = $1, max_lifetime_ms = $2, warning_before_ms = $3, \
         expires_at = $4, next_due_at = $5 WHERE id = $6 AND state = 'active'",
    )
    .bind(session.idle_timeout_ms)
    .bind(session.max_lifetime_ms)
    .bind(session.warning_before_ms)
    .bind(session.expires_at.as_millis())
    .bind(next_due_at.as_millis())
    .bind(&session.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Ends an active session now with `reason`; `false` if it was not active.
pub async fn end(
    conn: &mut AnyConnection,
    id: &str,
    reason: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let state = if reason == "terminated" {
        "terminated"
    } else {
        "expired"
    };
    let updated = sqlx::query(
        "UPDATE sessions SET state = $1, end_reason = $2, ended_at = $3 WHERE id = $4 AND state = 'active'",
    )
    .bind(state)
    .bind(reason)
    .bind(at.as_millis())
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A session the scheduler claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub user_id: String,
    pub expires_at: Timestamp,
    /// For expiries: `idle` or `max_lifetime`.
    pub reason: Option<String>,
}

fn claimed(row: &AnyRow, with_reason: bool) -> Result<Claimed, sqlx::Error> {
    Ok(Claimed {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
        reason: if with_reason {
            row.try_get("end_reason")?
        } else {
            None
        },
    })
}

/// The claim of due expiries: `$1` is the due time, `$2` now. Public so
/// the scheduler benchmark can show its query plan.
pub fn claim_expired_sql() -> String {
    format!(
        "UPDATE sessions SET state = 'expired', ended_at = $2, \
           end_reason = CASE WHEN expires_at >= started_at + max_lifetime_ms THEN 'max_lifetime' ELSE 'idle' END \
         WHERE state = 'active' AND next_due_at <= $1 AND expires_at <= $1 AND id IN ( \
           SELECT id FROM sessions WHERE state = 'active' AND next_due_at <= $1 AND expires_at <= $1 \
           ORDER BY next_due_at LIMIT {CLAIM_BATCH}) \
         RETURNING id, user_id, expires_at, end_reason"
    )
}

/// The claim of due warnings: `$1` is the due time.
pub fn claim_warnings_sql() -> String {
    format!(
        "UPDATE sessions SET warned_for = expires_at, next_due_at = expires_at \
         WHERE state = 'active' AND next_due_at <= $1 AND expires_at > $1 \
           AND (warned_for IS NULL OR warned_for <> expires_at) AND id IN ( \
           SELECT id FROM sessions WHERE state = 'active' AND next_due_at <= $1 AND expires_at > $1 \
           ORDER BY next_due_at LIMIT {CLAIM_BATCH}) \
         RETURNING id, user_id, expires_at"
    )
}

/// Claims active sessions whose expiry is at or before `due`, ending them.
pub async fn claim_expired(
    conn: &mut AnyConnection,
    due: Timestamp,
    now: Timestamp,
) -> Result<Vec<Claimed>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(claim_expired_sql()))
        .bind(due.as_millis())
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| claimed(r, true))
        .collect::<Result<_, _>>()?)
}

/// Claims active sessions whose warning time is at or before `due` and
/// that have not been warned for their current expiry.
pub async fn claim_warnings(
    conn: &mut AnyConnection,
    due: Timestamp,
) -> Result<Vec<Claimed>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(claim_warnings_sql()))
        .bind(due.as_millis())
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| claimed(r, false))
        .collect::<Result<_, _>>()?)
}
