//! The figures Prometheus alerts on that live in the database, read when
//! `/metrics` is scraped.
//!
//! Owns: reading open and overdue notifications per severity and the
//! outbox backlog (two aggregate queries per scrape, nothing per raise)
//! and handing them to the metrics, and whether the database answered.
//! Reading at scrape time rather than on a timer keeps them as fresh as
//! the scrape and costs nothing when nobody scrapes.
//! Never: leave a value standing that the database did not just give —
//! when it does not answer in time the values are withdrawn and
//! `readback_database_up` is 0.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::metrics::{Metrics, OpenCounts, OutboxCounts};
use crate::severity::Severity;
use crate::store::{Store, StoreError};
use crate::store::{escalation as escalation_sql, notifications as notifications_sql};

/// Longer than a healthy database needs, well inside Prometheus's default
/// scrape timeout (10 s), so the scrape still answers when it hangs.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The channel the outbox sends through; webhooks will add theirs.
const EMAIL: &str = "email";

/// Reads the figures and sets them on `metrics`; on failure withdraws them
/// and marks the database down.
pub async fn refresh(store: &Store, metrics: &Metrics) {
    let read = tokio::time::timeout(QUERY_TIMEOUT, read(store)).await;
    match read {
        Ok(Ok((open, outbox))) => {
            metrics.database_reachable(true);
            for severity in Severity::ALL {
                let counts = open.iter().find(|(s, _)| *s == severity).map_or(
                    OpenCounts {
                        open: 0,
                        overdue: 0,
                        oldest_age_ms: 0,
                    },
                    |(_, c)| *c,
                );
                metrics.set_open(severity.as_str(), counts);
            }
            metrics.set_outbox(EMAIL, outbox);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the database did not answer");
            metrics.database_reachable(false);
            metrics.database_values_unknown();
        }
        Err(_) => {
            tracing::warn!(timeout = ?QUERY_TIMEOUT, "metrics: the database did not answer in time");
            metrics.database_reachable(false);
            metrics.database_values_unknown();
        }
    }
}

async fn read(store: &Store) -> Result<(Vec<(Severity, OpenCounts)>, OutboxCounts), StoreError> {
    let now = Timestamp::now();
    let mut conn = store.conn().await?;
    let open = notifications_sql::open_summary(&mut conn, now)
        .await?
        .into_iter()
        .filter_map(|row| {
            let severity = row.severity.parse::<Severity>().ok()?;
            Some((
                severity,
                OpenCounts {
                    open: row.open,
                    overdue: row.overdue,
                    oldest_age_ms: row
                        .oldest_created_at
                        .map_or(0, |at| now.millis_since(at).max(0)),
                },
            ))
        })
        .collect();
    let (pending, oldest) = escalation_sql::outbox_summary(&mut conn).await?;
    let outbox = OutboxCounts {
        pending,
        oldest_age_ms: oldest.map_or(0, |at| now.millis_since(at).max(0)),
    };
    Ok((open, outbox))
}
