//! Two daemons on one PostgreSQL act as one: rooms are shared through the
//! database, and each scheduled event is claimed by exactly one daemon.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SHORT_SESSIONS: &str = r#"
[sessions]
idle_timeout = "3s"
warning_before = "1500ms"
max_lifetime = "1h"
activity_coalesce = "100ms"

[scheduler]
tick = "50ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_warn_and_expire_each_session_exactly_once() {
    let env = TestEnv::with_config(Db::Postgres, SHORT_SESSIONS).await;
    let a = env.start().await;
    let b = env.start().await;
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
            env.count("SELECT COUNT(*) FROM audit_log WHERE action = 'session.warned' AND session_id = $1", session).await,
            1
        );
        assert_eq!(
            env.count("SELECT COUNT(*) FROM audit_log WHERE action = 'session.expired' AND session_id = $1", session).await,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_raised_on_one_daemon_reaches_tabs_on_both() {
    let env = TestEnv::new(Db::Postgres).await;
    let a = env.start().await;
    let b = env.start().await;
    let on_a = Clients::start(&a).await;
    let on_b = Clients::start(&b).await;
    let http = Http::default();
    let alice = token("alice", &["radiologist"], None);
    on_a.connect("tab-a", &alice).await;
    on_b.connect("tab-b", &alice).await;

    let raised = http
        .raise(&b, json!({ "userId": "alice" }), "Across nodes")
        .await;
    let id = raised["id"].as_str().unwrap();
    assert_eq!(
        raised["deliveries"].as_array().unwrap().len(),
        2,
        "{raised}"
    );
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
    let told = on_b.next_event("tab-b", "notification_acknowledged").await;
    assert_eq!(told["notificationId"], id);

    // Both daemons see both sockets.
    for daemon in [&a, &b] {
        let status = http
            .get(&daemon.api("/users/alice/status"), &service_token())
            .await;
        assert_eq!(status.body["sockets"], 2, "{}", status.body);
    }
}
