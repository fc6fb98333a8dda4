//! `audit verify` over a million-row log, and the acknowledgement report
//! over 100,000 notifications, on SQLite and (when
//! `READBACK_TEST_POSTGRES_URL` is set; `scripts/bench.sh` starts one)
//! PostgreSQL. Prints the figures and writes `docs/bench-audit.md`.

use std::fmt::Write as _;
use std::time::Instant;

use readback::audit::review;
use readback::audit::{Action, AuditEvent, GENESIS_HASH};
use readback::clock::Timestamp;
use readback::store::Store;
use readback::store::reports::GroupBy;
use sqlx::{AssertSqlSafe, Executor};

#[path = "support/mod.rs"]
mod support;

const AUDIT_ROWS: i64 = 1_000_000;
const NOTIFICATIONS: i64 = 100_000;

struct Figures {
    database: &'static str,
    fill_secs: f64,
    verify_secs: f64,
    verified_rows: u64,
    report_secs: Vec<(&'static str, f64)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut all = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    all.push(
        measure(
            "SQLite",
            &format!("sqlite://{}/audit.db", dir.path().display()),
        )
        .await,
    );
    if let Ok(admin) = std::env::var("READBACK_TEST_POSTGRES_URL") {
        let url = support::fresh_postgres_database(&admin, "readback_bench_audit").await;
        all.push(measure("PostgreSQL", &url).await);
    }
    let report = render(&all);
    println!("{report}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench-audit.md");
    std::fs::write(path, report).expect("write docs/bench-audit.md");
    println!("written to {path}");
}

async fn measure(database: &'static str, url: &str) -> Figures {
    let store = support::open_store(url).await;
    let started = Instant::now();
    fill_audit(&store).await;
    fill_notifications(&store).await;
    let fill_secs = started.elapsed().as_secs_f64();
    eprintln!("{database}: filled in {fill_secs:.1}s");

    let verified = review::verify(&store, &[])
        .await
        .expect("an untouched log verifies");
    let mut report_secs = Vec::new();
    for group_by in [GroupBy::Severity, GroupBy::User, GroupBy::Role] {
        let started = Instant::now();
        let report = review::report(
            &store,
            Timestamp::from_millis(0),
            Timestamp::now().plus(std::time::Duration::from_secs(3600)),
            None,
            group_by,
        )
        .await
        .expect("report");
        assert!(!report.rows.is_empty());
        report_secs.push((group_by.as_str(), started.elapsed().as_secs_f64()));
    }
    store.close().await;
    Figures {
        database,
        fill_secs,
        verify_secs: verified.took.as_secs_f64(),
        verified_rows: verified.rows,
        report_secs,
    }
}

/// A million chained rows, written in batches as the daemon would have.
async fn fill_audit(store: &Store) {
    let start = Timestamp::now().as_millis() - AUDIT_ROWS;
    let mut prev = GENESIS_HASH.to_string();
    let mut seq = 0i64;
    while seq < AUDIT_ROWS {
        let mut tx = store.begin().await.expect("begin");
        let mut values = Vec::new();
        for _ in 0..500 {
            seq += 1;
            let mut event = AuditEvent::new(
                Action::NotificationDelivered,
                Timestamp::from_millis(start + seq),
            )
            .by_system()
            .user(format!("user-{}", seq % 500))
            .detail(serde_json::json!({ "socketId": format!("sock-{seq}") }));
            event.notification_id = Some(format!("ntf-{}", seq % NOTIFICATIONS));
            let row = event.into_row(seq, &prev);
            values.push(format!(
                "({}, {}, '{}', 'readbackd', 'system', '{}', NULL, '{}', NULL, NULL, '{}', '{}', '{}', '{}')",
                row.seq,
                row.at.as_millis(),
                row.action,
                row.notification_id.as_deref().unwrap(),
                row.user_id.as_deref().unwrap(),
                row.outcome,
                row.detail.replace('\'', "''"),
                row.prev_hash,
                row.hash
            ));
            prev = row.hash;
        }
        tx.execute(AssertSqlSafe(format!(
            "INSERT INTO audit_log (seq, at, action, actor_id, actor_role, notification_id, session_id, user_id, \
             patient_id, study_id, outcome, detail, prev_hash, hash) VALUES {}",
            values.join(", ")
        )))
        .await
        .expect("insert");
        tx.execute(AssertSqlSafe(format!(
            "UPDATE audit_chain_head SET seq = {seq}, hash = '{prev}' WHERE id = 1"
        )))
        .await
        .expect("head");
        tx.commit().await.expect("commit");
    }
}

/// 100,000 notifications over 100 users and 5 roles: 80% acknowledged
/// after 0–20 minutes, the rest open.
async fn fill_notifications(store: &Store) {
    let base = Timestamp::now().as_millis() - 86_400_000;
    let severities = ["critical", "urgent", "actionable"];
    let mut tx = store.begin().await.expect("begin");
    for chunk in 0..(NOTIFICATIONS / 500) {
        let values: Vec<String> = (0..500)
            .map(|j| {
                let i = chunk * 500 + j;
                let created = base + i * 500;
                let (user, role) = if i % 4 == 0 {
                    ("NULL".to_string(), format!("'role-{}'", i % 5))
                } else {
                    (format!("'user-{}'", i % 100), "NULL".to_string())
                };
                let acked = i % 5 != 0;
                let ack_at = created + (i * 7919 % 1_200) * 1000;
                format!(
                    "('ntf-{i}', 'h', 'critical_finding', '{}', 't', {user}, {role}, 'pacs', {created}, {}, '{}', {}, {})",
                    severities[(i % 3) as usize],
                    created + 600_000,
                    if acked { "acknowledged" } else { "pending" },
                    if acked { ack_at.to_string() } else { "NULL".into() },
                    if acked { format!("'user-{}'", i % 100) } else { "NULL".into() },
                )
            })
            .collect();
        tx.execute(AssertSqlSafe(format!(
            "INSERT INTO notifications (id, request_hash, type, severity, title, recipient_user_id, \
             recipient_role, created_by, created_at, ack_deadline, state, acknowledged_at, acknowledged_by) VALUES {}",
            values.join(", ")
        )))
        .await
        .expect("insert notifications");
    }
    tx.commit().await.expect("commit");
    store.pool().execute("ANALYZE").await.expect("analyze");
}

fn render(all: &[Figures]) -> String {
    let mut out = String::from(
        "# Benchmark: audit verify and the acknowledgement report\n\n\
         Written by `scripts/bench.sh` (`cargo bench --bench audit`), release build.\n\n",
    );
    let _ = writeln!(
        out,
        "Machine: {} cores. `audit verify` walks the whole hash chain ({AUDIT_ROWS} rows) in pages of \
         10,000; the report groups {NOTIFICATIONS} notifications (80% acknowledged) in SQL.\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    out.push_str("| database | verify (1M rows) | rows/s | report by severity | by user | by role |\n|---|---|---|---|---|---|\n");
    for f in all {
        let report = |name: &str| {
            f.report_secs
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, s)| *s)
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.0} | {:.3} s | {:.3} s | {:.3} s |",
            f.database,
            f.verify_secs,
            f.verified_rows as f64 / f.verify_secs,
            report("severity"),
            report("user"),
            report("role"),
        );
    }
    let _ = writeln!(
        out,
        "\nFilling the test data took {} s.",
        all.iter()
            .map(|f| format!("{:.0} ({})", f.fill_secs, f.database))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}
