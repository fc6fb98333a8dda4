//! The audit log as reviewers use it: every action of a scripted scenario,
//! filters, pagination, CSV and NDJSON exports, the timeline, `audit
//! verify` against tampering (rows, the chain head, a finding's content, a
//! whole rewritten chain against signed checkpoints), and the
//! time-to-acknowledge report. Every story runs on SQLite and PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

both_databases!(
    every_action_is_recorded_and_can_be_found,
    verify_names_the_row_that_was_changed_deleted_or_swapped,
    the_report_matches_a_hand_computed_scenario,
    overwriting_a_row_or_moving_the_chain_head_is_refused,
    editing_a_finding_is_detected_by_verify,
    a_rewritten_chain_passes_verify_alone_but_not_an_earlier_checkpoint,
);

fn auditor() -> String {
    token("audrey", &["auditor"], None)
}

/// All rows matching `query`, following `nextCursor`.
async fn all_rows(http: &Http, daemon: &Daemon, query: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = daemon.api(&format!("/audit?{query}"));
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = http.get(&url, &auditor()).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        rows.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return rows,
        }
    }
}

async fn every_action_is_recorded_and_can_be_found(db: Db) {
    let smtp = SmtpServer::start().await;
    let config = format!(
        "{}\n[scheduler]\ntick = \"100ms\"\n\n[sessions]\nidle_timeout = \"2s\"\nwarning_before = \"1s\"\nactivity_coalesce = \"100ms\"\n\n\
         [[escalation.levels]]\nafter = \"0s\"\nto = [\"recipient\"]\n",
        smtp.config()
    );
    let env = TestEnv::with_config(db, &config).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    // A refused login, two tabs, a delivery, a replay, an acknowledgement.
    assert!(
        clients
            .connect_with("intruder", json!({ "auth": { "token": "forged" } }))
            .await
            .is_err()
    );
    let alice = token("alice", &["radiologist"], Some("s-alice"));
    clients.connect("tab1", &alice).await;
    clients.connect("tab2", &alice).await;
    let first = http
        .raise(&daemon, json!({ "userId": "alice" }), "first")
        .await;
    let first_id = first["id"].as_str().unwrap().to_string();
    let for_bob = http
        .raise(&daemon, json!({ "userId": "bob" }), "for bob")
        .await;
    clients
        .connect("bob", &token("bob", &["radiologist"], None))
        .await;
    clients.next_event("bob", "critical_notification").await;
    assert_eq!(
        clients.ack("bob", for_bob["id"].as_str().unwrap()).await["ok"],
        true
    );
    // A cancel, and an escalation with its email.
    let cancelled = http
        .raise(&daemon, json!({ "userId": "alice" }), "withdrawn")
        .await;
    http.post(
        &daemon.api(&format!(
            "/notifications/{}/cancel",
            cancelled["id"].as_str().unwrap()
        )),
        &service_token(),
        &json!({ "reason": "retracted" }),
    )
    .await;
    clients
        .connect(
            "carol",
            &token_with_email("carol", &[], "carol@hospital.example"),
        )
        .await;
    let escalating = http
        .post(
            &daemon.api("/notifications"),
            &service_token(),
            &json!({ "recipient": { "userId": "carol" }, "severity": "critical", "title": "late", "ackWithin": 300, "patientId": "PAT-9" }),
        )
        .await
        .body;
    let escalating_id = escalating["id"].as_str().unwrap().to_string();
    smtp.wait_for(1).await;
    // Admin actions, and the session warned then expired.
    http.post(
        &daemon.api("/broadcast"),
        &admin_token(),
        &json!({ "message": "hello", "level": "info" }),
    )
    .await;
    http.delete(&daemon.api("/users/bob/connections"), &admin_token())
        .await;
    clients.next_event("tab1", "session_timeout_warning").await;
    clients.next_event("tab1", "session_expired").await;
    // Viewers and the PACS may not read the log.
    assert_eq!(http.get(&daemon.api("/audit"), &alice).await.status, 403);
    assert_eq!(
        http.get(&daemon.api("/audit"), &service_token())
            .await
            .status,
        403
    );
    // Wait for the last email's audit row before taking the cutoff.
    env.wait_audit("email.sent", 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = now_rfc3339();

    let rows = all_rows(&http, &daemon, &format!("to={cutoff}&limit=7")).await;
    let actions: BTreeSet<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for expected in [
        "notification.raised",
        "notification.delivered",
        "replay.sent",
        "notification.acknowledged",
        "notification.cancelled",
        "notification.escalated",
        "email.sent",
        "session.started",
        "session.warned",
        "session.expired",
        "auth.refused",
        "access.denied",
        "admin.broadcast",
        "admin.disconnect",
    ] {
        assert!(
            actions.contains(expected),
            "{expected} missing from {actions:?}"
        );
    }
    // Pagination visited every row once, in order.
    let seqs: Vec<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted);
    // DICOM codes for login-like events.
    let started = rows
        .iter()
        .find(|r| r["action"] == "session.started")
        .unwrap();
    assert_eq!(started["dicom"]["eventId"], "110114");
    assert_eq!(started["dicom"]["eventTypeCode"], "110122");

    // Filters return exactly the matching rows.
    for (query, check) in [
        (
            "action=notification.raised",
            Box::new(|r: &Value| r["action"] == "notification.raised")
                as Box<dyn Fn(&Value) -> bool>,
        ),
        ("userId=bob", Box::new(|r: &Value| r["userId"] == "bob")),
        (
            "patientId=PAT-9",
            Box::new(|r: &Value| r["patientId"] == "PAT-9"),
        ),
        (
            "studyId=study-012",
            Box::new(|r: &Value| r["studyId"] == "study-012"),
        ),
    ] {
        let filtered = all_rows(&http, &daemon, &format!("{query}&to={cutoff}")).await;
        let expected: Vec<&Value> = rows.iter().filter(|r| check(r)).collect();
        assert!(!expected.is_empty(), "{query}");
        assert_eq!(filtered.len(), expected.len(), "{query}");
        assert!(filtered.iter().all(&check), "{query}");
    }
    let raised = all_rows(&http, &daemon, "action=notification.raised").await;
    assert_eq!(raised.len(), 4);

    // CSV parses back, with a header row; NDJSON line by line.
    let csv_text = http
        .send(
            http.client()
                .get(daemon.api(&format!("/audit?format=csv&to={cutoff}")))
                .bearer_auth(auditor()),
        )
        .await;
    assert!(csv_text.content_type.starts_with("text/csv"));
    let text = csv_text.body.as_str().unwrap().to_string();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[0], "seq");
    assert_eq!(header[11], "detail");
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), rows.len());
    for (record, row) in records.iter().zip(&rows) {
        assert_eq!(record[0], row["seq"].to_string());
        assert_eq!(&record[2], row["action"].as_str().unwrap());
        let detail: Value = serde_json::from_str(&record[11]).unwrap();
        assert_eq!(detail, row["detail"]);
    }
    let ndjson = http
        .send(
            http.client()
                .get(daemon.api(&format!("/audit?format=ndjson&to={cutoff}")))
                .bearer_auth(auditor()),
        )
        .await;
    let lines: Vec<Value> = ndjson
        .body
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, rows);

    // The timeline of the escalated notification, in order.
    let timeline = http
        .get(
            &daemon.api(&format!("/notifications/{escalating_id}/timeline")),
            &auditor(),
        )
        .await;
    assert_eq!(timeline.status, 200, "{}", timeline.body);
    let steps: Vec<&str> = timeline.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let position = |action: &str| {
        steps
            .iter()
            .position(|a| *a == action)
            .unwrap_or_else(|| panic!("{action} in {steps:?}"))
    };
    assert!(position("notification.raised") < position("notification.escalated"));
    assert!(position("notification.escalated") < position("email.sent"));
    let first_timeline = http
        .get(
            &daemon.api(&format!("/notifications/{first_id}/timeline")),
            &auditor(),
        )
        .await;
    let delivered = first_timeline.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "notification.delivered")
        .count();
    assert_eq!(delivered, 2);

    // Bad parameters name themselves; the queries were audited.
    for (query, field) in [
        ("colour=red", "colour"),
        ("from=yesterday", "from"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("format=xml", "format"),
        ("action=notification.lost", "action"),
        ("cursor=-4", "cursor"),
    ] {
        let reply = http
            .get(&daemon.api(&format!("/audit?{query}")), &auditor())
            .await;
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.body["field"], field, "{query}: {}", reply.body);
    }
    assert!(env.audit_count("audit.queried").await >= 8);

    // And the chain is intact.
    let (verified, output) = env.audit_verify();
    assert!(verified, "{output}");
}

#[allow(clippy::disallowed_methods)] // tokens and timings need the wall clock, not the daemon's
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now();
    humantime::format_rfc3339_millis(now).to_string()
}

async fn sql(env: &TestEnv, statement: &str) {
    use sqlx::Executor;
    let mut conn = env.sql().await;
    conn.execute(sqlx::AssertSqlSafe(statement.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn verify_names_the_row_that_was_changed_deleted_or_swapped(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    for i in 0..4 {
        http.raise(&daemon, json!({ "userId": "alice" }), &format!("n{i}"))
            .await;
    }
    assert_eq!(daemon.terminate().await.code(), Some(0));
    let (ok, output) = env.audit_verify();
    assert!(ok, "{output}");
    assert!(output.contains("4 rows"), "{output}");

    // Someone with database access removes the guards and edits row 2.
    drop_guards(&env).await;
    sql(
        &env,
        "UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 2",
    )
    .await;
    let config = env.config_path();
    let (code, output) = readbackd(&["audit", "verify", "--config", path(&config)]);
    assert_eq!(code, Some(65), "tampering has its own exit code: {output}");
    assert!(output.contains("row 2"), "{output}");
    sql(&env, "UPDATE audit_log SET actor_id = 'pacs' WHERE seq = 2").await;
    assert!(env.audit_verify().0, "restored");

    // A row deleted from the middle.
    sql(
        &env,
        "CREATE TABLE kept AS SELECT * FROM audit_log WHERE seq = 3",
    )
    .await;
    sql(&env, "DELETE FROM audit_log WHERE seq = 3").await;
    let (ok, output) = env.audit_verify();
    assert!(!ok);
    assert!(
        output.contains("row 4") && output.contains("2..4"),
        "{output}"
    );
    sql(&env, "INSERT INTO audit_log SELECT * FROM kept").await;
    assert!(env.audit_verify().0, "restored");

    // Two rows swapped (contents exchanged, positions kept).
    sql(&env, "UPDATE audit_log SET seq = -1 WHERE seq = 1").await;
    sql(&env, "UPDATE audit_log SET seq = 1 WHERE seq = 2").await;
    sql(&env, "UPDATE audit_log SET seq = 2 WHERE seq = -1").await;
    let (ok, output) = env.audit_verify();
    assert!(!ok);
    assert!(output.contains("row 1"), "{output}");
    sql(&env, "UPDATE audit_log SET seq = -1 WHERE seq = 1").await;
    sql(&env, "UPDATE audit_log SET seq = 1 WHERE seq = 2").await;
    sql(&env, "UPDATE audit_log SET seq = 2 WHERE seq = -1").await;
    assert!(env.audit_verify().0, "restored");

    // The last row deleted.
    sql(&env, "DELETE FROM audit_log WHERE seq = 4").await;
    let (ok, output) = env.audit_verify();
    assert!(!ok);
    assert!(output.contains("ends at row 3"), "{output}");
}

/// (id, severity, recipient user, recipient role, minutes to acknowledge,
/// deadline in minutes, escalated)
type Row = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<i64>,
    i64,
    bool,
);

async fn the_report_matches_a_hand_computed_scenario(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let minute = 60_000i64;
    let base = 1_795_341_600_000i64; // 2026-11-22T10:00:00Z
    let scenario: [Row; 8] = [
        ("c1", "critical", Some("ann"), None, Some(1), 10, false),
        ("c2", "critical", Some("ann"), None, Some(2), 10, false),
        ("c3", "critical", Some("ben"), None, Some(3), 10, false),
        ("c4", "critical", Some("ben"), None, Some(40), 10, true),
        ("c5", "critical", Some("ann"), None, None, 10, true),
        ("u1", "urgent", None, Some("neuro"), Some(30), 120, false),
        ("u2", "urgent", None, Some("neuro"), Some(180), 120, true),
        ("u3", "urgent", Some("ann"), None, None, 120, false),
    ];
    for (id, severity, user, role, ack, deadline, escalated) in scenario {
        let created = base;
        let state = if ack.is_some() {
            "acknowledged"
        } else if escalated {
            "escalated"
        } else {
            "pending"
        };
        let acked_by = ack.map(|_| user.unwrap_or("nina"));
        sql(&env, &format!(
            "INSERT INTO notifications (id, request_hash, type, severity, title, recipient_user_id, recipient_role, \
             created_by, created_at, ack_deadline, state, acknowledged_at, acknowledged_by) VALUES \
             ('{id}', 'h', 'critical_finding', '{severity}', 't', {}, {}, 'pacs', {created}, {}, '{state}', {}, {})",
            user.map_or("NULL".into(), |u| format!("'{u}'")),
            role.map_or("NULL".into(), |r| format!("'{r}'")),
            created + deadline * minute,
            ack.map_or("NULL".into(), |m| (created + m * minute).to_string()),
            acked_by.map_or("NULL".into(), |u| format!("'{u}'")),
        ))
        .await;
        if escalated {
            sql(&env, &format!(
                "INSERT INTO escalation_steps (notification_id, level, due_at, targets, state, fired_at) \
                 VALUES ('{id}', 1, {}, '[]', 'fired', {})",
                created + deadline * minute,
                created + deadline * minute
            ))
            .await;
        }
    }
    let http = Http::default();
    let window = "from=2026-11-22T00:00:00.000Z&to=2026-11-23T00:00:00.000Z";
    let report = http
        .get(
            &daemon.api(&format!(
                "/reports/acknowledgements?{window}&groupBy=severity"
            )),
            &auditor(),
        )
        .await;
    assert_eq!(report.status, 200, "{}", report.body);
    let rows = report.body["rows"].as_array().unwrap();
    // critical: 5 raised, 4 acknowledged (1, 2, 3, 40 min), 3 within 10 min;
    // median = rank ceil(4/2) = 2nd = 2 min; p90 = rank ceil(3.6) = 4th = 40 min.
    assert_eq!(
        rows[0],
        json!({
            "group": "critical", "count": 5, "acknowledged": 4, "acknowledgedWithinDeadline": 3,
            "acknowledgedWithinDeadlinePercent": 60.0, "medianTimeToAcknowledge": 2 * minute,
            "p90TimeToAcknowledge": 40 * minute, "stillOpen": 1, "escalated": 2,
        })
    );
    // urgent: 3 raised, 2 acknowledged (30, 180 min), 1 within 120 min;
    // median = 1st = 30 min; p90 = rank ceil(1.8) = 2nd = 180 min.
    assert_eq!(
        rows[1],
        json!({
            "group": "urgent", "count": 3, "acknowledged": 2, "acknowledgedWithinDeadline": 1,
            "acknowledgedWithinDeadlinePercent": 33.3, "medianTimeToAcknowledge": 30 * minute,
            "p90TimeToAcknowledge": 180 * minute, "stillOpen": 1, "escalated": 1,
        })
    );
    let by_user = http
        .get(
            &daemon.api(&format!(
                "/reports/acknowledgements?{window}&groupBy=user&severity=critical"
            )),
            &auditor(),
        )
        .await;
    let groups: Vec<(&str, i64)> = by_user.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["group"].as_str().unwrap(), r["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(groups, [("ann", 3), ("ben", 2)]);
    let by_role = http
        .get(
            &daemon.api(&format!("/reports/acknowledgements?{window}&groupBy=role")),
            &auditor(),
        )
        .await;
    assert_eq!(by_role.body["rows"][1]["group"], "neuro");
    assert_eq!(
        by_role.body["rows"][1]["medianTimeToAcknowledge"],
        30 * minute
    );
    for (query, field) in [
        ("groupBy=team", "groupBy"),
        ("severity=mild", "severity"),
        ("from=x", "from"),
    ] {
        let reply = http
            .get(
                &daemon.api(&format!("/reports/acknowledgements?{query}")),
                &auditor(),
            )
            .await;
        assert_eq!(reply.body["field"], field, "{query}");
    }
    assert_eq!(
        http.get(&daemon.api("/reports/acknowledgements"), &service_token())
            .await
            .status,
        403
    );

    // The command line gives the same figures.
    let output = Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args([
            "report",
            "--json",
            "--from",
            "2026-11-22T00:00:00.000Z",
            "--to",
            "2026-11-23T00:00:00.000Z",
            "--config",
        ])
        .arg(daemon.config())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cli["rows"], report.body["rows"]);
}

fn path(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

/// What an attacker who owns the database does first: every trigger on the
/// audit tables goes (dropped on SQLite, disabled on PostgreSQL).
#[allow(clippy::disallowed_methods)] // drops the guards directly, as an attacker would
async fn drop_guards(env: &TestEnv) {
    use sqlx::Row;
    match env.db {
        Db::Sqlite => {
            let mut conn = env.sql().await;
            let names: Vec<String> = sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' \
                 AND tbl_name IN ('audit_log', 'audit_chain_head')",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
            assert!(!names.is_empty());
            for name in names {
                sql(env, &format!("DROP TRIGGER {name}")).await;
            }
        }
        Db::Postgres => {
            sql(env, "ALTER TABLE audit_log DISABLE TRIGGER USER").await;
            sql(env, "ALTER TABLE audit_chain_head DISABLE TRIGGER USER").await;
        }
    }
}

async fn try_sql(env: &TestEnv, statement: &str) -> Result<(), String> {
    use sqlx::Executor;
    let mut conn = env.sql().await;
    conn.execute(sqlx::AssertSqlSafe(statement.to_string()))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every stored row, oldest first, and the chain head.
async fn log_and_head(env: &TestEnv) -> (Vec<readback::audit::AuditRow>, (i64, String)) {
    use readback::store::audit::{AuditFilter, head, page};
    let mut conn = env.sql().await;
    let rows = page(&mut conn, &AuditFilter::default(), 0, 10_000)
        .await
        .unwrap();
    (rows, head(&mut conn).await.unwrap())
}

async fn raise_with_message(http: &Http, daemon: &Daemon, title: &str) -> String {
    let raised = http
        .raise_with(
            daemon,
            &json!({
                "recipient": { "userId": "alice" },
                "severity": "critical",
                "title": title,
                "message": "Tension pneumothorax, right",
                "patientId": "patient-789",
                "studyId": "study-012",
                "accessionNumber": "ACC-1",
            }),
        )
        .await;
    raised["id"].as_str().unwrap().to_string()
}

async fn overwriting_a_row_or_moving_the_chain_head_is_refused(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    for i in 0..3 {
        http.raise(&daemon, json!({ "userId": "alice" }), &format!("n{i}"))
            .await;
    }
    assert_eq!(daemon.terminate().await.code(), Some(0));
    let (rows, head) = log_and_head(&env).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(head, (3, rows[2].hash.clone()));

    let columns = "(seq, at, action, outcome, detail, prev_hash, hash)";
    let forged = |seq: i64| format!("({seq}, 0, 'notification.raised', 'ok', '{{}}', 'x', 'y')");
    let mut attempts = match db {
        // REPLACE deletes the old row without firing DELETE triggers.
        Db::Sqlite => vec![
            format!(
                "INSERT OR REPLACE INTO audit_log {columns} VALUES {}",
                forged(2)
            ),
            format!("REPLACE INTO audit_log {columns} VALUES {}", forged(3)),
            format!(
                "INSERT INTO audit_log {columns} VALUES {} ON CONFLICT (seq) DO UPDATE SET actor_id = 'mallory'",
                forged(1)
            ),
            format!(
                "INSERT OR REPLACE INTO audit_chain_head (id, seq, hash) VALUES (1, 2, '{}')",
                rows[1].hash
            ),
        ],
        Db::Postgres => vec![
            format!(
                "INSERT INTO audit_log {columns} VALUES {} ON CONFLICT (seq) DO UPDATE SET actor_id = 'mallory'",
                forged(2)
            ),
            format!("INSERT INTO audit_log {columns} VALUES {}", forged(3)),
            format!(
                "INSERT INTO audit_log {columns} VALUES {} ON CONFLICT DO NOTHING",
                forged(1)
            ),
            "TRUNCATE audit_chain_head".to_string(),
        ],
    };
    attempts.extend([
        // The head moved back, to a made-up hash, or past the last row.
        format!(
            "UPDATE audit_chain_head SET seq = 2, hash = '{}' WHERE id = 1",
            rows[1].hash
        ),
        format!(
            "UPDATE audit_chain_head SET hash = '{}' WHERE id = 1",
            "f".repeat(64)
        ),
        format!(
            "UPDATE audit_chain_head SET seq = 9, hash = '{}' WHERE id = 1",
            rows[2].hash
        ),
        "DELETE FROM audit_chain_head".to_string(),
        // A row slipped in behind the head.
        format!("INSERT INTO audit_log {columns} VALUES {}", forged(0)),
    ]);
    for attempt in &attempts {
        let refused = try_sql(&env, attempt).await;
        assert!(refused.is_err(), "not refused: {attempt}");
        let (after, head_after) = log_and_head(&env).await;
        assert_eq!(after, rows, "changed by: {attempt}");
        assert_eq!(head_after, head, "head changed by: {attempt}");
    }
    let (ok, output) = env.audit_verify();
    assert!(ok && output.contains("3 rows"), "{output}");

    // The daemon still appends under the guards.
    let daemon = env.start().await;
    http.raise(&daemon, json!({ "userId": "alice" }), "n3")
        .await;
    assert_eq!(daemon.terminate().await.code(), Some(0));
    let (ok, output) = env.audit_verify();
    assert!(ok && output.contains("4 rows"), "{output}");
}

async fn editing_a_finding_is_detected_by_verify(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let first = raise_with_message(&http, &daemon, "Pneumothorax").await;
    let second = raise_with_message(&http, &daemon, "Free air").await;
    assert_eq!(daemon.terminate().await.code(), Some(0));
    let (rows, _) = log_and_head(&env).await;
    let raised = rows
        .iter()
        .find(|r| r.notification_id.as_deref() == Some(second.as_str()))
        .unwrap();
    let detail: Value = serde_json::from_str(&raised.detail).unwrap();
    assert_eq!(detail["contentDigest"].as_str().map(str::len), Some(64));
    let (ok, output) = env.audit_verify();
    assert!(ok && output.contains("2 findings"), "{output}");

    // Each field a reviewer relies on, changed in the notifications table
    // (which has no guard of its own), is caught and named.
    for (column, value) in [
        ("title", "'Nothing to see'"),
        ("message", "NULL"),
        ("severity", "'actionable'"),
        ("recipient_user_id", "'bob'"),
        ("patient_id", "'patient-000'"),
        ("accession_number", "'ACC-2'"),
        ("ack_deadline", "ack_deadline + 3600000"),
    ] {
        let original = match column {
            "title" => "'Free air'".to_string(),
            "message" => "'Tension pneumothorax, right'".into(),
            "severity" => "'critical'".into(),
            "recipient_user_id" => "'alice'".into(),
            "patient_id" => "'patient-789'".into(),
            "accession_number" => "'ACC-1'".into(),
            _ => "ack_deadline - 3600000".into(),
        };
        sql(
            &env,
            &format!("UPDATE notifications SET {column} = {value} WHERE id = '{second}'"),
        )
        .await;
        let (ok, output) = env.audit_verify();
        assert!(!ok, "{column} change not detected");
        assert!(
            output.contains(&second) && output.contains(&format!("row {}", raised.seq)),
            "{column}: {output}"
        );
        assert!(!output.contains(&first), "{output}");
        sql(
            &env,
            &format!("UPDATE notifications SET {column} = {original} WHERE id = '{second}'"),
        )
        .await;
        assert!(env.audit_verify().0, "{column} restored");
    }

    // A notification.raised row written before digests existed: appended
    // here as the old daemon would have, then skipped and counted.
    let (rows, (head_seq, head_hash)) = log_and_head(&env).await;
    let legacy = readback::audit::AuditEvent::new(
        readback::audit::Action::NotificationRaised,
        readback::clock::Timestamp::now(),
    )
    .detail(json!({ "severity": "critical" }))
    .into_row(head_seq + 1, &head_hash);
    assert_eq!(rows.len() as i64, head_seq);
    sql(
        &env,
        &format!(
            "INSERT INTO audit_log (seq, at, action, outcome, detail, prev_hash, hash) \
             VALUES ({}, {}, '{}', '{}', '{}', '{}', '{}')",
            legacy.seq,
            legacy.at.as_millis(),
            legacy.action,
            legacy.outcome,
            legacy.detail,
            legacy.prev_hash,
            legacy.hash
        ),
    )
    .await;
    sql(
        &env,
        &format!(
            "UPDATE audit_chain_head SET seq = {}, hash = '{}' WHERE id = 1",
            legacy.seq, legacy.hash
        ),
    )
    .await;
    let (ok, output) = env.audit_verify();
    assert!(ok, "{output}");
    assert!(
        output.contains("2 findings") && output.contains("1 notification.raised row"),
        "{output}"
    );
}

#[allow(clippy::disallowed_methods)] // rewrites the database directly, as an attacker would
async fn a_rewritten_chain_passes_verify_alone_but_not_an_earlier_checkpoint(db: Db) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("checkpoint.key");
    let public = keys.path().join("checkpoint.key.pub");
    let (code, output) = readbackd(&["audit", "keygen", "--out", path(&key)]);
    assert_eq!(code, Some(0), "{output}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    assert!(public.exists());
    // Never overwritten: that would lose the key earlier checkpoints need.
    let (code, _) = readbackd(&["audit", "keygen", "--out", path(&key)]);
    assert_eq!(code, Some(2));

    let env = TestEnv::with_config(
        db,
        &format!("[audit]\ncheckpoint_key_file = \"{}\"\n", key.display()),
    )
    .await;
    let daemon = env.start().await;
    let config = env.config_path();
    let config = path(&config);
    let http = Http::default();
    let first = raise_with_message(&http, &daemon, "Pneumothorax").await;
    raise_with_message(&http, &daemon, "Free air").await;
    raise_with_message(&http, &daemon, "Aortic dissection").await;
    let cp1 = env.dir.path().join("cp1.json");
    let (code, output) = readbackd(&[
        "audit",
        "checkpoint",
        "--config",
        config,
        "--out",
        path(&cp1),
    ]);
    assert_eq!(code, Some(0), "{output}");
    let statement: Value = serde_json::from_slice(&std::fs::read(&cp1).unwrap()).unwrap();
    let (rows, _) = log_and_head(&env).await;
    assert_eq!(statement["seq"], 3);
    assert_eq!(statement["hash"], rows[2].hash.as_str());
    raise_with_message(&http, &daemon, "Stroke").await;
    assert_eq!(daemon.terminate().await.code(), Some(0));

    // The intact log extends the checkpoint, with the configured key or
    // with the public key alone (a reviewer off the host).
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        config,
        "--checkpoint",
        path(&cp1),
    ]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("extends 1 checkpoint"), "{output}");
    let reviewer = env.dir.path().join("reviewer.toml");
    std::fs::write(
        &reviewer,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n\n[database]\nurl = \"{}\"\n",
            env.database_url
        ),
    )
    .unwrap();
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        path(&reviewer),
        "--public-key",
        path(&public),
        "--checkpoint",
        path(&cp1),
    ]);
    assert_eq!(code, Some(0), "{output}");

    // A checkpoint edited to vouch for another row, or checked with another
    // key, is refused.
    let mut edited = statement.clone();
    edited["seq"] = json!(2);
    edited["hash"] = json!(rows[1].hash);
    let forged = env.dir.path().join("forged.json");
    std::fs::write(&forged, edited.to_string()).unwrap();
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        config,
        "--checkpoint",
        path(&forged),
    ]);
    assert_eq!(code, Some(65), "{output}");
    assert!(
        output.contains("forged.json") && output.contains("signature"),
        "{output}"
    );
    let other = keys.path().join("other.key");
    readbackd(&["audit", "keygen", "--out", path(&other)]);
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        path(&reviewer),
        "--public-key",
        path(&keys.path().join("other.key.pub")),
        "--checkpoint",
        path(&cp1),
    ]);
    assert_eq!(code, Some(65), "{output}");
    assert!(output.contains("key"), "{output}");
    // Usage errors: a missing file; no key to check with.
    let (code, _) = readbackd(&[
        "audit",
        "verify",
        "--config",
        config,
        "--checkpoint",
        path(&env.dir.path().join("missing.json")),
    ]);
    assert_eq!(code, Some(2));
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        path(&reviewer),
        "--checkpoint",
        path(&cp1),
    ]);
    assert_eq!(code, Some(2), "{output}");
    let (code, _) = readbackd(&["audit", "checkpoint", "--config", path(&reviewer)]);
    assert_eq!(code, Some(2));

    // The database owner rewrites history: the first finding's title and
    // its digest, then every hash from there to the head.
    drop_guards(&env).await;
    sql(
        &env,
        &format!("UPDATE notifications SET title = 'Nothing to see' WHERE id = '{first}'"),
    )
    .await;
    let (mut rows, _) = log_and_head(&env).await;
    {
        let mut conn = env.sql().await;
        let notification = readback::store::notifications::find(&mut conn, &first)
            .await
            .unwrap()
            .unwrap();
        let raised = rows
            .iter_mut()
            .find(|r| r.notification_id.as_deref() == Some(first.as_str()))
            .unwrap();
        let mut detail: Value = serde_json::from_str(&raised.detail).unwrap();
        detail["contentDigest"] = json!(readback::notifications::content_digest(&notification));
        raised.detail = detail.to_string();
        let mut prev = readback::audit::GENESIS_HASH.to_string();
        for row in &mut rows {
            row.prev_hash = prev.clone();
            row.hash = readback::audit::chain_hash(&prev, &readback::audit::canonical(row));
            prev = row.hash.clone();
            sqlx::query(
                "UPDATE audit_log SET detail = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
            )
            .bind(&row.detail)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(row.seq)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        sqlx::query("UPDATE audit_chain_head SET hash = $1 WHERE id = 1")
            .bind(&prev)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (ok, output) = env.audit_verify();
    assert!(ok, "the rewrite is consistent: {output}");
    let (code, output) = readbackd(&[
        "audit",
        "verify",
        "--config",
        config,
        "--checkpoint",
        path(&cp1),
    ]);
    assert_eq!(code, Some(65), "{output}");
    assert!(
        output.contains("row 3") && output.contains("cp1.json"),
        "{output}"
    );
}
