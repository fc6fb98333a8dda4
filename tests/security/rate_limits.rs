//! Rate limits per identity and bounded replay (issue #14): a caller over
//! its limit is refused before anything is stored or changed — HTTP `429`
//! with `Retry-After`, a Socket.IO `rate_limited` refusal — while other
//! callers go on being served; and one (re)connect replays a bounded number
//! of findings, announces the rest and writes one audit row for them.
//! Limits are configured small here, so a handful of requests crosses them.

use serde_json::{Value, json};

use crate::common::*;

crate::both_databases!(
    a_raise_burst_over_the_limit_is_refused_and_stores_nothing,
    a_client_event_flood_on_one_socket_is_refused_and_changes_nothing,
    an_audit_export_flood_is_refused,
    replay_is_bounded_announced_and_summarised,
    reconnects_of_one_user_are_rate_limited,
    an_address_refused_too_often_is_held_not_refused,
    handshakes_refused_over_a_cap_count_as_refused_logins,
);

/// Limits small enough to cross with a few requests, refilled slowly (one
/// every 20 s), so a slow machine does not refill them mid-test.
const SMALL_LIMITS: &str = "[limits]\nraises_burst = 5\nraises_per_second = 0.05\n\
     client_events_burst = 5\nclient_events_per_second = 0.05\n\
     audit_queries_burst = 3\naudit_queries_per_second = 0.05\n\
     connects_burst = 3\nconnects_per_second = 0.05\n";

/// One reply with the headers the plain `Http` helper drops.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("http request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, retry_after, content_type) = (
        response.status().as_u16(),
        header("retry-after"),
        header("content-type").unwrap_or_default(),
    );
    let text = response.text().await.expect("body");
    Answer {
        status,
        retry_after,
        content_type,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// A `429` as the contract has it: problem+json, code `rate_limited`, and
/// a `Retry-After` of whole seconds.
fn assert_rate_limited(answer: &Answer) {
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["code"], "rate_limited", "{}", answer.body);
    let seconds: u64 = answer
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
}

/// The value of one metric line, e.g. `readback_rate_limited_total{limit="raises"}`.
async fn metric(daemon: &Daemon, name: &str) -> Option<f64> {
    daemon
        .metrics_text()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// A PACS that loops: past its burst it is answered `429` with
/// `Retry-After` and nothing is stored (no notification, no audit row);
/// another service identity is still served at once — the limit is per
/// caller, so one misbehaving integration cannot starve another.
async fn a_raise_burst_over_the_limit_is_refused_and_stores_nothing(db: Db) {
    let env = TestEnv::with_config(db, SMALL_LIMITS).await;
    let daemon = env.start().await;
    let http = Http::default();
    let pacs = service_token();
    let mut created = 0;
    let mut refused = 0;
    for i in 0..12 {
        let answer = send(
            http.client()
                .post(daemon.api("/notifications"))
                .bearer_auth(&pacs)
                .json(&json!({ "id": format!("burst-{i}"), "recipient": { "userId": "alice" }, "severity": "critical", "title": "burst" })),
        )
        .await;
        if answer.status == 201 {
            assert_eq!(refused, 0, "a raise passed after one was refused");
            created += 1;
        } else {
            assert_rate_limited(&answer);
            refused += 1;
        }
    }
    assert_eq!(created, 5, "the burst is 5");
    assert_eq!(refused, 7);
    let stored = env
        .count(
            "SELECT COUNT(*) FROM notifications WHERE title = $1",
            "burst",
        )
        .await;
    assert_eq!(stored, 5, "a refused raise stored a notification");
    assert_eq!(env.audit_count("notification.raised").await, 5);

    // Another service identity is not held back by the first one's flood.
    let ris = token("ris", &["service"], None);
    let other = send(
        http.client()
            .post(daemon.api("/notifications"))
            .bearer_auth(&ris)
            .json(&json!({ "recipient": { "userId": "alice" }, "severity": "critical", "title": "from the RIS" })),
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.body);
    // Reading is not a raise: the limited PACS may still look.
    let read = http.get(&daemon.api("/notifications/burst-0"), &pacs).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(
        metric(&daemon, "readback_rate_limited_total{limit=\"raises\"}").await,
        Some(7.0)
    );
}

/// A socket that floods client events gets `rate_limited` refusals once
/// past its burst — by ack when it asked for one, else as an `error` event
/// — and a refused acknowledgement acknowledges nothing. Another socket of
/// the same user has its own budget.
async fn a_client_event_flood_on_one_socket_is_refused_and_changes_nothing(db: Db) {
    let env = TestEnv::with_config(db, SMALL_LIMITS).await;
    let daemon = env.start().await;
    let http = Http::default();
    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "to acknowledge")
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    let clients = Clients::start(&daemon).await;
    let alice = token("alice", &["radiologist"], None);
    clients.connect("flooder", &alice).await;
    clients.next_event("flooder", "critical_notification").await;
    for _ in 0..5 {
        let answer = clients.emit_ack("flooder", "activity", json!([])).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    for event in ["acknowledge_notification", "subscribe", "no_such_event"] {
        let answer = clients
            .emit_ack(
                "flooder",
                event,
                json!([{ "notificationId": id, "topic": "x" }]),
            )
            .await;
        assert_eq!(answer["ok"], false, "{event}: {answer}");
        assert_eq!(answer["code"], "rate_limited", "{event}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
        assert!(answer["retryAfter"].as_u64().unwrap() >= 1, "{answer}");
    }
    // Without an ack callback the refusal is an `error` event.
    clients.emit("flooder", "activity", json!([])).await;
    let error = clients.next_event("flooder", "error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert_eq!(error["event"], "activity", "{error}");

    // Nothing changed: the finding is still open, no acknowledgement row.
    let state = http
        .get(&daemon.api(&format!("/notifications/{id}")), &admin_token())
        .await;
    assert_eq!(state.body["state"], "pending", "{}", state.body);
    assert_eq!(env.audit_count("notification.acknowledged").await, 0);

    // The user's other tab has a budget of its own.
    clients.connect("calm", &alice).await;
    clients.next_event("calm", "critical_notification").await;
    let acked = clients.ack("calm", &id).await;
    assert_eq!(acked["ok"], true, "{acked}");
    assert_eq!(
        metric(
            &daemon,
            "readback_rate_limited_total{limit=\"client_events\"}"
        )
        .await,
        Some(4.0)
    );
}

/// Audit exports and queries are limited per caller: a flood gets `429`
/// (and, refused, is not itself written to the log as a query), while
/// another auditor is still served.
async fn an_audit_export_flood_is_refused(db: Db) {
    let env = TestEnv::with_config(db, SMALL_LIMITS).await;
    let daemon = env.start().await;
    let http = Http::default();
    let auditor = token("audrey", &["auditor"], None);
    let mut served = 0;
    for i in 0..8 {
        // Both export formats draw on the caller's one budget.
        let path = if i % 2 == 0 {
            "/audit?format=csv".to_string()
        } else {
            "/audit?format=ndjson&limit=10".to_string()
        };
        let answer = send(http.client().get(daemon.api(&path)).bearer_auth(&auditor)).await;
        if answer.status == 200 {
            served += 1;
        } else {
            assert_rate_limited(&answer);
        }
    }
    assert_eq!(served, 3, "the burst is 3");
    let report = send(
        http.client()
            .get(daemon.api("/reports/acknowledgements"))
            .bearer_auth(&auditor),
    )
    .await;
    assert_rate_limited(&report);
    assert_eq!(env.audit_count("audit.queried").await, 3);

    let other = http
        .get(
            &daemon.api("/audit?format=csv"),
            &token("ines", &["auditor"], None),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(
        metric(
            &daemon,
            "readback_rate_limited_total{limit=\"audit_queries\"}"
        )
        .await,
        Some(6.0)
    );
}

/// More open findings than `realtime.max_replay`: the connect replays that
/// many — those due first — oldest first as ever, then announces the rest
/// (`replay_truncated`) with a cursor the viewer pages through over HTTP.
/// One `replay.sent` audit row sums the replay up (not one row per
/// finding), and each delivery is still recorded.
async fn replay_is_bounded_announced_and_summarised(db: Db) {
    let env = TestEnv::with_config(db, "[realtime]\nmax_replay = 5\n").await;
    let daemon = env.start().await;
    let http = Http::default();
    // Raised in order r0..r7, each due sooner than the one before.
    let mut ids = Vec::new();
    for i in 0..8 {
        let raised = http
            .raise_with(
                &daemon,
                &json!({ "id": format!("r{i}"), "recipient": { "userId": "hana" }, "severity": "urgent",
                         "title": "backlog", "ackWithin": (10 - i) * 60_000 }),
            )
            .await;
        ids.push(raised["id"].as_str().unwrap().to_string());
    }
    let clients = Clients::start(&daemon).await;
    let hana = token("hana", &["radiologist"], None);
    clients.connect("hana", &hana).await;
    let mut replayed = Vec::new();
    for _ in 0..5 {
        let n = clients.next_event("hana", "critical_notification").await;
        assert_eq!(n["replayed"], true);
        replayed.push(n["id"].as_str().unwrap().to_string());
    }
    // The five due first, sent oldest first.
    assert_eq!(replayed, ["r3", "r4", "r5", "r6", "r7"]);
    let truncated = clients.next_event("hana", "replay_truncated").await;
    assert_eq!(truncated["sent"], 5, "{truncated}");
    assert_eq!(truncated["remaining"], 3, "{truncated}");
    clients.barrier("hana").await;
    assert!(clients.drain("hana", "critical_notification").is_empty());

    // The rest, paged over HTTP with the announced cursor, due first.
    let cursor = truncated["nextCursor"]
        .as_str()
        .expect("a cursor")
        .to_string();
    let page = http
        .get(
            &daemon.api(&format!("/me/notifications?limit=2&cursor={cursor}")),
            &hana,
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let first: Vec<&str> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["r2", "r1"]);
    let next = page.body["nextCursor"].as_str().expect("more").to_string();
    let last = http
        .get(
            &daemon.api(&format!("/me/notifications?cursor={next}")),
            &hana,
        )
        .await;
    assert_eq!(last.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(last.body["items"][0]["id"], "r0");
    assert!(last.body["nextCursor"].is_null(), "{}", last.body);
    // Only the caller's own findings.
    let other = http
        .get(
            &daemon.api("/me/notifications"),
            &token("ivan", &["radiologist"], None),
        )
        .await;
    assert_eq!(other.body["items"], json!([]), "{}", other.body);

    // One summary row for the connect, each delivery recorded.
    env.wait_audit(Audit::action("replay.sent").user("hana"), 1)
        .await;
    env.wait_count(
        "SELECT COUNT(*) FROM deliveries WHERE user_id = $1 AND replayed = 1",
        "hana",
        5,
    )
    .await;
    let over_socket = Audit::action("replay.sent").detail("%\"channel\":\"socket.io\"%");
    assert_eq!(env.audit_count(over_socket.clone()).await, 1);
    assert_eq!(
        env.audit_count(over_socket.detail("%\"count\":5%")).await,
        1
    );
    // Each page read over HTTP is a row too: PHI read is audited.
    assert_eq!(
        env.audit_count(Audit::action("replay.sent").detail("%\"channel\":\"http\"%"))
            .await,
        2
    );
    assert_eq!(env.audit_count("notification.replayed").await, 0);
    let delivered = env
        .count(
            "SELECT COUNT(*) FROM deliveries WHERE user_id = $1 AND replayed = 1",
            "hana",
        )
        .await;
    assert_eq!(delivered, 5);
    // Each delivery is on the finding's own record.
    let r3 = http
        .get(&daemon.api("/notifications/r3"), &admin_token())
        .await;
    assert_eq!(r3.body["deliveries"][0]["replayed"], true, "{}", r3.body);
    let (verified, output) = env.audit_verify();
    assert!(verified, "{output}");
}

/// A user reconnecting in a loop is refused past the connect burst (each
/// connect costs a replay), with a reason of its own; other users are not
/// affected.
async fn reconnects_of_one_user_are_rate_limited(db: Db) {
    let env = TestEnv::with_config(db, SMALL_LIMITS).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let looping = token("looper", &["radiologist"], None);
    for round in 0..3 {
        let name = format!("loop{round}");
        clients.connect(&name, &looping).await;
        clients.close(&name).await;
    }
    let refused = clients
        .connect_with("loop3", json!({ "auth": { "token": looping } }))
        .await;
    assert_eq!(refused, Err("Too many connection attempts".to_string()));
    clients
        .connect("steady", &token("steady", &["radiologist"], None))
        .await;
    assert_eq!(
        metric(&daemon, "readback_rate_limited_total{limit=\"connects\"}").await,
        Some(1.0)
    );
}

/// `limits.refused_logins_*`: an address that keeps presenting bad tokens
/// has its next requests and Socket.IO handshakes held back (a timer, no
/// token parsed) until its budget refills; a held request with a good
/// token is then served, not refused; other addresses are not held.
async fn an_address_refused_too_often_is_held_not_refused(db: Db) {
    let env = TestEnv::with_config(
        db,
        "[limits]\nrefused_logins_burst = 3\nrefused_logins_per_second = 0.5\n",
    )
    .await;
    let daemon = env.start().await;
    let mallory: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let from_mallory = Http::from_address(mallory);
    let from_alice = Http::from_address("127.0.0.3".parse().unwrap());
    let forged = format!("{}x", service_token());
    let held = "readback_requests_held_total";
    for _ in 0..4 {
        let refused = from_mallory
            .get(&daemon.api("/notifications/x"), &forged)
            .await;
        assert_eq!(refused.status, 401, "{}", refused.body);
    }
    assert_eq!(
        metric(&daemon, held).await,
        Some(0.0),
        "within the burst nothing waits"
    );

    // Over the burst: the next request waits for the refill (2 s), then is
    // served as any other — a good token from that address still works.
    let started = std::time::Instant::now();
    let raised = from_mallory
        .post(
            &daemon.api("/notifications"),
            &service_token(),
            &json!({ "recipient": { "userId": "alice" }, "severity": "critical", "title": "after the hold" }),
        )
        .await;
    assert_eq!(raised.status, 201, "{}", raised.body);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the held address was served after {:?}",
        started.elapsed()
    );
    assert_eq!(metric(&daemon, held).await, Some(1.0));

    // Another address is not held.
    let other = from_alice
        .get(&daemon.api("/notifications/x"), &forged)
        .await;
    assert_eq!(other.status, 401, "{}", other.body);
    assert_eq!(metric(&daemon, held).await, Some(1.0));

    // Refused again (the first spends what refilled during the wait): a
    // Socket.IO handshake from it waits as well.
    for _ in 0..2 {
        let refused = from_mallory
            .get(&daemon.api("/notifications/x"), &forged)
            .await;
        assert_eq!(refused.status, 401, "{}", refused.body);
    }
    let started = std::time::Instant::now();
    RawSocket::open_from(&daemon, mallory, &[])
        .await
        .expect("a held handshake is served after the hold");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the held handshake was served after {:?}",
        started.elapsed()
    );
    assert_eq!(metric(&daemon, held).await, Some(2.0));
    assert_eq!(env.audit_count("notification.raised").await, 1);
}

/// A Socket.IO handshake refused over the per-address cap of sessions
/// waiting to authenticate is a refused login too: an address looping on
/// it is held like one trying tokens.
async fn handshakes_refused_over_a_cap_count_as_refused_logins(db: Db) {
    let env = TestEnv::with_config(
        db,
        "[limits]\nrefused_logins_burst = 2\nrefused_logins_per_second = 0.5\n",
    )
    .await;
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__MAX_PENDING_SESSIONS_PER_IP", "1")])
        .await;
    let looping: std::net::IpAddr = "127.0.0.4".parse().unwrap();
    let _waiting = RawSocket::open_from(&daemon, looping, &[])
        .await
        .expect("the first session waiting to authenticate");
    for _ in 0..3 {
        RawSocket::open_from(&daemon, looping, &[])
            .await
            .err()
            .expect("over the cap of sessions waiting to authenticate");
    }
    let started = std::time::Instant::now();
    RawSocket::open_from(&daemon, looping, &[])
        .await
        .err()
        .expect("still over the cap after the hold");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the looping address was answered after {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&daemon, "readback_requests_held_total").await,
        Some(1.0)
    );
}
