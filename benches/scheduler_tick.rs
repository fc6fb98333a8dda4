//! The cost of one scheduler tick when the database holds many active
//! sessions that are not yet due — the common case in a hospital: every
//! workstation has a session, few are about to time out.
//!
//! For SQLite (always) and PostgreSQL (when `READBACK_TEST_POSTGRES_URL`
//! names a server; `scripts/bench.sh` starts one) it fills the sessions
//! table, runs the tick's two claim queries (expiries, warnings) in one
//! write transaction many times, prints the timings and the query plans,
//! and writes them to `docs/bench-scheduler.md`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use readback::clock::Timestamp;
use readback::store::sessions as sql;
use readback::store::{Backend, Store};
use sqlx::{AssertSqlSafe, Executor, Row};

#[path = "support/mod.rs"]
mod support;

const SIZES: [usize; 2] = [1_000, 100_000];
const TICKS: usize = 300;

struct Figures {
    database: &'static str,
    sessions: usize,
    median: Duration,
    p99: Duration,
    plan: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut all = Vec::new();
    for sessions in SIZES {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/bench.db", dir.path().display());
        all.push(measure("SQLite", &url, sessions).await);
        if let Ok(admin) = std::env::var("READBACK_TEST_POSTGRES_URL") {
            let url =
                support::fresh_postgres_database(&admin, &format!("readback_bench_{sessions}"))
                    .await;
            all.push(measure("PostgreSQL", &url, sessions).await);
        }
    }
    let report = render(&all);
    println!("{report}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench-scheduler.md");
    std::fs::write(path, report).expect("write docs/bench-scheduler.md");
    println!("written to {path}");
}

async fn measure(database: &'static str, url: &str, sessions: usize) -> Figures {
    let store = support::open_store(url).await;
    fill(&store, sessions).await;

    let mut timings = Vec::with_capacity(TICKS);
    for _ in 0..TICKS {
        let now = Timestamp::now();
        let started = Instant::now();
        let mut tx = store.begin().await.expect("begin");
        let expired = sql::claim_expired(&mut tx, now, now)
            .await
            .expect("claim expiries");
        let warned = sql::claim_warnings(&mut tx, now)
            .await
            .expect("claim warnings");
        tx.commit().await.expect("commit");
        timings.push(started.elapsed());
        assert!(expired.is_empty() && warned.is_empty(), "nothing is due");
    }
    timings.sort();
    let plan = plan(&store).await;
    store.close().await;
    Figures {
        database,
        sessions,
        median: timings[TICKS / 2],
        p99: timings[TICKS * 99 / 100],
        plan,
    }
}

/// `sessions` active sessions expiring in an hour, none due.
async fn fill(store: &Store, sessions: usize) {
    let now = Timestamp::now().as_millis();
    let hour = 3_600_000;
    let mut tx = store.begin().await.expect("begin");
    for chunk_start in (0..sessions).step_by(500) {
        let rows: Vec<String> = (chunk_start..(chunk_start + 500).min(sessions))
            .map(|i| {
                let expires = now + hour + (i as i64 % 60_000);
                format!(
                    "('bench-{i}', 'user-{i}', 'active', {now}, {now}, {hour}, {}, 120000, {expires}, NULL, {})",
                    12 * hour,
                    expires - 120_000
                )
            })
            .collect();
        let insert = format!(
            "INSERT INTO sessions (id, user_id, state, started_at, last_activity_at, idle_timeout_ms, \
             max_lifetime_ms, warning_before_ms, expires_at, warned_for, next_due_at) VALUES {}",
            rows.join(", ")
        );
        tx.execute(AssertSqlSafe(insert))
            .await
            .expect("insert sessions");
    }
    tx.commit().await.expect("commit");
    store.pool().execute("ANALYZE").await.expect("analyze");
}

#[allow(clippy::disallowed_methods)] // asks the database for its query plan
async fn plan(store: &Store) -> String {
    let due = Timestamp::now().as_millis();
    let mut out = String::new();
    for (name, query) in [
        ("expiries", sql::claim_expired_sql()),
        ("warnings", sql::claim_warnings_sql()),
    ] {
        let (prefix, column) = match store.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
            Backend::Postgres => ("EXPLAIN ", 0),
        };
        let mut explain = sqlx::query(AssertSqlSafe(format!("{prefix}{query}"))).bind(due);
        if name == "expiries" {
            explain = explain.bind(due);
        }
        let rows = explain.fetch_all(store.pool()).await.expect("explain");
        let _ = writeln!(out, "{name}:");
        for row in rows {
            let line: String = row.try_get(column).expect("plan text");
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

fn render(all: &[Figures]) -> String {
    let mut out = String::from(
        "# Benchmark: one scheduler tick\n\n\
         Written by `scripts/bench.sh` (`cargo bench --bench scheduler_tick`).\n\n\
         One tick = the two session claims (due expiries, due warnings) in one write \
         transaction, with the sessions table holding N active sessions of which none is due. \
         The claims read the partial index `sessions_due (next_due_at) WHERE state = 'active'`, \
         so their cost stays flat as N grows.\n\n",
    );
    let _ = writeln!(
        out,
        "Machine: {} cores; {} ticks per row.\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        TICKS
    );
    out.push_str("| database | sessions (not due) | median | p99 |\n|---|---|---|---|\n");
    for f in all {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} ms | {:.3} ms |",
            f.database,
            f.sessions,
            f.median.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
    out.push_str("\n## Query plans (largest table)\n\n");
    for database in ["SQLite", "PostgreSQL"] {
        if let Some(f) = all.iter().rev().find(|f| f.database == database) {
            let _ = writeln!(out, "### {database}\n\n```\n{}```\n", f.plan);
        }
    }
    out
}
