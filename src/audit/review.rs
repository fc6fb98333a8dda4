//! What reviewers do with the log: read it, export it, verify it, and the
//! time-to-acknowledge report.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{AuditRow, ChainCheck, Tamper, dicom_event};
use crate::clock::Timestamp;
use crate::notifications::Severity;
use crate::store::audit::{self as sql, AuditFilter, WALK_PAGE};
use crate::store::reports::{self, GroupBy, ReportRow};
use crate::store::{Store, StoreError};

/// A row as the API shows it: `detail` as JSON, plus the DICOM codes.
pub fn row_json(row: &AuditRow) -> Value {
    let mut value = serde_json::to_value(row).expect("serializable");
    value["detail"] =
        serde_json::from_str(&row.detail).unwrap_or(Value::String(row.detail.clone()));
    if let Some((event_id, event_type)) = dicom_event(&row.action) {
        value["dicom"] = json!({ "eventId": event_id, "eventTypeCode": event_type });
    }
    value
}

pub const CSV_HEADER: [&str; 14] = [
    "seq",
    "at",
    "action",
    "actorId",
    "actorRole",
    "notificationId",
    "sessionId",
    "userId",
    "patientId",
    "studyId",
    "outcome",
    "detail",
    "prevHash",
    "hash",
];

/// One row as CSV fields, in [`CSV_HEADER`] order.
pub fn csv_fields(row: &AuditRow) -> [String; 14] {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        row.seq.to_string(),
        row.at.to_string(),
        row.action.clone(),
        text(&row.actor_id),
        text(&row.actor_role),
        text(&row.notification_id),
        text(&row.session_id),
        text(&row.user_id),
        text(&row.patient_id),
        text(&row.study_id),
        row.outcome.clone(),
        row.detail.clone(),
        row.prev_hash.clone(),
        row.hash.clone(),
    ]
}

/// Encodes rows as RFC 4180 CSV (with the header when `header`).
pub fn to_csv(rows: &[AuditRow], header: bool) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    if header {
        writer.write_record(CSV_HEADER).expect("writing to memory");
    }
    for row in rows {
        writer
            .write_record(csv_fields(row))
            .expect("writing to memory");
    }
    writer.into_inner().expect("flushing to memory")
}

/// Result of walking the whole chain.
#[derive(Debug)]
pub struct Verified {
    pub rows: u64,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tampering detected: {0}")]
    Tamper(#[from] Tamper),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Walks the log from the first row to the chain head, page by page, and
/// reports the first row that was changed, deleted or inserted out of order.
pub async fn verify(store: &Store) -> Result<Verified, VerifyError> {
    let started = Instant::now();
    let mut conn = store.conn().await?;
    // The head first: rows appended while we walk are after it and not
    // checked this time.
    let (head_seq, head_hash) = sql::head(&mut conn).await?;
    let mut check = ChainCheck::default();
    let mut after = 0;
    loop {
        let page = sql::page(&mut conn, &AuditFilter::default(), after, WALK_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page.iter().take_while(|r| r.seq <= head_seq) {
            check.check(row)?;
        }
        if after >= head_seq {
            break;
        }
    }
    check.finish(head_seq, &head_hash)?;
    Ok(Verified {
        rows: check.rows,
        took: started.elapsed(),
    })
}

/// The report's answer.
#[derive(Debug, Clone)]
pub struct Report {
    pub from: Timestamp,
    pub to: Timestamp,
    pub severity: Option<Severity>,
    pub group_by: GroupBy,
    pub rows: Vec<ReportRow>,
}

pub async fn report(
    store: &Store,
    from: Timestamp,
    to: Timestamp,
    severity: Option<Severity>,
    group_by: GroupBy,
) -> Result<Report, StoreError> {
    let mut conn = store.conn().await?;
    let rows = reports::acknowledgements(&mut conn, from, to, severity, group_by).await?;
    Ok(Report {
        from,
        to,
        severity,
        group_by,
        rows,
    })
}

impl Report {
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "count": r.count,
                    "acknowledged": r.acknowledged,
                    "acknowledgedWithinDeadline": r.within_deadline,
                    "acknowledgedWithinDeadlinePercent": percent(r.within_deadline, r.count),
                    "medianTimeToAcknowledge": r.median_ms,
                    "p90TimeToAcknowledge": r.p90_ms,
                    "stillOpen": r.still_open,
                    "escalated": r.escalated,
                })
            })
            .collect();
        json!({
            "from": self.from,
            "to": self.to,
            "severity": self.severity,
            "groupBy": self.group_by.as_str(),
            "rows": rows,
        })
    }

    /// A fixed-width table for the terminal.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "acknowledgements {} .. {}{} by {}\n\n{:<28} {:>6} {:>6} {:>14} {:>10} {:>10} {:>6} {:>9}\n",
            self.from,
            self.to,
            self.severity
                .map(|s| format!(", severity {s}"))
                .unwrap_or_default(),
            self.group_by.as_str(),
            "group",
            "count",
            "acked",
            "within (%)",
            "median",
            "p90",
            "open",
            "escalated"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<28} {:>6} {:>6} {:>6} ({:>5.1}) {:>10} {:>10} {:>6} {:>9}\n",
                r.group,
                r.count,
                r.acknowledged,
                r.within_deadline,
                percent(r.within_deadline, r.count).unwrap_or(0.0),
                r.median_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                r.p90_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                r.still_open,
                r.escalated,
            ));
        }
        out
    }
}

fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 * 1000.0 / whole as f64).round() / 10.0)
}

fn human_ms(ms: i64) -> String {
    let secs = ms as f64 / 1000.0;
    if secs < 120.0 {
        format!("{secs:.1}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}
