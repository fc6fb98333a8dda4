//! SQL for the append-only, hash-chained audit log.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Store, StoreError};
use crate::audit::{AuditEvent, AuditRow};
use crate::clock::Timestamp;

const COLUMNS_PER_ROW: usize = 14;
/// Well under both databases' limits on bound parameters per statement.
const ROWS_PER_INSERT: usize = 64;

/// Appends rows at the end of the chain. Call it last in a transaction,
/// just before commit: taking the chain head is the transaction's final
/// lock, so appenders queue on it and never deadlock with each other.
pub async fn append_all(
    conn: &mut AnyConnection,
    events: Vec<AuditEvent>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    // A no-op UPDATE takes the head's row lock (PostgreSQL) before reading
    // it, so concurrent appenders get consecutive positions; SQLite's write
    // transactions are already serial. The head itself moves only once the
    // rows exist: the database lets it point at nothing but the last row.
    let head =
        sqlx::query("UPDATE audit_chain_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *conn)
            .await?;
    let first = head.try_get::<i64, _>("seq")? + 1;
    let mut prev: String = head.try_get("hash")?;
    let mut rows = Vec::with_capacity(events.len());
    for (offset, event) in events.into_iter().enumerate() {
        let row = event.into_row(first + offset as i64, &prev);
        prev = row.hash.clone();
        rows.push(row);
    }
    // Several rows per INSERT: one round trip for a batch, not one per row.
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = i * COLUMNS_PER_ROW;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8,
                    p + 9,
                    p + 10,
                    p + 11,
                    p + 12,
                    p + 13,
                    p + 14
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_log (seq, at, action, actor_id, actor_role, notification_id, session_id, \
             user_id, patient_id, study_id, outcome, detail, prev_hash, hash) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.seq)
                .bind(row.at.as_millis())
                .bind(&row.action)
                .bind(row.actor_id.as_deref())
                .bind(row.actor_role.as_deref())
                .bind(row.notification_id.as_deref())
                .bind(row.session_id.as_deref())
                .bind(row.user_id.as_deref())
                .bind(row.patient_id.as_deref())
                .bind(row.study_id.as_deref())
                .bind(&row.outcome)
                .bind(&row.detail)
                .bind(&row.prev_hash)
                .bind(&row.hash);
        }
        query.execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(first + rows.len() as i64 - 1)
        .bind(&prev)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Appends one row (see [`append_all`]: call it last in the transaction).
pub async fn append(conn: &mut AnyConnection, event: &AuditEvent) -> Result<(), StoreError> {
    append_all(conn, vec![event.clone()]).await
}

/// Appends rows in a transaction of their own, for events that change
/// nothing else (refusals, actions on sockets, queries of the log).
pub async fn append_alone(store: &Store, event: &AuditEvent) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(())
}

const COLUMNS: &str = "seq, at, action, actor_id, actor_role, notification_id, session_id, user_id, \
     patient_id, study_id, outcome, detail, prev_hash, hash";

fn from_row(row: &AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        seq: row.try_get("seq")?,
        at: Timestamp::from_millis(row.try_get("at")?),
        action: row.try_get("action")?,
        actor_id: row.try_get("actor_id")?,
        actor_role: row.try_get("actor_role")?,
        notification_id: row.try_get("notification_id")?,
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
        patient_id: row.try_get("patient_id")?,
        study_id: row.try_get("study_id")?,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Filters of `GET /api/v1/audit`, all optional, combined with AND. Every
/// value is a bound parameter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub user_id: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub notification_id: Option<String>,
    pub action: Option<String>,
}

/// Rows after `after_seq` matching `filter`, oldest first.
pub async fn page(
    conn: &mut AnyConnection,
    filter: &AuditFilter,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut clauses = vec!["seq > $1".to_string()];
    let mut texts: Vec<&str> = Vec::new();
    let mut times: Vec<i64> = Vec::new();
    // Parameters: $1 seq, then times, then texts, numbered as they come.
    let mut next = 2;
    for (column, value) in [("at >=", filter.from), ("at <", filter.to)] {
        if let Some(time) = value {
            clauses.push(format!("{column} ${next}"));
            times.push(time.as_millis());
            next += 1;
        }
    }
    for (column, value) in [
        ("user_id", &filter.user_id),
        ("patient_id", &filter.patient_id),
        ("study_id", &filter.study_id),
        ("notification_id", &filter.notification_id),
        ("action", &filter.action),
    ] {
        if let Some(text) = value {
            clauses.push(format!("{column} = ${next}"));
            texts.push(text);
            next += 1;
        }
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE {} ORDER BY seq LIMIT {limit}",
        clauses.join(" AND ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after_seq);
    for time in times {
        query = query.bind(time);
    }
    for text in texts {
        query = query.bind(text.to_string());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// The chain head: the last position and its hash.
pub async fn head(conn: &mut AnyConnection) -> Result<(i64, String), StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("hash")?))
}

/// Rows per read when walking the whole log (verify, exports): each read
/// stays short on a busy database and memory stays constant.
pub const WALK_PAGE: u32 = 10_000;
