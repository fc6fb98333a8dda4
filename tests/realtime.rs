//! Ordinary real-time traffic beside critical findings: messages, topics,
//! presence, sessions of a user, one connection per user and escalation
//! for offline recipients. Every story runs on SQLite and PostgreSQL; the
//! cross-node ones run two daemons on one PostgreSQL and one Redis.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const TOPICS: &str = r#"
[realtime]
presence_events = true
message_events = ["study_*", "report_*", "worklist.*"]
max_message_bytes = 256
max_topics_per_socket = 3

[realtime.topics]
radiologist = ["study:*", "worklist:*"]
"#;

both_databases!(
    messages_reach_exactly_their_addressees,
    bad_messages_are_refused_and_nothing_is_sent,
    topics_follow_the_role_patterns,
    presence_lists_and_announces_users,
    sessions_of_a_user_are_listed_by_expiry,
    a_new_connection_replaces_the_old_one_when_configured,
    an_offline_recipient_escalates_at_once_when_configured,
    the_console_feed_is_for_admins_and_auditors,
);

fn viewer(user: &str) -> String {
    token(user, &["radiologist"], None)
}

async fn send(daemon: &Daemon, body: Value) -> Reply {
    Http::default()
        .post(&daemon.api("/messages"), &service_token(), &body)
        .await
}

/// A client event with one payload, answered through the ack callback.
async fn request(clients: &Clients, name: &str, event: &str, payload: Value) -> Value {
    clients.emit_ack(name, event, json!([payload])).await
}

/// Waits until every pending event has reached the driver, then says which
/// `event`s `name` got.
async fn received(clients: &Clients, name: &str, event: &str) -> Vec<Value> {
    clients.barrier(name).await;
    clients.drain(name, event)
}

async fn messages_reach_exactly_their_addressees(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("alice", &viewer("alice")).await;
    clients.connect("alice-2", &viewer("alice")).await;
    clients.connect("bob", &viewer("bob")).await;
    clients
        .connect("tech", &token("tina", &["technologist"], None))
        .await;
    let all = ["alice", "alice-2", "bob", "tech"];

    let cases = [
        (json!({ "userId": "alice" }), vec!["alice", "alice-2"]),
        (
            json!({ "userIds": ["alice", "bob"] }),
            vec!["alice", "alice-2", "bob"],
        ),
        (json!({ "role": "technologist" }), vec!["tech"]),
        (json!({ "all": true }), all.to_vec()),
    ];
    for (index, (to, expected)) in cases.into_iter().enumerate() {
        let reply = send(
            &daemon,
            json!({ "to": to, "event": "study_available", "data": { "studyId": format!("S-{index}") } }),
        )
        .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        assert_eq!(reply.body["event"], "study_available");
        for name in all {
            let got = received(&clients, name, "study_available").await;
            if expected.contains(&name) {
                assert_eq!(got.len(), 1, "{name} for {to}: {got:?}");
                assert_eq!(got[0]["studyId"], format!("S-{index}"));
                assert!(got[0]["timestamp"].is_string(), "{got:?}");
            } else {
                assert!(got.is_empty(), "{name} got a message for {to}: {got:?}");
            }
        }
    }

    // A topic reaches its subscribers only, and stops after unsubscribe.
    let ack = request(
        &clients,
        "bob",
        "subscribe",
        json!({ "topic": "study:1.2.840.99" }),
    )
    .await;
    assert_eq!(ack, json!({ "ok": true, "topic": "study:1.2.840.99" }));
    let to_topic = json!({ "to": { "topic": "study:1.2.840.99" }, "event": "report_signed", "data": { "by": "dr-x" } });
    assert_eq!(send(&daemon, to_topic.clone()).await.status, 202);
    assert_eq!(
        clients.next_event("bob", "report_signed").await["by"],
        "dr-x"
    );
    for name in ["alice", "alice-2", "tech"] {
        assert!(received(&clients, name, "report_signed").await.is_empty());
    }
    let ack = request(
        &clients,
        "bob",
        "unsubscribe",
        json!({ "topic": "study:1.2.840.99" }),
    )
    .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(send(&daemon, to_topic).await.status, 202);
    assert!(received(&clients, "bob", "report_signed").await.is_empty());
}

async fn bad_messages_are_refused_and_nothing_is_sent(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("alice", &viewer("alice")).await;
    let http = Http::default();

    let refusals = [
        (
            json!({ "to": { "userId": "alice" }, "event": "critical_notification", "data": { "id": "fake" } }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "session_expired" }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "disconnect" }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "billing_ready" }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "study available" }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": 7 }),
            400,
            "event",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "study_x", "data": { "blob": "x".repeat(300) } }),
            400,
            "data",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "study_x", "data": "text" }),
            400,
            "data",
        ),
        (
            json!({ "to": { "userId": "alice", "role": "radiologist" }, "event": "study_x" }),
            400,
            "to",
        ),
        (json!({ "to": {}, "event": "study_x" }), 400, "to"),
        (json!({ "to": "alice", "event": "study_x" }), 400, "to"),
        (
            json!({ "to": { "group": "x" }, "event": "study_x" }),
            400,
            "to.group",
        ),
        (
            json!({ "to": { "topic": "no spaces" }, "event": "study_x" }),
            400,
            "to.topic",
        ),
        (
            json!({ "to": { "topic": "readback.console" }, "event": "study_x" }),
            400,
            "to.topic",
        ),
        (
            json!({ "to": { "userId": "alice" }, "event": "study_x", "extra": 1 }),
            400,
            "extra",
        ),
    ];
    for (body, status, field) in refusals {
        let reply = send(&daemon, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json", "{body}");
        assert_eq!(reply.body["field"], field, "{body}: {}", reply.body);
    }
    // Only the service and admin roles may send.
    let as_viewer = http
        .post(
            &daemon.api("/messages"),
            &viewer("alice"),
            &json!({ "to": { "all": true }, "event": "study_x" }),
        )
        .await;
    assert_eq!(as_viewer.status, 403, "{}", as_viewer.body);
    let broken = http
        .send(
            http.client()
                .post(daemon.api("/messages"))
                .bearer_auth(service_token())
                .header("content-type", "application/json")
                .body("{\"to\": {"),
        )
        .await;
    assert_eq!(broken.status, 400, "{}", broken.body);

    clients.barrier("alice").await;
    let inbox: Vec<_> = [
        "critical_notification",
        "session_expired",
        "study_x",
        "billing_ready",
    ]
    .iter()
    .flat_map(|event| clients.drain("alice", event))
    .collect();
    assert!(inbox.is_empty(), "a refused message was sent: {inbox:?}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM notifications WHERE id <> $1", "")
            .await,
        0
    );
}

async fn topics_follow_the_role_patterns(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("rad", &viewer("alice")).await;
    clients
        .connect("tech", &token("tina", &["technologist"], None))
        .await;

    for topic in ["study:1.2.3", "worklist:ct-1"] {
        let ack = request(&clients, "rad", "subscribe", json!({ "topic": topic })).await;
        assert_eq!(ack, json!({ "ok": true, "topic": topic }));
    }
    let refused = [
        ("rad", json!({ "topic": "billing:7" }), "forbidden"),
        ("rad", json!({ "topic": "readback.console" }), "forbidden"),
        ("rad", json!({ "topic": "readback.anything" }), "forbidden"),
        ("tech", json!({ "topic": "study:1.2.3" }), "forbidden"),
        ("rad", json!({ "topic": "has space" }), "bad_request"),
        ("rad", json!({ "topic": "x".repeat(201) }), "bad_request"),
        ("rad", json!({ "topic": 5 }), "bad_request"),
        ("rad", json!({}), "bad_request"),
        ("rad", json!("study:1"), "bad_request"),
    ];
    for (name, payload, code) in refused {
        let ack = request(&clients, name, "subscribe", payload.clone()).await;
        assert_eq!(ack["ok"], false, "{name} {payload}: {ack}");
        assert_eq!(ack["code"], code, "{name} {payload}: {ack}");
        assert!(ack["message"].is_string());
    }
    // At most three topics per connection; joining one again is no new one.
    let third = request(&clients, "rad", "subscribe", json!({ "topic": "study:9" })).await;
    assert_eq!(third["ok"], true, "{third}");
    let fourth = request(&clients, "rad", "subscribe", json!({ "topic": "study:10" })).await;
    assert_eq!(fourth["code"], "conflict", "{fourth}");
    let again = request(&clients, "rad", "subscribe", json!({ "topic": "study:9" })).await;
    assert_eq!(again["ok"], true, "{again}");
    let left = request(
        &clients,
        "rad",
        "unsubscribe",
        json!({ "topic": "study:9" }),
    )
    .await;
    assert_eq!(left["ok"], true, "{left}");
    let now_fits = request(&clients, "rad", "subscribe", json!({ "topic": "study:10" })).await;
    assert_eq!(now_fits["ok"], true, "{now_fits}");

    // A refused subscription joined nothing.
    assert_eq!(
        send(
            &daemon,
            json!({ "to": { "topic": "billing:7" }, "event": "study_x" })
        )
        .await
        .status,
        202
    );
    assert!(received(&clients, "rad", "study_x").await.is_empty());
    assert!(received(&clients, "tech", "study_x").await.is_empty());
}

async fn presence_lists_and_announces_users(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    clients
        .connect("admin", &token("root", &["admin"], None))
        .await;
    // Admins see themselves arrive too.
    assert_eq!(
        clients.next_event("admin", "user_online").await["userId"],
        "root"
    );
    clients.connect("alice-1", &viewer("alice")).await;
    let online = clients.next_event("admin", "user_online").await;
    assert_eq!(online["userId"], "alice");
    assert_eq!(online["roles"], json!(["radiologist"]));
    // A second tab is not a second arrival.
    clients.connect("alice-2", &viewer("alice")).await;
    clients
        .connect("tech", &token("tina", &["technologist"], None))
        .await;
    assert_eq!(
        clients.next_event("admin", "user_online").await["userId"],
        "tina"
    );
    assert!(received(&clients, "admin", "user_online").await.is_empty());

    let all = http.get(&daemon.api("/presence"), &service_token()).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.body["total"], 3, "{}", all.body); // root, alice, tina
    let radiologists = http
        .get(&daemon.api("/presence?role=radiologist"), &admin_token())
        .await;
    assert_eq!(radiologists.body["total"], 1, "{}", radiologists.body);
    let alice = &radiologists.body["users"][0];
    assert_eq!(alice["userId"], "alice");
    assert_eq!(alice["sockets"], 2);
    assert_eq!(alice["roles"], json!(["radiologist"]));
    assert!(alice["since"].is_string(), "{alice}");
    let auditor = http
        .get(
            &daemon.api("/presence"),
            &token("audrey", &["auditor"], None),
        )
        .await;
    assert_eq!(auditor.status, 200);
    for (url, status) in [
        ("/presence?role=radiologist&x=1", 400),
        ("/presence?role=", 400),
    ] {
        let reply = http.get(&daemon.api(url), &service_token()).await;
        assert_eq!(reply.status, status, "{url}: {}", reply.body);
    }
    let as_viewer = http.get(&daemon.api("/presence"), &viewer("bob")).await;
    assert_eq!(as_viewer.status, 403);

    // Offline only when the last tab goes.
    clients.close("alice-1").await;
    clients.barrier("admin").await;
    assert!(received(&clients, "admin", "user_offline").await.is_empty());
    clients.close("alice-2").await;
    assert_eq!(
        clients.next_event("admin", "user_offline").await["userId"],
        "alice"
    );
    let after = http
        .get(&daemon.api("/presence?role=radiologist"), &service_token())
        .await;
    assert_eq!(after.body["total"], 0, "{}", after.body);
}

async fn sessions_of_a_user_are_listed_by_expiry(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    for (session, user, idle_ms) in [
        ("s-long", "alice", 600_000),
        ("s-short", "alice", 60_000),
        ("s-bob", "bob", 30_000),
    ] {
        let reply = http
            .send(
                http.client()
                    .put(daemon.api(&format!("/sessions/{session}")))
                    .bearer_auth(service_token())
                    .json(&json!({ "userId": user, "idleTimeout": idle_ms })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let ended = http
        .delete(&daemon.api("/sessions/s-bob"), &service_token())
        .await;
    assert_eq!(ended.status, 200);

    let alice = http
        .get(&daemon.api("/sessions?userId=alice"), &service_token())
        .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let ids: Vec<&str> = alice.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s-short", "s-long"]);
    assert_eq!(alice.body["items"][0]["state"], "active");
    assert_eq!(alice.body["items"][0]["warned"], false);

    // Without a user: every active session (bob's was terminated).
    let everyone = http
        .get(&daemon.api("/sessions?limit=1"), &admin_token())
        .await;
    assert_eq!(everyone.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(everyone.body["items"][0]["sessionId"], "s-short");
    let none = http
        .get(&daemon.api("/sessions?userId=carol"), &service_token())
        .await;
    assert_eq!(none.body["items"], json!([]));
    for (url, field) in [
        ("/sessions?limit=0", "limit"),
        ("/sessions?limit=x", "limit"),
        ("/sessions?user=alice", "user"),
    ] {
        let reply = http.get(&daemon.api(url), &service_token()).await;
        assert_eq!(reply.status, 400, "{url}");
        assert_eq!(reply.body["field"], field, "{url}: {}", reply.body);
    }
    let as_viewer = http
        .get(&daemon.api("/sessions?userId=alice"), &viewer("alice"))
        .await;
    assert_eq!(as_viewer.status, 403);
}

async fn a_new_connection_replaces_the_old_one_when_configured(db: Db) {
    let env = TestEnv::with_config(db, "[realtime]\nsingle_connection_per_user = true\n").await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("old", &viewer("alice")).await;
    clients.connect("bob", &viewer("bob")).await;
    clients.connect("new", &viewer("alice")).await;
    let alert = clients.next_event("old", "system_alert").await;
    assert_eq!(alert["reason"], "replaced_by_new_connection");
    clients.wait_disconnect("old").await;

    // The new connection and other users are untouched and still served.
    let raised = Http::default()
        .raise(&daemon, json!({ "userId": "alice" }), "after replace")
        .await;
    assert_eq!(
        clients.next_event("new", "critical_notification").await["id"],
        raised["id"]
    );
    assert!(received(&clients, "bob", "system_alert").await.is_empty());
    env.wait_audit(Audit::action("connection.replaced").user("alice"), 1)
        .await;
}

async fn an_offline_recipient_escalates_at_once_when_configured(db: Db) {
    let smtp = SmtpServer::start().await;
    let config = format!(
        "{}\n[scheduler]\ntick = \"100ms\"\n\n[escalation]\nescalate_when_offline = true\n\n\
         [[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n",
        smtp.config()
    );
    let env = TestEnv::with_config(db, &config).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("online", &viewer("olivia")).await;
    let http = Http::default();
    let raise = |user: &str, severity: &str| {
        json!({
            "recipient": { "userId": user },
            "severity": severity,
            "title": "Critical Finding Detected",
            "ackWithin": 600_000,
        })
    };

    // Offline and critical: escalated now, ten minutes before its deadline.
    let offline = http.raise_with(&daemon, &raise("oscar", "critical")).await;
    let id = offline["id"].as_str().unwrap();
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, "oncall@hospital.example");
    let reference = offline["reference"].as_str().unwrap();
    assert!(mails[0].subject.contains(reference), "{}", mails[0].subject);
    assert!(mails[0].raw.contains("escalated early"), "{}", mails[0].raw);
    env.wait_audit(
        Audit::action("escalation.recipient_offline").notification(id),
        1,
    )
    .await;

    // Online, or not critical: escalation waits for the deadline.
    let online = http
        .post(
            &daemon.api("/notifications"),
            &service_token(),
            &raise("olivia", "critical"),
        )
        .await;
    let urgent = http
        .post(
            &daemon.api("/notifications"),
            &service_token(),
            &raise("oscar", "urgent"),
        )
        .await;
    clients.next_event("online", "critical_notification").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        smtp.mails().len(),
        1,
        "only the offline critical one escalated"
    );
    for reply in [online, urgent] {
        let id = reply.body["id"].as_str().unwrap();
        assert_eq!(
            env.audit_count(Audit::action("escalation.%").notification(id))
                .await,
            0
        );
        let state = http
            .get(
                &daemon.api(&format!("/notifications/{id}")),
                &service_token(),
            )
            .await;
        assert_eq!(state.body["state"], "pending");
    }
}

async fn the_console_feed_is_for_admins_and_auditors(db: Db) {
    let env = TestEnv::with_config(db, TOPICS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients
        .connect("console", &token("audrey", &["auditor"], None))
        .await;
    let ack = request(
        &clients,
        "console",
        "subscribe",
        json!({ "topic": "readback.console" }),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    clients.connect("alice", &viewer("alice")).await;
    let arrived = clients.next_event("console", "console_update").await;
    assert_eq!(arrived["kind"], "connected");
    assert_eq!(arrived["userId"], "alice");

    let raised = Http::default()
        .raise(&daemon, json!({ "userId": "alice" }), "for the console")
        .await;
    let id = raised["id"].as_str().unwrap();
    let update = clients.next_event("console", "console_update").await;
    assert_eq!(update["kind"], "raised");
    assert_eq!(update["notificationId"], id);
    // Ids only: the console reads details through the API.
    assert!(update.get("title").is_none() && update.get("patientId").is_none());
    clients.ack("alice", id).await;
    let update = clients.next_event("console", "console_update").await;
    assert_eq!(update["kind"], "acknowledged");
    assert_eq!(update["userId"], "alice");
    // A message cannot impersonate the feed.
    let forged = send(
        &daemon,
        json!({ "to": { "topic": "readback.console" }, "event": "console_update" }),
    )
    .await;
    assert_eq!(forged.status, 400);
}
