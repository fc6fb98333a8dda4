//! Integrity: nothing a viewer or the PACS sends is dropped, and no answer
//! is false. Each story reproduces a way readback once broke that promise,
//! through the real interfaces: the real daemon, socket.io-client, raw
//! WebSockets for clients that misbehave, HTTP and the database.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

both_databases!(
    events_sent_at_connect_are_answered,
    a_socket_is_reachable_when_its_client_sees_connect,
    a_handshake_dropped_midway_leaves_nothing_behind,
    a_committed_raise_is_never_answered_with_an_error,
    a_viewer_that_stops_reading_is_disconnected_not_skipped,
    sighup_reloads_and_keeps_delivering,
);

/// A token as hospital identity providers issue them: e-mail and name
/// (which the daemon writes to its user directory on connect) and a session.
fn directory_token(user: &str, session: &str) -> String {
    sign(
        &json!({
            "sub": user, "roles": ["radiologist"], "sessionId": session,
            "email": format!("{user}@hospital.example"), "name": format!("Dr {user}"),
            "exp": now_secs() + 3600,
        }),
        SECRET,
    )
}

const TOPICS: &str = "[realtime.topics]\nradiologist = [\"ward.*\"]\n";

/// A viewer emits the moment it is connected (socket.io-client flushes
/// what was emitted while connecting): every event is answered, 50 times
/// over, each with a fresh user whose token makes the daemon write.
async fn events_sent_at_connect_are_answered(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    for round in 0..50 {
        let user = format!("eager-{round}");
        let session = format!("s-eager-{round}");
        let raised = http
            .raise(&daemon, json!({ "userId": user }), "Early")
            .await;
        let id = raised["id"].as_str().unwrap();
        let name = format!("v{round}");
        let (acks, _) = clients
            .connect_eager(
                &name,
                &directory_token(&user, &session),
                &[
                    ("activity", json!([])),
                    (
                        "acknowledge_notification",
                        json!([{ "notificationId": id }]),
                    ),
                    ("extend_session", json!([{ "sessionId": session }])),
                    ("subscribe", json!([{ "topic": "ward.3" }])),
                ],
                &[],
            )
            .await;
        let [activity, ack, extend, subscribe] = &acks[..] else {
            panic!("four answers expected: {acks:?}");
        };
        assert_eq!(activity["ok"], true, "round {round}: activity: {activity}");
        assert!(
            activity["expiresAt"].is_string(),
            "round {round}: {activity}"
        );
        assert_eq!(ack["ok"], true, "round {round}: acknowledge: {ack}");
        assert_eq!(ack["notificationId"], id);
        assert_eq!(
            extend["ok"], true,
            "round {round}: extend_session: {extend}"
        );
        assert_eq!(
            subscribe["ok"], true,
            "round {round}: subscribe: {subscribe}"
        );
        clients.close(&name).await;
    }
    // Every acknowledgement that was answered is stored.
    let acknowledged = env
        .count(
            "SELECT COUNT(*) FROM notifications WHERE state = 'acknowledged' AND title = $1",
            "Early",
        )
        .await;
    assert_eq!(acknowledged, 50);

    // A token whose session was terminated: whatever it emits before it is
    // dropped is refused with a reason, not left unanswered.
    let reply = http
        .delete(&daemon.api("/sessions/s-eager-0"), &service_token())
        .await;
    assert!(reply.status < 300, "terminate: {}", reply.body);
    let (acks, _) = clients
        .connect_eager(
            "ended",
            &directory_token("eager-0", "s-eager-0"),
            &[("activity", json!([]))],
            &[],
        )
        .await;
    // Refused with the reason if it arrives before the socket is dropped,
    // else failed by the client at the disconnect: never left waiting.
    let refused = acks[0]["ok"] == false && acks[0]["code"] == "expired";
    let dropped = acks[0]["noAnswer"]
        .as_str()
        .is_some_and(|e| e.contains("disconnected"));
    assert!(refused || dropped, "{acks:?}");
    let expired = clients.next_event("ended", "session_expired").await;
    assert_eq!(expired["reason"], "terminated");
}

/// When the client sees `connect`, the socket is in its rooms: the status
/// API says connected, and a broadcast or a message sent at once arrives.
async fn a_socket_is_reachable_when_its_client_sees_connect(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let admin = admin_token();
    for round in 0..20 {
        let user = format!("reachable-{round}");
        let name = format!("v{round}");
        let alert = format!("alert for round {round}");
        let (_, replies) = clients
            .connect_eager(
                &name,
                &directory_token(&user, &format!("s-reach-{round}")),
                &[],
                &[
                    json!({ "method": "GET", "url": daemon.api(&format!("/users/{user}/status")), "token": admin }),
                    json!({ "method": "POST", "url": daemon.api("/broadcast"), "token": admin,
                            "body": { "role": "radiologist", "message": alert, "level": "info" } }),
                    json!({ "method": "POST", "url": daemon.api("/messages"), "token": admin,
                            "body": { "to": { "userId": user }, "event": "ward.update", "data": { "round": round } } }),
                ],
            )
            .await;
        let status = &replies[0];
        assert_eq!(status["status"], 200, "{status}");
        assert_eq!(
            status["body"]["connected"], true,
            "round {round}: status right after connect: {status}"
        );
        assert_eq!(replies[1]["status"], 200, "broadcast: {}", replies[1]);
        assert_eq!(replies[2]["status"], 202, "message: {}", replies[2]);
        let received = clients.next_event(&name, "system_alert").await;
        assert_eq!(received["message"], alert.as_str());
        let message = clients.next_event(&name, "ward.update").await;
        assert_eq!(message["round"], round);
        clients.close(&name).await;
    }
}

/// Clients that hang up in the middle of the handshake, and clients that
/// flood events while connecting, leave no socket registered, no room
/// joined and a socket gauge that returns to zero.
async fn a_handshake_dropped_midway_leaves_nothing_behind(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    for round in 0..30 {
        let mut raw = RawSocket::open(&daemon, None).await;
        let token = directory_token(&format!("dropper-{round}"), &format!("s-drop-{round}"));
        raw.send(format!("40{}", json!({ "token": token }))).await;
        // Events before the CONNECT answer, then gone without a goodbye.
        // The daemon may hang up first (events for a namespace the socket
        // has not joined yet break the protocol): that is fine too.
        for i in 0..20 {
            if raw.try_send(format!("4{i}2[\"activity\"]")).await.is_err() {
                break;
            }
        }
        drop(raw);
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let connections = http.get(&daemon.api("/connections"), &admin_token()).await;
        let metrics = http
            .send(http.client().get(format!("{}/metrics", daemon.url)))
            .await;
        let gauge = metrics
            .body
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("readback_connected_sockets "))
            .map(str::to_owned);
        let users = connections.body["users"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if users.is_empty() && gauge.as_deref() == Some("0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sockets left behind: {} (gauge {gauge:?})",
            connections.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The daemon still serves a well-behaved viewer afterwards.
    let clients = Clients::start(&daemon).await;
    clients
        .connect("after", &token("after", &["radiologist"], None))
        .await;
    clients.barrier("after").await;
}

/// Makes the database refuse delivery records (as a full disk or a broken
/// table would) while everything else keeps working.
async fn break_delivery_records(env: &TestEnv) {
    use sqlx::Executor;
    let mut conn = env.sql().await;
    let statements: &[&str] = match env.db {
        Db::Sqlite => &[
            "CREATE TRIGGER deliveries_broken BEFORE INSERT ON deliveries \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        ],
        Db::Postgres => &[
            "CREATE FUNCTION deliveries_broken() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER deliveries_broken BEFORE INSERT ON deliveries \
             FOR EACH ROW EXECUTE FUNCTION deliveries_broken()",
        ],
    };
    for statement in statements {
        conn.execute(*statement).await.expect("break deliveries");
    }
}

async fn mend_delivery_records(env: &TestEnv) {
    use sqlx::Executor;
    let mut conn = env.sql().await;
    let statement = match env.db {
        Db::Sqlite => "DROP TRIGGER deliveries_broken",
        Db::Postgres => "DROP TRIGGER deliveries_broken ON deliveries",
    };
    conn.execute(statement).await.expect("mend deliveries");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Once a raise is committed, its answer is 201 whatever fails after the
/// commit; the PACS's retry is answered 200 (never a second finding) and
/// re-sends it to the recipient's sockets that have no delivery on record.
async fn a_committed_raise_is_never_answered_with_an_error(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    clients
        .connect("viewer", &token("user-123", &["radiologist"], None))
        .await;
    break_delivery_records(&env).await;

    let body = json!({
        "id": "ntf-post-commit", "recipient": { "userId": "user-123" },
        "severity": "critical", "title": "Post-commit", "patientId": "patient-789",
    });
    let first = http
        .post(&daemon.api("/notifications"), &service_token(), &body)
        .await;
    assert_eq!(
        first.status, 201,
        "a committed raise must answer 201: {}",
        first.body
    );
    assert_eq!(first.body["id"], "ntf-post-commit");
    let live = clients.next_event("viewer", "critical_notification").await;
    assert_eq!(live["id"], "ntf-post-commit");
    let metrics = http
        .send(http.client().get(format!("{}/metrics", daemon.url)))
        .await;
    let failures = metric(
        metrics.body.as_str().unwrap(),
        "readback_post_commit_failures_total",
    );
    assert!(failures >= 1.0, "post-commit failure not counted");

    // The PACS retries (it cannot know): the same finding, and a second
    // copy for the socket whose delivery is not on record.
    let retry = http
        .post(&daemon.api("/notifications"), &service_token(), &body)
        .await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    let again = clients.next_event("viewer", "critical_notification").await;
    assert_eq!(again["id"], "ntf-post-commit");
    let stored = env
        .count(
            "SELECT COUNT(*) FROM notifications WHERE title = $1",
            "Post-commit",
        )
        .await;
    assert_eq!(stored, 1, "a retry must never raise a second finding");

    // Once the database takes writes again, the deliveries are recorded
    // without anyone asking, and a further retry sends nothing new.
    mend_delivery_records(&env).await;
    env.wait_count(
        "SELECT COUNT(*) FROM deliveries WHERE notification_id = $1",
        "ntf-post-commit",
        1,
    )
    .await;
    let third = http
        .post(&daemon.api("/notifications"), &service_token(), &body)
        .await;
    assert_eq!(third.status, 200);
    clients.barrier("viewer").await;
    assert!(
        clients.drain("viewer", "critical_notification").is_empty(),
        "a recorded delivery is not sent again"
    );
}

/// A viewer that stops reading: once its send buffer is full, a critical
/// finding for it is not dropped in silence — the socket is disconnected
/// (so a real client reconnects and gets the replay) and the audit log
/// says the finding did not reach it.
async fn a_viewer_that_stops_reading_is_disconnected_not_skipped(db: Db) {
    let env = TestEnv::with_config(db, "[realtime]\nmax_message_bytes = 900000\n").await;
    // Large messages need a large enough request body.
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__MAX_BODY_BYTES", "1000000")])
        .await;
    let http = Http::default();
    let mut stalled = RawSocket::open(&daemon, Some(4096)).await;
    let answer = stalled
        .connect(&token("stalled", &["radiologist"], None))
        .await;
    assert!(answer.starts_with("40"), "{answer}");

    // It stops reading. Fill the kernel buffers with large messages, then
    // the daemon's per-socket queue with small ones.
    let big = "x".repeat(850_000);
    let mut sent = 0;
    for _ in 0..12 {
        let reply = http
            .post(
                &daemon.api("/messages"),
                &admin_token(),
                &json!({ "to": { "userId": "stalled" }, "event": "bulk", "data": { "fill": big } }),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        sent += 1;
    }
    for _ in 0..300 {
        http.post(
            &daemon.api("/messages"),
            &admin_token(),
            &json!({ "to": { "userId": "stalled" }, "event": "bulk", "data": { "n": sent } }),
        )
        .await;
        sent += 1;
    }

    let raised = http
        .raise(&daemon, json!({ "userId": "stalled" }), "Stalled viewer")
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    env.wait_audit(
        Audit::action("notification.undelivered").notification(&id),
        1,
    )
    .await;
    let undelivered = http
        .get(
            &daemon.api(&format!(
                "/audit?notificationId={id}&action=notification.undelivered"
            )),
            &admin_token(),
        )
        .await;
    assert_eq!(
        undelivered.body["items"][0]["detail"]["reason"], "send_buffer_full",
        "{}",
        undelivered.body
    );

    // The stalled connection was closed by the daemon: reading on, the
    // client reaches the end of the stream, and the finding was not in it.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let mut saw_finding = false;
        while let Some(packet) = stalled.next_text().await {
            saw_finding |= packet.contains(&id);
        }
        saw_finding
    })
    .await
    .expect("the daemon must close a connection it could not deliver to");
    assert!(!drained, "the finding was reported undelivered but arrived");

    // Reconnecting, the viewer gets it by replay.
    let clients = Clients::start(&daemon).await;
    clients
        .connect("back", &token("stalled", &["radiologist"], None))
        .await;
    let replayed = clients.next_event("back", "critical_notification").await;
    assert_eq!(replayed["id"], id.as_str());
    assert_eq!(replayed["replayed"], true);
}

/// `systemctl reload` sends SIGHUP: the daemon (here without TLS) stays up,
/// applies the new log level, and delivery goes on; viewers stay connected.
async fn sighup_reloads_and_keeps_delivering(db: Db) {
    let mut env = TestEnv::new(db).await;
    env.log_level = "warn".into();
    let logs = env.dir.path().join("logs");
    let mut daemon = env
        .start_with_env(&[("READBACK_LOGGING__DIR", logs.to_str().unwrap())])
        .await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    clients
        .connect("viewer", &token("user-123", &["radiologist"], None))
        .await;
    let log_text = || {
        std::fs::read_dir(&logs)
            .map(|dir| {
                dir.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    assert!(
        !log_text().contains("connected"),
        "at level warn, connections are not logged"
    );

    let config = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        config.replace("level = \"warn\"", "level = \"readback=debug,info\""),
    )
    .unwrap();
    daemon.signal("HUP");
    assert!(
        daemon
            .exits_within(Duration::from_millis(500))
            .await
            .is_none(),
        "readbackd exited on SIGHUP"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !log_text().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Still delivering to the socket that was connected before.
    let raised = http
        .raise(&daemon, json!({ "userId": "user-123" }), "After reload")
        .await;
    let received = clients.next_event("viewer", "critical_notification").await;
    assert_eq!(received["id"], raised["id"]);
    // And the new level applies: a new connection is logged now.
    clients
        .connect("second", &token("user-456", &["radiologist"], None))
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while !log_text().contains("user-456") {
        assert!(
            std::time::Instant::now() < deadline,
            "the reloaded log level did not apply"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A config that no longer parses is refused on SIGHUP; the daemon goes on.
    std::fs::write(env.config_path(), "[server\nlisten = ").unwrap();
    daemon.signal("HUP");
    assert!(
        daemon
            .exits_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    clients.barrier("viewer").await;
}
