//! Daemons on one PostgreSQL act as one: rooms are shared through the
//! database or through Redis, each scheduled event is claimed by exactly
//! one daemon, and their audit rows form one unbroken chain. A story that
//! holds for both ways of sharing rooms runs on both (`cluster_backends!`);
//! Redis outages and the Redis-only features have stories of their own.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

cluster_backends!(two_daemons_act_as_one);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_warn_and_expire_each_session_exactly_once() {
    let env = TestEnv::with_config(Db::Postgres, &short_sessions("50ms")).await;
    let a = env.start().await;
    let b = env.start().await;
    // A third daemon with no sockets of its own still competes for claims.
    let _c = env.start().await;
    let on_a = Clients::start(&a).await;
    let on_b = Clients::start(&b).await;

    // Three sessions, each with one tab on each daemon.
    let sessions = ["s-1", "s-2", "s-3"];
    for (i, session) in sessions.iter().enumerate() {
        let user = format!("user-{i}");
        let tok = token(&user, &["radiologist"], Some(session));
        on_a.connect(session, &tok).await;
        on_b.connect(session, &tok).await;
    }
    for session in sessions {
        for clients in [&on_a, &on_b] {
            let warning = clients.next_event(session, "session_timeout_warning").await;
            assert_eq!(warning["sessionId"], session);
            let expired = clients.next_event(session, "session_expired").await;
            assert_eq!(expired["reason"], "idle");
            clients.wait_disconnect(session).await;
        }
    }
    // Give a duplicate every chance to show up: several more ticks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for session in sessions {
        for clients in [&on_a, &on_b] {
            assert!(
                clients.drain(session, "session_timeout_warning").is_empty(),
                "{session}: second warning"
            );
            assert!(
                clients.drain(session, "session_expired").is_empty(),
                "{session}: second expiry"
            );
        }
        assert_eq!(
            env.audit_count(Audit::action("session.warned").session(session))
                .await,
            1
        );
        assert_eq!(
            env.audit_count(Audit::action("session.expired").session(session))
                .await,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raises_on_three_daemons_at_once_extend_one_audit_chain() {
    let env = TestEnv::new(Db::Postgres).await;
    let daemons = [env.start().await, env.start().await, env.start().await];
    let http = Http::default();
    // Every daemon appends at the same time: they queue on the chain
    // head's row lock, and the database refuses any row or head move
    // that would not extend the chain.
    let raises = (0..60).map(|i| {
        let (http, daemon) = (http.clone(), &daemons[i % daemons.len()]);
        async move {
            http.raise(daemon, json!({ "userId": "alice" }), &format!("n{i}"))
                .await
        }
    });
    futures_util::future::join_all(raises).await;
    let (ok, text) = env.audit_verify();
    assert!(ok, "{text}");
    assert!(text.contains("60 findings match"), "{text}");
}

/// Two daemons share rooms (through Redis, or through PostgreSQL):
/// delivery, acknowledgement, broadcast, status, disconnect and replay work
/// whichever daemon a viewer or the PACS talks to.
async fn two_daemons_act_as_one(backend: Cluster) {
    let env = TestEnv::cluster(backend, "").await;
    let a = env.start().await;
    let b = env.start().await;
    let on_a = Clients::start(&a).await;
    let on_b = Clients::start(&b).await;
    let http = Http::default();
    let alice = token("alice", &["radiologist"], None);
    let tab_a = on_a.connect("tab-a", &alice).await["socketId"].clone();
    let tab_b = on_b.connect("tab-b", &alice).await["socketId"].clone();
    // Each socket has one connection id, the same on every daemon.
    let mut connections = vec![tab_a, tab_b];
    connections.sort_by_key(Value::to_string);
    let sorted = |ids: &Value| {
        let mut ids = ids.as_array().cloned().unwrap_or_default();
        ids.sort_by_key(Value::to_string);
        ids
    };

    let raised = http.raise(&b, json!({ "userId": "alice" }), "via B").await;
    let id = raised["id"].as_str().unwrap();
    let delivered_to: Vec<Value> = raised["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["socketId"].clone())
        .collect();
    assert_eq!(sorted(&json!(delivered_to)), connections, "{raised}");
    assert_eq!(
        on_a.next_event("tab-a", "critical_notification").await["id"],
        id
    );
    assert_eq!(
        on_b.next_event("tab-b", "critical_notification").await["id"],
        id
    );
    // Acknowledged on A: the tab on B is told too.
    assert_eq!(on_a.ack("tab-a", id).await["ok"], true);
    assert_eq!(
        on_b.next_event("tab-b", "notification_acknowledged").await["notificationId"],
        id
    );

    // Both daemons see both sockets.
    for daemon in [&a, &b] {
        let status = http
            .get(&daemon.api("/users/alice/status"), &service_token())
            .await;
        assert_eq!(status.body["sockets"], 2, "{}", status.body);
        assert_eq!(sorted(&status.body["socketIds"]), connections);
    }
    http.post(
        &a.api("/broadcast"),
        &admin_token(),
        &json!({ "role": "radiologist", "message": "reading room 2 closed", "level": "warning" }),
    )
    .await;
    assert_eq!(
        on_b.next_event("tab-b", "system_alert").await["message"],
        "reading room 2 closed"
    );
    assert_eq!(
        on_a.next_event("tab-a", "system_alert").await["level"],
        "warning"
    );

    let dropped = http
        .delete(&b.api("/users/alice/connections"), &admin_token())
        .await;
    assert_eq!(dropped.body["disconnected"], 2, "{}", dropped.body);
    on_a.wait_disconnect("tab-a").await;
    on_b.wait_disconnect("tab-b").await;

    // Raised on A while alice is offline; replayed when she lands on B.
    let offline = http
        .raise(&a, json!({ "userId": "alice" }), "while away")
        .await;
    on_b.connect("again", &alice).await;
    let replayed = on_b.next_event("again", "critical_notification").await;
    assert_eq!(replayed["id"], offline["id"]);
    assert_eq!(replayed["replayed"], true);
}

/// Redis going away: each daemon keeps serving its own sockets, nothing is
/// lost, and a viewer on the other daemon gets the notification by replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_daemon_serves_its_own_sockets() {
    let mut env = TestEnv::cluster(Cluster::Redis, "").await;
    let a = env.start().await;
    let b = env.start().await;
    let on_a = Clients::start(&a).await;
    let on_b = Clients::start(&b).await;
    let http = Http::default();
    let alice = token("alice", &["radiologist"], None);
    on_a.connect("tab-a", &alice).await;
    on_b.connect("tab-b", &alice).await;
    env.redis.as_mut().unwrap().stop().await;

    let raised = http
        .raise(&a, json!({ "userId": "alice" }), "redis down")
        .await;
    let id = raised["id"].as_str().unwrap();
    assert_eq!(
        on_a.next_event("tab-a", "critical_notification").await["id"],
        id
    );
    assert_eq!(on_a.ack("tab-a", id).await["ok"], true);

    let second = http
        .raise(&a, json!({ "userId": "alice" }), "for the other tab")
        .await;
    on_b.close("tab-b").await;
    on_b.connect("tab-b2", &alice).await;
    let replayed = on_b.next_event("tab-b2", "critical_notification").await;
    assert_eq!(replayed["id"], second["id"]);
}

/// Messages, topics, presence and one-connection-per-user across two
/// daemons sharing rooms through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_topics_and_presence_span_daemons() {
    let env = TestEnv::cluster(
        Cluster::Redis,
        "[realtime]\npresence_events = true\nsingle_connection_per_user = true\n\n\
         [realtime.topics]\nradiologist = [\"study:*\"]\n",
    )
    .await;
    let a = env.start().await;
    let b = env.start().await;
    let on_a = Clients::start(&a).await;
    let on_b = Clients::start(&b).await;
    let http = Http::default();

    on_a.connect("admin", &admin_token()).await;
    on_a.next_event("admin", "user_online").await;
    on_b.connect("alice", &token("alice", &["radiologist"], None))
        .await;
    // The admin on A hears of alice arriving on B.
    assert_eq!(
        on_a.next_event("admin", "user_online").await["userId"],
        "alice"
    );
    let ack = on_b
        .emit_ack("alice", "subscribe", json!([{ "topic": "study:77" }]))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");

    // Sent through A, received on B: by topic and by user.
    for to in [json!({ "topic": "study:77" }), json!({ "userId": "alice" })] {
        let sent = http
            .post(
                &a.api("/messages"),
                &service_token(),
                &json!({ "to": to, "event": "study_available", "data": { "studyId": "77" } }),
            )
            .await;
        assert_eq!(sent.status, 202, "{}", sent.body);
        assert_eq!(
            on_b.next_event("alice", "study_available").await["studyId"],
            "77"
        );
    }
    let presence = http
        .get(&a.api("/presence?role=radiologist"), &service_token())
        .await;
    assert_eq!(presence.body["total"], 1, "{}", presence.body);
    assert_eq!(presence.body["users"][0]["userId"], "alice");

    // Alice signs in on A: her connection on B is closed.
    on_a.connect("alice-again", &token("alice", &["radiologist"], None))
        .await;
    assert_eq!(
        on_b.next_event("alice", "system_alert").await["reason"],
        "replaced_by_new_connection"
    );
    on_b.wait_disconnect("alice").await;
    let status = http
        .get(&b.api("/users/alice/status"), &service_token())
        .await;
    assert_eq!(status.body["sockets"], 1, "{}", status.body);
}
