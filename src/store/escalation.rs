//! SQL for escalation steps, the email outbox and the user directory.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{StoreError, placeholders};
use crate::clock::Timestamp;
use crate::escalation::PlannedStep;

/// How many due steps one pass claims at most.
const BATCH: i64 = 100;

/// Writes a notification's planned steps (in its raise transaction).
pub async fn insert_steps(
    conn: &mut AnyConnection,
    notification_id: &str,
    steps: &[PlannedStep],
) -> Result<(), StoreError> {
    for step in steps {
        let targets = serde_json::to_string(&step.targets).expect("serializable");
        let (every, left) = match step.repeat {
            Some((every, left)) => (
                Some(i64::try_from(every.as_millis()).unwrap_or(i64::MAX)),
                Some(i64::from(left)),
            ),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO escalation_steps (notification_id, level, due_at, targets, state, repeat_every_ms, repeats_left) \
             VALUES ($1, $2, $3, $4, 'scheduled', $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(notification_id)
        .bind(i64::from(step.level))
        .bind(step.due_at.as_millis())
        .bind(targets)
        .bind(every)
        .bind(left)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A step the scheduler claimed.
#[derive(Debug, Clone)]
pub struct DueStep {
    pub seq: i64,
    pub notification_id: String,
    pub level: u32,
    pub due_at: Timestamp,
    pub targets: Vec<String>,
    pub repeat_every_ms: Option<i64>,
    pub repeats_left: Option<i64>,
}

fn due_step(row: &AnyRow) -> Result<DueStep, sqlx::Error> {
    let targets: String = row.try_get("targets")?;
    Ok(DueStep {
        seq: row.try_get("seq")?,
        notification_id: row.try_get("notification_id")?,
        level: row.try_get::<i64, _>("level")? as u32,
        due_at: Timestamp::from_millis(row.try_get("due_at")?),
        targets: serde_json::from_str(&targets).map_err(|e| sqlx::Error::ColumnDecode {
            index: "targets".into(),
            source: Box::new(e),
        })?,
        repeat_every_ms: row.try_get("repeat_every_ms")?,
        repeats_left: row.try_get("repeats_left")?,
    })
}

/// Claims scheduled steps due at or before `now` (once-only: guarded by
/// `state = 'scheduled'`).
pub async fn claim_due_steps(
    conn: &mut AnyConnection,
    now: Timestamp,
) -> Result<Vec<DueStep>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "UPDATE escalation_steps SET state = 'fired', fired_at = $1 \
         WHERE state = 'scheduled' AND due_at <= $1 AND seq IN ( \
           SELECT seq FROM escalation_steps WHERE state = 'scheduled' AND due_at <= $1 \
           ORDER BY due_at LIMIT {BATCH}) \
         RETURNING seq, notification_id, level, due_at, targets, repeat_every_ms, repeats_left"
    )))
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let mut steps = rows.iter().map(due_step).collect::<Result<Vec<_>, _>>()?;
    steps.sort_by_key(|s| (s.due_at, s.seq));
    Ok(steps)
}

/// Moves a notification's scheduled steps `by_ms` earlier; returns how many
/// moved.
pub async fn bring_forward(
    conn: &mut AnyConnection,
    notification_id: &str,
    by_ms: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE escalation_steps SET due_at = due_at - $2 \
         WHERE notification_id = $1 AND state = 'scheduled'",
    )
    .bind(notification_id)
    .bind(by_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Marks a claimed step as not sent because its notification was closed.
pub async fn stop_step(conn: &mut AnyConnection, seq: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE escalation_steps SET state = 'stopped' WHERE seq = $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn set_step_addresses(
    conn: &mut AnyConnection,
    seq: i64,
    addresses: &[String],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE escalation_steps SET addresses = $1 WHERE seq = $2")
        .bind(serde_json::to_string(addresses).expect("serializable"))
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A fired step, for the notification's trace.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FiredStep {
    pub level: u32,
    pub due_at: Timestamp,
    pub escalated_at: Timestamp,
    pub addresses: Vec<String>,
}

pub async fn fired_steps(
    conn: &mut AnyConnection,
    notification_id: &str,
) -> Result<Vec<FiredStep>, StoreError> {
    let rows = sqlx::query(
        "SELECT level, due_at, fired_at, addresses FROM escalation_steps \
         WHERE notification_id = $1 AND state = 'fired' ORDER BY level",
    )
    .bind(notification_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let addresses: Option<String> = row.try_get("addresses")?;
            Ok(FiredStep {
                level: row.try_get::<i64, _>("level")? as u32,
                due_at: Timestamp::from_millis(row.try_get("due_at")?),
                escalated_at: Timestamp::from_millis(
                    row.try_get::<Option<i64>, _>("fired_at")?.unwrap_or(0),
                ),
                addresses: addresses
                    .and_then(|a| serde_json::from_str(&a).ok())
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// One email waiting in (or sent from) the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEmail {
    pub seq: i64,
    pub step_seq: i64,
    pub notification_id: String,
    pub level: u32,
    pub address: String,
    pub message_id: String,
    pub subject: String,
    pub body: String,
    pub attempts: u32,
}

/// Queues an email; a second insert for the same step and address is ignored.
pub async fn enqueue(
    conn: &mut AnyConnection,
    email: &OutboxEmail,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO email_outbox (step_seq, notification_id, level, address, message_id, subject, body, \
         state, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8) ON CONFLICT DO NOTHING",
    )
    .bind(email.step_seq)
    .bind(&email.notification_id)
    .bind(i64::from(email.level))
    .bind(&email.address)
    .bind(&email.message_id)
    .bind(&email.subject)
    .bind(&email.body)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Claims the oldest email that is due (or whose sender's lease ran out),
/// leasing it until `lease_until` and counting the attempt. One at a time,
/// so a lease only has to outlast one SMTP conversation.
pub async fn claim_email(
    conn: &mut AnyConnection,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<Option<OutboxEmail>, StoreError> {
    let due = "((state = 'pending' AND next_attempt_at <= $1) OR (state = 'sending' AND lease_until <= $1))";
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE email_outbox SET state = 'sending', lease_until = $2, attempts = attempts + 1 \
         WHERE {due} AND seq IN (SELECT seq FROM email_outbox WHERE {due} ORDER BY seq LIMIT 1) \
         RETURNING seq, step_seq, notification_id, level, address, message_id, subject, body, attempts"
    )))
    .bind(now.as_millis())
    .bind(lease_until.as_millis())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(OutboxEmail {
        seq: row.try_get("seq")?,
        step_seq: row.try_get("step_seq")?,
        notification_id: row.try_get("notification_id")?,
        level: row.try_get::<i64, _>("level")? as u32,
        address: row.try_get("address")?,
        message_id: row.try_get("message_id")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
    }))
}

/// Records the outcome of one attempt: `sent`, `failed` (given up),
/// `skipped` (notification closed meanwhile), or `pending` again with the
/// next attempt time.
pub async fn settle(
    conn: &mut AnyConnection,
    seq: i64,
    state: &str,
    next_attempt_at: Timestamp,
    error: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE email_outbox SET state = $1, next_attempt_at = $2, last_error = $3, lease_until = NULL, \
         sent_at = CASE WHEN $1 = 'sent' THEN $4 ELSE sent_at END WHERE seq = $5",
    )
    .bind(state)
    .bind(next_attempt_at.as_millis())
    .bind(error)
    .bind(now.as_millis())
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Emails of a notification, for its trace.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailStatus {
    pub level: u32,
    pub address: String,
    pub state: String,
    pub attempts: u32,
    pub sent_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

pub async fn emails_for(
    conn: &mut AnyConnection,
    notification_id: &str,
) -> Result<Vec<EmailStatus>, StoreError> {
    let rows = sqlx::query(
        "SELECT level, address, state, attempts, sent_at, last_error FROM email_outbox \
         WHERE notification_id = $1 ORDER BY seq",
    )
    .bind(notification_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(EmailStatus {
                level: row.try_get::<i64, _>("level")? as u32,
                address: row.try_get("address")?,
                state: row.try_get("state")?,
                attempts: row.try_get::<i64, _>("attempts")? as u32,
                sent_at: row
                    .try_get::<Option<i64>, _>("sent_at")?
                    .map(Timestamp::from_millis),
                last_error: row.try_get("last_error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Remembers a user's e-mail, name and roles (from a verified token).
pub async fn remember_user(
    conn: &mut AnyConnection,
    user_id: &str,
    email: Option<&str>,
    name: Option<&str>,
    roles: &[String],
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO directory_users (user_id, email, name, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET email = COALESCE(excluded.email, directory_users.email), \
         name = COALESCE(excluded.name, directory_users.name), updated_at = excluded.updated_at",
    )
    .bind(user_id)
    .bind(email)
    .bind(name)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    for role in roles {
        sqlx::query(
            "INSERT INTO directory_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(role)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Known e-mails of a user, or of every known holder of any of `roles`.
pub async fn emails_of(
    conn: &mut AnyConnection,
    user_id: Option<&str>,
    roles: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows = match user_id {
        Some(user) => {
            sqlx::query(
                "SELECT email FROM directory_users WHERE user_id = $1 AND email IS NOT NULL",
            )
            .bind(user)
            .fetch_all(&mut *conn)
            .await?
        }
        None if roles.is_empty() => Vec::new(),
        None => {
            let sql = format!(
                "SELECT DISTINCT u.email FROM directory_users u JOIN directory_roles r ON r.user_id = u.user_id \
                 WHERE r.role IN ({}) AND u.email IS NOT NULL ORDER BY u.email",
                placeholders(1, roles.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for role in roles {
                query = query.bind(role);
            }
            query.fetch_all(&mut *conn).await?
        }
    };
    Ok(rows
        .iter()
        .map(|row| row.try_get::<String, _>("email"))
        .collect::<Result<_, _>>()?)
}

/// Emails waiting in the outbox (pending, or leased to a sender) and when
/// the oldest of them was queued, for the metrics: one aggregate over the
/// rows the `email_outbox_pending` index holds.
pub async fn outbox_summary(
    conn: &mut AnyConnection,
) -> Result<(i64, Option<Timestamp>), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest FROM email_outbox \
         WHERE state IN ('pending', 'sending')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((
        row.try_get("pending")?,
        row.try_get::<Option<i64>, _>("oldest")?
            .map(Timestamp::from_millis),
    ))
}

/// One outbox row as an operator looks at it (`readbackd outbox list`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRow {
    pub seq: i64,
    pub notification_id: String,
    /// readback's reference of the notification (`RB-…`), when it exists.
    pub reference: Option<String>,
    pub level: u32,
    pub address: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub created_at: Timestamp,
    pub last_error: Option<String>,
}

/// Outbox rows in the given states (all rows when `states` is empty),
/// oldest first, at most `limit`.
pub async fn outbox_rows(
    conn: &mut AnyConnection,
    states: &[&str],
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let filter = if states.is_empty() {
        String::new()
    } else {
        format!("WHERE o.state IN ({})", placeholders(2, states.len()))
    };
    let mut query = sqlx::query(AssertSqlSafe(format!(
        "SELECT o.seq, o.notification_id, n.seq AS reference, o.level, o.address, o.state, o.attempts, \
         o.next_attempt_at, o.created_at, o.last_error \
         FROM email_outbox o LEFT JOIN notifications n ON n.id = o.notification_id \
         {filter} ORDER BY o.seq LIMIT $1"
    )))
    .bind(limit);
    for state in states {
        query = query.bind(*state);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxRow {
                seq: row.try_get("seq")?,
                notification_id: row.try_get("notification_id")?,
                reference: row
                    .try_get::<Option<i64>, _>("reference")?
                    .map(|seq| crate::notifications::Reference(seq).to_string()),
                level: row.try_get::<i64, _>("level")? as u32,
                address: row.try_get("address")?,
                state: row.try_get("state")?,
                attempts: row.try_get::<i64, _>("attempts")? as u32,
                next_attempt_at: Timestamp::from_millis(row.try_get("next_attempt_at")?),
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                last_error: row.try_get("last_error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Makes failed or waiting emails due now with a fresh count of attempts:
/// the rows named by `seqs`, or every `failed` one when `seqs` is empty.
/// Rows sent, skipped or being sent are left alone. Returns the rows
/// changed.
pub async fn retry_emails(
    conn: &mut AnyConnection,
    seqs: &[i64],
    now: Timestamp,
) -> Result<Vec<OutboxRow>, StoreError> {
    let which = if seqs.is_empty() {
        "state = 'failed'".to_string()
    } else {
        format!(
            "state IN ('failed', 'pending') AND seq IN ({})",
            placeholders(2, seqs.len())
        )
    };
    let mut query = sqlx::query(AssertSqlSafe(format!(
        "UPDATE email_outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_until = NULL \
         WHERE {which} RETURNING seq"
    )))
    .bind(now.as_millis());
    for seq in seqs {
        query = query.bind(*seq);
    }
    let changed: Vec<i64> = query
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get("seq"))
        .collect::<Result<_, _>>()?;
    let mut rows = outbox_rows(conn, &["pending"], i64::MAX).await?;
    rows.retain(|row| changed.contains(&row.seq));
    Ok(rows)
}
