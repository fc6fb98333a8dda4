//! Bad input of every kind gets a clear refusal and changes nothing; the
//! socket stays connected. Runs on SQLite and PostgreSQL.

mod common;

use common::*;
use serde_json::{Value, json};

both_databases!(
    http_refusals_are_problem_json_and_store_nothing,
    socket_refusals_answer_and_keep_the_socket,
);

fn valid_body() -> Value {
    json!({
        "recipient": { "userId": "alice" },
        "severity": "critical",
        "title": "Critical Finding Detected",
    })
}

async fn http_refusals_are_problem_json_and_store_nothing(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let url = daemon.api("/notifications");
    let service = service_token();

    let with = |change: fn(&mut Value)| {
        let mut body = valid_body();
        change(&mut body);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(|b| b["severity"] = json!("sort-of")), "severity"),
        (with(|b| b["severity"] = json!(3)), "severity"),
        (
            with(|b| b["recipient"] = json!({ "userId": 42 })),
            "recipient.userId",
        ),
        (with(|b| b["recipient"] = json!({})), "recipient"),
        (with(|b| b["recipient"] = json!("alice")), "recipient"),
        (
            with(|b| {
                b.as_object_mut().unwrap().remove("title");
            }),
            "title",
        ),
        (with(|b| b["title"] = json!("   ")), "title"),
        (with(|b| b["ackWithin"] = json!("10m")), "ackWithin"),
        (with(|b| b["ackWithin"] = json!(0)), "ackWithin"),
        (with(|b| b["id"] = json!("has spaces")), "id"),
        (with(|b| b["id"] = json!("x".repeat(500))), "id"),
        (with(|b| b["patientId"] = json!(["p"])), "patientId"),
        (with(|b| b["surprise"] = json!(true)), "surprise"),
        (json!([valid_body()]), "body"),
        (json!(null), "body"),
    ];
    for (body, field) in cases {
        let reply = http.post(&url, &service, &body).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
        assert_eq!(reply.body["field"], field, "{body} -> {}", reply.body);
        assert_eq!(reply.body["status"], 400);
        assert!(reply.body["detail"].as_str().unwrap().len() > 5);
    }

    // Broken JSON, the wrong content type, an oversize body.
    let raw = |body: &'static str, content_type: &'static str| {
        http.send(
            http.client()
                .post(&url)
                .bearer_auth(service_token())
                .header("content-type", content_type)
                .body(body),
        )
    };
    let broken = raw("{\"recipient\": ", "application/json").await;
    assert_eq!(broken.status, 400);
    assert_eq!(broken.body["field"], "body");
    assert_eq!(raw("{}", "text/plain").await.status, 415);
    let mut huge = valid_body();
    huge["message"] = json!("x".repeat(200_000));
    let too_big = http.post(&url, &service, &huge).await;
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.content_type, "application/problem+json");
    // An id of 10 kB in the path (a 100 kB one is refused by HTTP clients
    // before it is sent; the Socket.IO test sends one).
    let long_id = "n".repeat(10_000);
    // A new connection: the server closes the one it refused a body on.
    let reply = Http::default()
        .get(&daemon.api(&format!("/notifications/{long_id}")), &service)
        .await;
    assert!(
        reply.status == 400 || reply.status == 414,
        "{}",
        reply.status
    );

    // Tokens and roles.
    let no_token = http
        .send(http.client().post(&url).json(&valid_body()))
        .await;
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.content_type, "application/problem+json");
    let expired = sign(
        &json!({ "sub": "pacs", "roles": ["service"], "exp": now_secs() - 10 }),
        SECRET,
    );
    let reply = http.post(&url, &expired, &valid_body()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["detail"], "Authentication token expired");
    let viewer = token("alice", &["radiologist"], None);
    assert_eq!(http.post(&url, &viewer, &valid_body()).await.status, 403);
    let auditor = token("audrey", &["auditor"], None);
    assert_eq!(http.post(&url, &auditor, &valid_body()).await.status, 403);
    assert_eq!(http.get(&url, &auditor).await.status, 200);
    assert_eq!(
        http.post(
            &daemon.api("/broadcast"),
            &service,
            &json!({ "message": "m", "level": "info" })
        )
        .await
        .status,
        403
    );

    // Unknown ids and bad query parameters.
    let missing = http
        .get(&daemon.api("/notifications/ntf_nope"), &service)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type, "application/problem+json");
    let cancel_missing = http
        .post(
            &daemon.api("/notifications/ntf_nope/cancel"),
            &service,
            &json!({ "reason": "r" }),
        )
        .await;
    assert_eq!(cancel_missing.status, 404);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=lots", "limit"),
        ("state=lost", "state"),
        ("since=yesterday", "since"),
        ("cursor=abc", "cursor"),
    ] {
        let reply = http.get(&format!("{url}?{query}"), &service).await;
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.body["field"], field, "{query} -> {}", reply.body);
    }
    assert_eq!(
        http.get(&daemon.api("/nowhere"), &service).await.status,
        404
    );

    // None of that stored a notification.
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM notifications WHERE created_by <> $1",
            ""
        )
        .await,
        0
    );
    // The refused logins were audited (no token, expired token).
    env.refused_logins(2).await;
    assert!(env.audit_count("access.denied").await >= 3);
}

async fn socket_refusals_answer_and_keep_the_socket(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    let theirs = http
        .raise(&daemon, json!({ "userId": "bob" }), "Bob's")
        .await;
    let theirs = theirs["id"].as_str().unwrap();
    clients
        .connect("alice", &token("alice", &["radiologist"], None))
        .await;

    let long_id = "n".repeat(100_000);
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "bad_request"),
        (json!(["ntf_1"]), "bad_request"),
        (json!([42]), "bad_request"),
        (json!([{}]), "bad_request"),
        (json!([{ "notificationId": 7 }]), "bad_request"),
        (json!([{ "notificationId": long_id }]), "bad_request"),
        (json!([{ "notificationId": "ntf_unknown" }]), "not_found"),
        (json!([{ "notificationId": theirs }]), "not_found"),
        (
            json!([{ "notificationId": theirs, "userId": "bob" }]),
            "forbidden",
        ),
        (
            json!([{ "notificationId": theirs, "userId": 5 }]),
            "bad_request",
        ),
    ];
    for (args, code) in cases {
        let answer = clients
            .emit_ack("alice", "acknowledge_notification", args.clone())
            .await;
        assert_eq!(answer["ok"], false, "{args}");
        assert_eq!(answer["code"], code, "{args} -> {answer}");
        assert!(answer["message"].as_str().unwrap().len() > 3);
    }

    // Without an ack callback the refusal comes as an `error` event.
    clients
        .emit(
            "alice",
            "acknowledge_notification",
            json!([{ "notificationId": 1 }]),
        )
        .await;
    let error = clients.next_event("alice", "error").await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["event"], "acknowledge_notification");
    clients.emit("alice", "no_such_event", json!([1])).await;
    let error = clients.next_event("alice", "error").await;
    assert_eq!(error["event"], "no_such_event");

    // Still connected, and nothing changed.
    clients.barrier("alice").await;
    let stored = http
        .get(
            &daemon.api(&format!("/notifications/{theirs}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "pending");
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM acknowledgements WHERE notification_id <> $1",
            ""
        )
        .await,
        0
    );
}
