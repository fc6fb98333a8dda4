//! The rest of the HTTP API and the command line, through the real binary.

mod common;

use common::*;
use serde_json::json;

both_databases!(
    list_filters_and_pages_without_gaps,
    connections_status_broadcast_and_disconnect,
    health_readiness_and_metrics,
    sigterm_drains_and_exits_zero,
);

async fn list_filters_and_pages_without_gaps(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let mut raised = Vec::new();
    for i in 0..7 {
        let user = if i % 2 == 0 { "even" } else { "odd" };
        raised.push(
            http.raise(&daemon, json!({ "userId": user }), &format!("n{i}"))
                .await["id"]
                .clone(),
        );
    }
    // Page through everything, newest first, 3 at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = daemon.api("/notifications?limit=3");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = http.get(&url, &service_token()).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["id"].clone());
        }
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    raised.reverse();
    assert_eq!(seen, raised);

    let odd = http
        .get(
            &daemon.api("/notifications?userId=odd&state=pending"),
            &token("aud", &["auditor"], None),
        )
        .await;
    assert_eq!(odd.body["items"].as_array().unwrap().len(), 3);
    let by_study = http
        .get(
            &daemon.api("/notifications?studyId=study-012&limit=500"),
            &service_token(),
        )
        .await;
    assert_eq!(by_study.body["items"].as_array().unwrap().len(), 7);
    let none = http
        .get(
            &daemon.api("/notifications?since=2999-01-01T00:00:00.000Z"),
            &service_token(),
        )
        .await;
    assert!(none.body["items"].as_array().unwrap().is_empty());
    let acknowledged = http
        .get(
            &daemon.api("/notifications?state=acknowledged"),
            &service_token(),
        )
        .await;
    assert!(acknowledged.body["items"].as_array().unwrap().is_empty());
}

async fn connections_status_broadcast_and_disconnect(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let alice = token("alice", &["radiologist"], Some("s-a"));
    clients.connect("a1", &alice).await;
    clients.connect("a2", &alice).await;
    clients
        .connect("tech", &token("tom", &["technologist"], None))
        .await;

    let connections = http
        .get(&daemon.api("/connections"), &service_token())
        .await;
    assert_eq!(connections.status, 200);
    assert_eq!(connections.body["totalSockets"], 3);
    let users = connections.body["users"].as_array().unwrap();
    let alice_row = users.iter().find(|u| u["userId"] == "alice").unwrap();
    assert_eq!(alice_row["sockets"], 2);
    assert_eq!(alice_row["roles"], json!(["radiologist"]));
    assert!(alice_row["connectedAt"].as_str().unwrap().ends_with('Z'));

    let status = http
        .get(&daemon.api("/users/alice/status"), &service_token())
        .await;
    assert_eq!(status.body["connected"], true);
    assert_eq!(status.body["sockets"], 2);
    assert_eq!(status.body["sessions"], json!(["s-a"]));
    let nobody = http
        .get(&daemon.api("/users/nobody/status"), &admin_token())
        .await;
    assert_eq!(nobody.body["connected"], false);
    let me = http.get(&daemon.api("/me/status"), &alice).await;
    assert_eq!(me.body["userId"], "alice");
    assert_eq!(me.body["sockets"], 2);
    assert_eq!(
        http.get(&daemon.api("/users/alice/status"), &alice)
            .await
            .status,
        403
    );

    // Broadcast to a role, then to everyone.
    let sent = http
        .post(
            &daemon.api("/broadcast"),
            &admin_token(),
            &json!({ "role": "technologist", "message": "Scanner 3 down", "level": "warning" }),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let alert = clients.next_event("tech", "system_alert").await;
    assert_eq!(alert["message"], "Scanner 3 down");
    assert_eq!(alert["level"], "warning");
    clients.barrier("a1").await;
    assert!(clients.drain("a1", "system_alert").is_empty());
    let bad_level = http
        .post(
            &daemon.api("/broadcast"),
            &admin_token(),
            &json!({ "message": "m", "level": "loud" }),
        )
        .await;
    assert_eq!(bad_level.body["field"], "level");
    http.post(
        &daemon.api("/broadcast"),
        &admin_token(),
        &json!({ "message": "Maintenance at 22:00", "level": "info" }),
    )
    .await;
    for socket in ["a1", "a2", "tech"] {
        assert_eq!(
            clients.next_event(socket, "system_alert").await["level"],
            "info"
        );
    }

    // An admin disconnects every socket of a user.
    assert_eq!(
        http.delete(&daemon.api("/users/alice/connections"), &service_token())
            .await
            .status,
        403
    );
    let dropped = http
        .send(
            http.client()
                .delete(daemon.api("/users/alice/connections"))
                .bearer_auth(admin_token())
                .json(&json!({ "reason": "workstation reassigned" })),
        )
        .await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert_eq!(dropped.body["disconnected"], 2);
    clients.wait_disconnect("a1").await;
    clients.wait_disconnect("a2").await;
    let status = http
        .get(&daemon.api("/users/alice/status"), &service_token())
        .await;
    assert_eq!(status.body["connected"], false);
    assert_eq!(env.audit_count("admin.broadcast").await, 2);
    assert_eq!(env.audit_count("admin.disconnect").await, 1);
}

async fn health_readiness_and_metrics(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let client = http.client();
    assert_eq!(
        client
            .get(format!("{}/healthz", daemon.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", daemon.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    clients.connect("alice", &token("alice", &[], None)).await;
    let raised = http.raise(&daemon, json!({ "userId": "alice" }), "m").await;
    clients.ack("alice", raised["id"].as_str().unwrap()).await;
    let metrics = client
        .get(format!("{}/metrics", daemon.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "readback_notifications_raised_total{severity=\"critical\"} 1",
        "readback_deliveries_total{replayed=\"false\"} 1",
        "readback_acknowledgements_total 1",
        "readback_connected_sockets 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
}

async fn sigterm_drains_and_exits_zero(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    clients.connect("alice", &token("alice", &[], None)).await;
    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "before stop")
        .await;
    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
    clients.wait_disconnect("alice").await;

    let daemon = env.start().await;
    let stored = http
        .get(
            &daemon.api(&format!(
                "/notifications/{}",
                raised["id"].as_str().unwrap()
            )),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "pending");
}

/// The database going away: the raise answers 503 and stores nothing, and
/// a viewer connecting meanwhile gets its backlog once the database is
/// back, without reconnecting. PostgreSQL only — it is the database that can go away under a running
/// daemon (SQLite is a file in the daemon's own directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_answers_503_and_stores_nothing() {
    use sqlx::Executor;
    let mut env = TestEnv::new(Db::Postgres).await;
    let database = env.database_url.rsplit('/').next().unwrap().to_string();
    let mut admin = postgres_admin().await;
    // Connection limits do not bind superusers: the daemon connects as an
    // ordinary role that owns its database.
    let role = format!("{database}_owner");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} OWNER TO {role}"
        )))
        .await
        .unwrap();
    env.database_url =
        env.database_url
            .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let daemon = env.start().await;
    let http = Http::default();
    let waiting = http
        .raise(&daemon, json!({ "userId": "alice" }), "raised before")
        .await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} WITH CONNECTION LIMIT 0"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )))
        .await
        .unwrap();

    let refused = http
        .post(
            &daemon.api("/notifications"),
            &service_token(),
            &json!({ "id": "during-outage", "recipient": { "userId": "alice" }, "severity": "critical", "title": "t" }),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    let ready = http
        .client()
        .get(format!("{}/readyz", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let clients = Clients::start(&daemon).await;
    clients
        .connect("alice", &token("alice", &["radiologist"], None))
        .await;

    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} WITH CONNECTION LIMIT -1"
        )))
        .await
        .unwrap();
    let lookup = http
        .get(
            &daemon.api("/notifications/during-outage"),
            &service_token(),
        )
        .await;
    assert_eq!(lookup.status, 404, "nothing half-stored: {}", lookup.body);
    let replayed = clients.next_event("alice", "critical_notification").await;
    assert_eq!(replayed["id"], waiting["id"]);
    assert_eq!(replayed["replayed"], true);
}

#[test]
fn check_config_names_every_bad_key_and_token_mints() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[auth]\njwt_secret = \"short\"\n[sessions]\nidle_timout = \"5m\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sessions.idle_timout: unknown key"),
        "{stderr}"
    );

    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/readback.toml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args([
            "token",
            "--user",
            "u1",
            "--role",
            "radiologist",
            "--session",
            "s1",
            "--config",
        ])
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3);

    // Escalation addresses are checked too.
    let bad_mail = dir.path().join("bad-mail.toml");
    std::fs::write(
        &bad_mail,
        "[auth]\njwt_secret = \"0123456789abcdef-test\"\n[smtp]\nurl = \"smtp://127.0.0.1:25\"\nfrom = \"not an address\"\n\
         [[escalation.levels]]\nafter = \"0s\"\nto = [\"recipient\", \"chief-at-hospital\"]\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(["check-config", "--config"])
        .arg(&bad_mail)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("escalation.levels[0].to: `chief-at-hospital`"),
        "{stderr}"
    );
    assert!(stderr.contains("smtp.from"), "{stderr}");

    // Environment overrides reach the config.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(["check-config", "--config"])
        .arg(&good)
        .env("READBACK_SESSIONS__IDLE_TIMEOUT", "not-a-duration")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sessions.idle_timeout"));
}
