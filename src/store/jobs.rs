//! SQL for the calendar jobs: the claim of one firing (a `job_runs` row
//! keyed by job and slot) and what the retention job deletes.
//!
//! Never: delete from `audit_log` or `audit_chain_head` (their triggers
//! refuse it too), nor a notification or anything recorded about one
//! (acknowledgements, deliveries, escalation steps): `audit verify` checks
//! each finding against its `notification.raised` row, and a finding's
//! timeline is part of the medical record.

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::StoreError;
use crate::clock::Timestamp;

/// Claims `(job, slot)` for `by` until `lease_until`: inserts the row, or
/// takes over one whose claimant never finished and whose lease ran out.
/// Returns the attempt number, or `None` when the slot is finished or
/// another daemon holds it. One statement, so two daemons racing for a
/// slot cannot both win.
pub async fn claim(
    conn: &mut AnyConnection,
    job: &str,
    slot: Timestamp,
    by: &str,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query(
        "INSERT INTO job_runs (job, slot, claimed_by, claimed_at, lease_until, attempts) \
         VALUES ($1, $2, $3, $4, $5, 1) \
         ON CONFLICT (job, slot) DO UPDATE SET claimed_by = excluded.claimed_by, \
           claimed_at = excluded.claimed_at, lease_until = excluded.lease_until, \
           attempts = job_runs.attempts + 1 \
         WHERE job_runs.finished_at IS NULL AND job_runs.lease_until < excluded.claimed_at \
         RETURNING attempts",
    )
    .bind(job)
    .bind(slot.as_millis())
    .bind(by)
    .bind(now.as_millis())
    .bind(lease_until.as_millis())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
}

/// Records how the claimed run ended (only the claimant's own claim).
pub async fn finish(
    conn: &mut AnyConnection,
    job: &str,
    slot: Timestamp,
    by: &str,
    now: Timestamp,
    outcome: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE job_runs SET finished_at = $4, outcome = $5, detail = $6 \
         WHERE job = $1 AND slot = $2 AND claimed_by = $3",
    )
    .bind(job)
    .bind(slot.as_millis())
    .bind(by)
    .bind(now.as_millis())
    .bind(outcome)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Claims whose daemon never finished them and whose lease has run out
/// at `now`: (job, slot), oldest first.
pub async fn expired_claims(
    conn: &mut AnyConnection,
    now: Timestamp,
) -> Result<Vec<(String, Timestamp)>, StoreError> {
    let rows = sqlx::query(
        "SELECT job, slot FROM job_runs WHERE finished_at IS NULL AND lease_until < $1 \
         ORDER BY slot",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, Timestamp::from_millis(r.try_get(1)?))))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The latest slot of `job` that any daemon claimed, if any.
pub async fn latest_slot(
    conn: &mut AnyConnection,
    job: &str,
) -> Result<Option<Timestamp>, StoreError> {
    let row = sqlx::query("SELECT MAX(slot) FROM job_runs WHERE job = $1")
        .bind(job)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row
        .try_get::<Option<i64>, _>(0)?
        .map(Timestamp::from_millis))
}

/// When `job` last finished `ok`, and how its latest finished run ended.
pub async fn last_outcomes(
    conn: &mut AnyConnection,
    job: &str,
) -> Result<(Option<Timestamp>, Option<String>), StoreError> {
    let last_ok =
        sqlx::query("SELECT MAX(finished_at) FROM job_runs WHERE job = $1 AND outcome = 'ok'")
            .bind(job)
            .fetch_one(&mut *conn)
            .await?
            .try_get::<Option<i64>, _>(0)?
            .map(Timestamp::from_millis);
    let latest = sqlx::query(
        "SELECT outcome FROM job_runs WHERE job = $1 AND finished_at IS NOT NULL \
         ORDER BY finished_at DESC LIMIT 1",
    )
    .bind(job)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| r.try_get::<String, _>(0))
    .transpose()?;
    Ok((last_ok, latest))
}

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Purged {
    pub sessions: u64,
    pub outbox: u64,
    pub revocations: u64,
    pub job_runs: u64,
}

/// Deletes, in one transaction's connection, rows that are settled and
/// older than `before`: ended sessions, outbox emails sent, failed or
/// skipped, revocations that have run out, and finished job runs (the
/// latest of each job stays: start-up catch-up needs it).
pub async fn purge(conn: &mut AnyConnection, before: Timestamp) -> Result<Purged, StoreError> {
    Ok(Purged {
        sessions: delete(
            conn,
            before,
            "DELETE FROM sessions WHERE state <> 'active' AND ended_at < $1",
        )
        .await?,
        outbox: delete(
            conn,
            before,
            "DELETE FROM email_outbox WHERE state IN ('sent', 'failed', 'skipped') \
             AND COALESCE(sent_at, next_attempt_at) < $1",
        )
        .await?,
        revocations: delete(conn, before, "DELETE FROM revocations WHERE until < $1").await?,
        job_runs: delete(
            conn,
            before,
            "DELETE FROM job_runs WHERE finished_at IS NOT NULL AND slot < $1 \
             AND slot < (SELECT MAX(j.slot) FROM job_runs j WHERE j.job = job_runs.job)",
        )
        .await?,
    })
}

async fn delete(
    conn: &mut AnyConnection,
    before: Timestamp,
    sql: &'static str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(AssertSqlSafe(sql))
        .bind(before.as_millis())
        .execute(&mut *conn)
        .await?
        .rows_affected())
}
