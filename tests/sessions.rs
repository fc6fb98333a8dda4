//! The session monitor through Socket.IO and HTTP, with durations of a few
//! seconds. Every story runs on SQLite and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// How late a due event may be: a tick, the coalescing window, and slack
/// for a loaded CI machine.
const LATE: Duration = Duration::from_millis(900);

both_databases!(
    warning_then_idle_expiry_reach_every_tab,
    extend_moves_the_expiry_and_warns_again,
    activity_keeps_the_session_alive,
    max_lifetime_caps_extension,
    terminate_over_http_ends_the_session,
    expiry_survives_a_restart,
    bad_session_requests_are_refused,
    per_role_idle_timeouts_apply_to_new_sessions,
);

async fn warning_then_idle_expiry_reach_every_tab(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let alice = token("alice", &["radiologist"], Some("s-warn"));
    let connected_at = Instant::now();
    clients.connect("tab1", &alice).await;
    clients.connect("tab2", &alice).await;

    for tab in ["tab1", "tab2"] {
        let warning = clients.next_event(tab, "session_timeout_warning").await;
        assert_eq!(warning["sessionId"], "s-warn");
        let remaining = warning["timeRemaining"].as_i64().unwrap();
        assert!(
            (500..=1500).contains(&remaining),
            "timeRemaining {remaining}"
        );
        assert!(warning["expiresAt"].as_str().unwrap().ends_with('Z'));
    }
    let warned_after = connected_at.elapsed();
    assert!(
        warned_after >= Duration::from_millis(1400)
            && warned_after <= Duration::from_millis(1500) + LATE,
        "warned after {warned_after:?}"
    );

    for tab in ["tab1", "tab2"] {
        let expired = clients.next_event(tab, "session_expired").await;
        assert_eq!(expired["sessionId"], "s-warn");
        assert_eq!(expired["reason"], "idle");
        clients.wait_disconnect(tab).await;
    }
    let expired_after = connected_at.elapsed();
    assert!(
        expired_after >= Duration::from_millis(2900)
            && expired_after <= Duration::from_secs(3) + LATE,
        "expired after {expired_after:?}"
    );
    // Exactly one warning per tab, and the audit log has both events.
    assert!(clients.drain("tab1", "session_timeout_warning").is_empty());
    assert_eq!(
        env.audit_count(Audit::action("session.warned").session("s-warn"))
            .await,
        1
    );
    assert_eq!(
        env.audit_count(Audit::action("session.expired").session("s-warn"))
            .await,
        1
    );

    // Reconnecting with the ended session is refused with the reason.
    clients
        .connect_with("late", json!({ "auth": { "token": alice } }))
        .await
        .unwrap();
    let expired = clients.next_event("late", "session_expired").await;
    assert_eq!(expired["reason"], "idle");
    clients.wait_disconnect("late").await;
}

async fn extend_moves_the_expiry_and_warns_again(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let bob = token("bob", &["radiologist"], Some("s-ext"));
    clients.connect("tab1", &bob).await;
    clients.connect("tab2", &bob).await;

    let first = clients.next_event("tab1", "session_timeout_warning").await;
    let answer = clients
        .emit_ack("tab1", "extend_session", json!([{ "sessionId": "s-ext" }]))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["sessionId"], "s-ext");
    assert!(answer["expiresAt"].as_str().unwrap() > first["expiresAt"].as_str().unwrap());
    for tab in ["tab1", "tab2"] {
        let extended = clients.next_event(tab, "session_extended").await;
        assert_eq!(extended["expiresAt"], answer["expiresAt"]);
        assert!(extended["extendedAt"].as_str().is_some());
    }
    // A second warning, for the new expiry.
    let second = clients.next_event("tab2", "session_timeout_warning").await;
    let second = if second["expiresAt"] == first["expiresAt"] {
        clients.next_event("tab2", "session_timeout_warning").await
    } else {
        second
    };
    assert_eq!(second["expiresAt"], answer["expiresAt"]);
    let expired = clients.next_event("tab1", "session_expired").await;
    assert_eq!(expired["reason"], "idle");
    assert_eq!(
        env.audit_count(Audit::action("session.extended").session("s-ext"))
            .await,
        1
    );
}

async fn activity_keeps_the_session_alive(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let carol = token("carol", &[], Some("s-busy"));
    clients.connect("carol", &carol).await;

    // Busy for twice the idle timeout, one event every 400 ms (well inside
    // the 1.5 s before the warning).
    let busy_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < busy_until {
        let answer = clients.emit_ack("carol", "activity", json!([])).await;
        assert_eq!(answer["ok"], true);
        assert!(answer["expiresAt"].as_str().is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(clients.drain("carol", "session_timeout_warning").is_empty());
    assert!(clients.drain("carol", "session_expired").is_empty());
    let session = Http::default()
        .get(&daemon.api("/sessions/s-busy"), &carol)
        .await;
    assert_eq!(session.body["state"], "active");

    // Then idle: it expires.
    assert_eq!(
        clients.next_event("carol", "session_expired").await["reason"],
        "idle"
    );
}

async fn max_lifetime_caps_extension(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    // Registered by the PACS with a 4 s lifetime and the 3 s idle timeout.
    let registered = http
        .send(
            http.client()
                .put(daemon.api("/sessions/s-cap"))
                .bearer_auth(service_token())
                .json(&json!({ "userId": "dan", "maxLifetime": 4000 })),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(registered.body["state"], "active");
    let started = Instant::now();
    let dan = token("dan", &[], Some("s-cap"));
    clients.connect("dan", &dan).await;

    // Extending keeps working, but past 1 s the expiry stops moving: it
    // has reached start + 4 s.
    let mut expiries = Vec::new();
    while started.elapsed() < Duration::from_millis(3300) {
        let answer = clients
            .emit_ack("dan", "extend_session", json!([{ "sessionId": "s-cap" }]))
            .await;
        assert_eq!(answer["ok"], true, "{answer}");
        expiries.push(answer["expiresAt"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last_expiry = expiries.last().unwrap().clone();
    assert!(expiries.len() >= 6);
    assert!(
        expiries[expiries.len() - 4..]
            .iter()
            .all(|e| *e == last_expiry),
        "{expiries:?}"
    );
    let expired = clients.next_event("dan", "session_expired").await;
    assert_eq!(expired["reason"], "max_lifetime");
    let lived = started.elapsed();
    assert!(lived <= Duration::from_secs(4) + LATE, "lived {lived:?}");
    let session = http
        .get(&daemon.api("/sessions/s-cap"), &service_token())
        .await;
    assert_eq!(session.body["state"], "expired");
    assert_eq!(session.body["endReason"], "max_lifetime");
    // The expiry never moved past start + max lifetime.
    let started_at = session.body["startedAt"].as_str().unwrap();
    let expires_at = session.body["expiresAt"].as_str().unwrap();
    assert_eq!(expires_at, last_expiry);
    assert!(expires_at > started_at);
}

async fn terminate_over_http_ends_the_session(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let erin = token("erin", &[], Some("s-term"));
    clients.connect("tab1", &erin).await;
    clients.connect("tab2", &erin).await;

    let viewer = http.delete(&daemon.api("/sessions/s-term"), &erin).await;
    assert_eq!(viewer.status, 403);
    let ended = http
        .delete(&daemon.api("/sessions/s-term"), &service_token())
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.body["state"], "terminated");
    for tab in ["tab1", "tab2"] {
        let expired = clients.next_event(tab, "session_expired").await;
        assert_eq!(expired["reason"], "terminated");
        clients.wait_disconnect(tab).await;
    }
    let session = http.get(&daemon.api("/sessions/s-term"), &erin).await;
    assert_eq!(session.body["state"], "terminated");
    assert_eq!(
        env.audit_count(Audit::action("session.terminated").session("s-term"))
            .await,
        1
    );
    assert_eq!(
        http.delete(&daemon.api("/sessions/s-unknown"), &service_token())
            .await
            .status,
        404
    );
}

async fn expiry_survives_a_restart(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let daemon = env.start().await;
    let frank = token("frank", &[], Some("s-restart"));
    {
        let clients = Clients::start(&daemon).await;
        clients.connect("frank", &frank).await;
        clients.emit_ack("frank", "activity", json!([])).await;
    }
    let active_at = Instant::now();
    daemon.kill9().await;
    let daemon = env.start().await;
    let http = Http::default();
    let deadline = Instant::now() + WAIT;
    let session = loop {
        let session = http
            .get(&daemon.api("/sessions/s-restart"), &service_token())
            .await;
        if session.body["state"] != "active" || Instant::now() > deadline {
            break session;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(session.body["state"], "expired");
    assert_eq!(session.body["endReason"], "idle");
    let ended_after = active_at.elapsed();
    assert!(
        ended_after <= Duration::from_secs(3) + LATE,
        "ended after {ended_after:?}"
    );
    assert_eq!(
        env.audit_count(Audit::action("session.warned").session("s-restart"))
            .await,
        1
    );
}

async fn bad_session_requests_are_refused(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let gina = token("gina", &[], Some("s-gina"));
    clients.connect("gina", &gina).await;

    for (args, code) in [
        (json!([]), "bad_request"),
        (json!([{}]), "bad_request"),
        (json!([{ "sessionId": 42 }]), "bad_request"),
        (json!(["s-gina"]), "bad_request"),
        (json!([{ "sessionId": "s-someone-else" }]), "forbidden"),
    ] {
        let answer = clients
            .emit_ack("gina", "extend_session", args.clone())
            .await;
        assert_eq!(answer["ok"], false, "{args}");
        assert_eq!(answer["code"], code, "{args} -> {answer}");
    }
    clients.barrier("gina").await;

    let put = |id: &str, body: serde_json::Value| {
        http.send(
            http.client()
                .put(daemon.api(&format!("/sessions/{id}")))
                .bearer_auth(service_token())
                .json(&body),
        )
    };
    for (body, field) in [
        (json!({}), "userId"),
        (json!({ "userId": 7 }), "userId"),
        (
            json!({ "userId": "u", "idleTimeout": "15m" }),
            "idleTimeout",
        ),
        (json!({ "userId": "u", "idleTimeout": 0 }), "idleTimeout"),
        (
            json!({ "userId": "u", "maxLifetime": 999_999_999_999u64 }),
            "maxLifetime",
        ),
        (
            json!({ "userId": "u", "idleTimeout": 60000, "maxLifetime": 1000 }),
            "idleTimeout",
        ),
        (json!({ "userId": "u", "colour": "red" }), "colour"),
    ] {
        let reply = put("s-new", body.clone()).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.body["field"], field, "{body} -> {}", reply.body);
    }
    assert_eq!(
        http.get(&daemon.api("/sessions/s-new"), &service_token())
            .await
            .status,
        404
    );
    // Someone else's session: 409 on PUT; on GET a viewer is told it does
    // not exist, as for an unknown id (ids cannot be probed).
    assert_eq!(
        put("s-gina", json!({ "userId": "mallory" })).await.status,
        409
    );
    let mallory = token("mallory", &[], None);
    assert_eq!(
        http.get(&daemon.api("/sessions/s-gina"), &mallory)
            .await
            .status,
        404
    );
    let own = http.get(&daemon.api("/sessions/s-gina"), &gina).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["userId"], "gina");
}

async fn per_role_idle_timeouts_apply_to_new_sessions(db: Db) {
    let config = short_sessions("100ms").replace(
        "activity_coalesce = \"100ms\"",
        "activity_coalesce = \"100ms\"\nidle_timeout_by_role = { ed-physician = \"2s\", reading-room = \"30m\" }",
    );
    let env = TestEnv::with_config(db, &config).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let ed = token("hank", &["radiologist", "ed-physician"], Some("s-ed"));
    let reader = token("ivy", &["reading-room"], Some("s-reader"));
    let started = Instant::now();
    clients.connect("ed", &ed).await;
    clients.connect("reader", &reader).await;

    let ed_session = http
        .get(&daemon.api("/sessions/s-ed"), &service_token())
        .await;
    assert_eq!(ed_session.body["idleTimeout"], 2000);
    let reader_session = http
        .get(&daemon.api("/sessions/s-reader"), &service_token())
        .await;
    assert_eq!(reader_session.body["idleTimeout"], 1_800_000);

    let warning = clients.next_event("ed", "session_timeout_warning").await;
    assert!(
        warning["timeRemaining"].as_i64().unwrap() <= 1000,
        "{warning}"
    );
    assert_eq!(
        clients.next_event("ed", "session_expired").await["reason"],
        "idle"
    );
    assert!(started.elapsed() <= Duration::from_secs(2) + LATE);
    clients.barrier("reader").await;
    assert!(
        clients
            .drain("reader", "session_timeout_warning")
            .is_empty()
    );
}
