//! Durable delivery, end to end: the real daemon, a real database, real
//! Socket.IO clients and real HTTP. Every story runs on SQLite and on
//! PostgreSQL.

mod common;

use common::*;
use serde_json::json;

both_databases!(
    socket_auth_refusals_have_the_contract_messages,
    delivery_reaches_every_tab_of_the_recipient_only,
    only_the_recipient_may_acknowledge,
    acknowledging_twice_repeats_the_first_answer,
    role_notifications_reach_and_close_for_every_holder,
    cancel_tells_recipients_and_stops_replay,
    raise_is_idempotent_by_body_id_and_by_key,
    replay_is_oldest_first_after_being_offline,
    replay_survives_sigkill_and_restart,
    concurrent_acks_from_two_tabs_make_one_acknowledgement,
    a_long_backlog_is_replayed_whole_and_in_order,
    concurrent_raises_are_each_stored_once,
);

/// Raises arriving together are committed together: each distinct one is
/// stored once with its audit row, a concurrent retry of the same id gets
/// the same notification back, and a different body under that id is
/// refused.
async fn concurrent_raises_are_each_stored_once(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let mut requests = Vec::new();
    for i in 0..60 {
        // ids 0..20, each sent three times: twice the same body, once another.
        let n = i % 20;
        let title = if i >= 40 { "different" } else { "same" };
        let body = json!({
            "id": format!("batch-{n}"),
            "recipient": { "userId": format!("user-{n}") },
            "severity": "critical",
            "title": title,
        });
        let (http, url) = (http.clone(), daemon.api("/notifications"));
        requests.push(tokio::spawn(async move {
            (n, title, http.post(&url, &service_token(), &body).await)
        }));
    }
    let mut created = std::collections::HashMap::new();
    for request in requests {
        let (n, title, reply) = request.await.unwrap();
        match reply.status {
            201 | 200 => {
                assert_eq!(reply.body["id"], format!("batch-{n}"));
                if reply.status == 201 {
                    *created.entry(n).or_insert(0) += 1;
                }
                // Whichever body won, the answer is that body.
                let stored = reply.body["title"].as_str().unwrap();
                assert!(stored == title || reply.status == 200, "{}", reply.body);
            }
            409 => {}
            other => panic!("raise {n}: {other} {}", reply.body),
        }
    }
    assert_eq!(created.len(), 20, "{created:?}");
    assert!(created.values().all(|count| *count == 1), "{created:?}");
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM notifications WHERE id LIKE $1",
            "batch-%"
        )
        .await,
        20
    );
    assert_eq!(
        env.audit_count(Audit::action("notification.raised").notification("batch-%"))
            .await,
        20
    );
    let (verified, output) = env.audit_verify();
    assert!(verified, "{output}");
}

/// More pending notifications than a socket's send buffer holds (128): all
/// of them arrive, oldest first.
async fn a_long_backlog_is_replayed_whole_and_in_order(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let mut ids = Vec::new();
    for i in 0..300 {
        let raised = http
            .raise_with(
                &daemon,
                &json!({ "id": format!("backlog-{i:03}"), "recipient": { "userId": "hana" }, "severity": "urgent", "title": "backlog" }),
            )
            .await;
        ids.push(raised["id"].clone());
    }
    let clients = Clients::start(&daemon).await;
    clients.connect("hana", &token("hana", &[], None)).await;
    let mut replayed = Vec::new();
    for _ in 0..300 {
        replayed.push(clients.next_event("hana", "critical_notification").await["id"].clone());
    }
    assert_eq!(replayed, ids);
    // The deliveries are recorded right after the emits.
    env.wait_count(
        "SELECT COUNT(*) FROM deliveries WHERE user_id = $1 AND replayed = 1",
        "hana",
        300,
    )
    .await;
}

async fn socket_auth_refusals_have_the_contract_messages(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;

    let refused = |options| clients.connect_with("x", options);
    assert_eq!(
        refused(json!({})).await,
        Err("Authentication token required".into())
    );
    assert_eq!(
        refused(json!({ "auth": { "token": "not-a-jwt" } })).await,
        Err("Invalid authentication token".into())
    );
    let expired = sign(&json!({ "sub": "u", "exp": now_secs() - 60 }), SECRET);
    assert_eq!(
        refused(json!({ "auth": { "token": expired } })).await,
        Err("Authentication token expired".into())
    );
    let forged = sign(
        &json!({ "sub": "u", "exp": now_secs() + 60 }),
        "some-other-secret-0123456789",
    );
    assert_eq!(
        refused(json!({ "auth": { "token": forged } })).await,
        Err("Invalid authentication token".into())
    );
    // alg: none, with a valid-looking payload.
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    assert_eq!(
        refused(json!({ "auth": { "token": unsigned } })).await,
        Err("Invalid authentication token".into())
    );

    // The token may also come from the query string or the header.
    let by_query = clients
        .connect_with(
            "q",
            json!({ "query": { "token": token("dr-q", &["radiologist"], None) } }),
        )
        .await;
    assert!(by_query.is_ok(), "{by_query:?}");
    let by_header = clients
        .connect_with(
            "h",
            json!({ "extraHeaders": { "Authorization": format!("Bearer {}", token("dr-h", &[], None)) } }),
        )
        .await;
    assert!(by_header.is_ok(), "{by_header:?}");
    let connected = clients.next_event("h", "connected").await;
    assert_eq!(connected["userId"], "dr-h");

    // Five refusals, all counted in the audit log (one row per source,
    // channel and reason in each window, with its count).
    let rows = env.refused_logins(5).await;
    assert!(rows.len() <= 5, "{rows:#?}");
    assert!(rows.iter().all(|r| r["channel"] == "socket.io"));
}

async fn delivery_reaches_every_tab_of_the_recipient_only(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    let alice = token("alice", &["radiologist"], Some("s-alice"));
    let first = clients.connect("tab1", &alice).await;
    assert_eq!(first["userId"], "alice");
    assert_eq!(first["sessionId"], "s-alice");
    assert_eq!(first["roles"], json!(["radiologist"]));
    clients.connect("tab2", &alice).await;
    clients
        .connect("bob", &token("bob", &["radiologist"], None))
        .await;

    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "Pneumothorax")
        .await;
    let id = raised["id"].as_str().unwrap();
    assert_eq!(raised["state"], "pending");
    assert_eq!(raised["deliveries"].as_array().unwrap().len(), 2);

    for tab in ["tab1", "tab2"] {
        let received = clients.next_event(tab, "critical_notification").await;
        assert_eq!(received["id"], id);
        assert_eq!(received["replayed"], false);
        assert_eq!(received["title"], "Pneumothorax");
        assert_eq!(received["severity"], "critical");
        assert_eq!(received["patientId"], "patient-789");
        assert!(received["ackDeadline"].as_str().unwrap().ends_with('Z'));
    }
    clients.barrier("bob").await;
    assert!(clients.drain("bob", "critical_notification").is_empty());

    let stored = http
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.audit_count(Audit::action("notification.delivered").notification(id))
            .await,
        2
    );
}

async fn only_the_recipient_may_acknowledge(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    clients
        .connect("bob", &token("bob", &["radiologist"], None))
        .await;
    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "For Alice")
        .await;
    let id = raised["id"].as_str().unwrap();

    // Someone else's finding is answered like an unknown one: ids cannot
    // be probed.
    let refused = clients.ack("bob", id).await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["code"], "not_found");
    let unknown = clients.ack("bob", "ntf_unknown").await;
    assert_eq!(
        refused["message"].as_str().map(|m| m.replace(id, "ID")),
        unknown["message"]
            .as_str()
            .map(|m| m.replace("ntf_unknown", "ID"))
    );

    // Bob claiming to be Alice in the payload is refused too.
    let spoofed = clients
        .emit_ack(
            "bob",
            "acknowledge_notification",
            json!([{ "notificationId": id, "userId": "alice" }]),
        )
        .await;
    assert_eq!(spoofed["code"], "forbidden");

    let stored = http
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "pending");
    assert_eq!(stored.body["acknowledgement"], serde_json::Value::Null);

    // Alice may, and her own userId in the payload is accepted.
    clients
        .connect("alice", &token("alice", &["radiologist"], None))
        .await;
    let ok = clients
        .emit_ack(
            "alice",
            "acknowledge_notification",
            json!([{ "notificationId": id, "userId": "alice" }]),
        )
        .await;
    assert_eq!(ok["ok"], true, "{ok}");
}

async fn acknowledging_twice_repeats_the_first_answer(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    let alice = token("alice", &["radiologist"], None);
    clients.connect("tab1", &alice).await;
    clients.connect("tab2", &alice).await;
    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "Twice")
        .await;
    let id = raised["id"].as_str().unwrap();

    let first = clients.ack("tab1", id).await;
    assert_eq!(first["ok"], true);
    assert_eq!(first["notificationId"], id);
    let second = clients.ack("tab2", id).await;
    assert_eq!(second["ok"], true);
    assert_eq!(second["acknowledgedAt"], first["acknowledgedAt"]);

    // Both tabs are told, so the other one can dismiss it.
    for tab in ["tab1", "tab2"] {
        let told = clients.next_event(tab, "notification_acknowledged").await;
        assert_eq!(told["notificationId"], id);
        assert_eq!(told["acknowledgedBy"], "alice");
        assert_eq!(told["acknowledgedAt"], first["acknowledgedAt"]);
    }
    let stored = http
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "acknowledged");
    assert_eq!(
        stored.body["acknowledgement"]["acknowledgedAt"],
        first["acknowledgedAt"]
    );
}

async fn role_notifications_reach_and_close_for_every_holder(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    clients
        .connect("neuro1", &token("n1", &["neuroradiologist"], None))
        .await;
    clients
        .connect(
            "neuro2",
            &token("n2", &["radiologist", "neuroradiologist"], None),
        )
        .await;
    clients
        .connect("body", &token("b1", &["radiologist"], None))
        .await;

    let raised = http
        .raise(
            &daemon,
            json!({ "role": "neuroradiologist" }),
            "Stroke protocol",
        )
        .await;
    let id = raised["id"].as_str().unwrap();
    assert_eq!(raised["recipient"], json!({ "role": "neuroradiologist" }));
    for holder in ["neuro1", "neuro2"] {
        assert_eq!(
            clients.next_event(holder, "critical_notification").await["id"],
            id
        );
    }
    clients.barrier("body").await;
    assert!(clients.drain("body", "critical_notification").is_empty());

    assert_eq!(clients.ack("body", id).await["code"], "not_found");
    assert_eq!(clients.ack("neuro2", id).await["ok"], true);
    for holder in ["neuro1", "neuro2"] {
        let told = clients
            .next_event(holder, "notification_acknowledged")
            .await;
        assert_eq!(told["acknowledgedBy"], "n2");
    }
    // A holder connecting later is not sent the closed notification.
    clients
        .connect("neuro3", &token("n3", &["neuroradiologist"], None))
        .await;
    clients.barrier("neuro3").await;
    assert!(clients.drain("neuro3", "critical_notification").is_empty());
}

async fn cancel_tells_recipients_and_stops_replay(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    let alice = token("alice", &["radiologist"], None);
    clients.connect("alice", &alice).await;
    let raised = http
        .raise(&daemon, json!({ "userId": "alice" }), "Retracted")
        .await;
    let id = raised["id"].as_str().unwrap();
    clients.next_event("alice", "critical_notification").await;

    let cancel_url = daemon.api(&format!("/notifications/{id}/cancel"));
    let cancelled = http
        .post(
            &cancel_url,
            &service_token(),
            &json!({ "reason": "finding retracted" }),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    let told = clients.next_event("alice", "notification_cancelled").await;
    assert_eq!(told["notificationId"], id);
    assert_eq!(told["reason"], "finding retracted");

    let late = clients.ack("alice", id).await;
    assert_eq!(late["ok"], false);
    assert_eq!(late["code"], "expired");

    // Cancelling again is harmless; a viewer may not cancel at all.
    let again = http
        .post(&cancel_url, &service_token(), &json!({ "reason": "again" }))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["cancellation"]["reason"], "finding retracted");
    let by_viewer = http
        .post(&cancel_url, &alice, &json!({ "reason": "x" }))
        .await;
    assert_eq!(by_viewer.status, 403);

    clients.close("alice").await;
    clients.connect("alice-again", &alice).await;
    clients.barrier("alice-again").await;
    assert!(
        clients
            .drain("alice-again", "critical_notification")
            .is_empty()
    );

    // An acknowledged notification cannot be cancelled.
    let other = http
        .raise(&daemon, json!({ "userId": "alice" }), "Kept")
        .await;
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(clients.ack("alice-again", other_id).await["ok"], true);
    let refused = http
        .post(
            &daemon.api(&format!("/notifications/{other_id}/cancel")),
            &service_token(),
            &json!({ "reason": "too late" }),
        )
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.content_type, "application/problem+json");
}

async fn raise_is_idempotent_by_body_id_and_by_key(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let url = daemon.api("/notifications");
    let body = json!({
        "id": "pacs-msg-0001",
        "recipient": { "userId": "alice" },
        "severity": "urgent",
        "title": "Incidental adrenal nodule",
    });

    let first = http.post(&url, &service_token(), &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["id"], "pacs-msg-0001");
    let retry = http.post(&url, &service_token(), &body).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["createdAt"], first.body["createdAt"]);

    let mut changed = body.clone();
    changed["title"] = json!("Something else");
    let conflict = http.post(&url, &service_token(), &changed).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.content_type, "application/problem+json");

    let keyed =
        json!({ "recipient": { "userId": "alice" }, "severity": "critical", "title": "Keyed" });
    let send = |body: serde_json::Value| {
        http.send(
            http.client()
                .post(&url)
                .bearer_auth(service_token())
                .header("Idempotency-Key", "retry-key-42")
                .json(&body),
        )
    };
    let first = send(keyed.clone()).await;
    assert_eq!(first.status, 201);
    let retry = send(keyed.clone()).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["id"], first.body["id"]);
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM notifications WHERE title = $1",
            "Keyed"
        )
        .await,
        1
    );
    assert_eq!(env.audit_count("notification.raised").await, 2);
}

async fn replay_is_oldest_first_after_being_offline(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    let mut ids = Vec::new();
    for title in ["first", "second", "third"] {
        ids.push(
            http.raise(&daemon, json!({ "userId": "carol" }), title)
                .await["id"]
                .clone(),
        );
    }
    // One for a role Carol holds, one for someone else.
    ids.push(
        http.raise(&daemon, json!({ "role": "mskradiologist" }), "fourth")
            .await["id"]
            .clone(),
    );
    http.raise(&daemon, json!({ "userId": "dave" }), "not for carol")
        .await;

    let carol = token("carol", &["mskradiologist"], None);
    clients.connect("carol", &carol).await;
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let n = clients.next_event("carol", "critical_notification").await;
        assert_eq!(n["replayed"], true);
        replayed.push(n["id"].clone());
    }
    assert_eq!(replayed, ids);
    clients.barrier("carol").await;
    assert!(clients.drain("carol", "critical_notification").is_empty());

    assert_eq!(
        clients.ack("carol", ids[1].as_str().unwrap()).await["ok"],
        true
    );
    clients.close("carol").await;
    clients.connect("carol2", &carol).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(clients.next_event("carol2", "critical_notification").await["id"].clone());
    }
    assert_eq!(again, vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]);
}

async fn replay_survives_sigkill_and_restart(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let kept = http
        .raise(&daemon, json!({ "userId": "erin" }), "kept")
        .await;
    let closed = http
        .raise(&daemon, json!({ "userId": "erin" }), "closed")
        .await;
    {
        let clients = Clients::start(&daemon).await;
        clients.connect("erin", &token("erin", &[], None)).await;
        clients.next_event("erin", "critical_notification").await;
        clients.next_event("erin", "critical_notification").await;
        let ack = clients.ack("erin", closed["id"].as_str().unwrap()).await;
        assert_eq!(ack["ok"], true);
    }
    daemon.kill9().await;

    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients.connect("erin", &token("erin", &[], None)).await;
    let replayed = clients.next_event("erin", "critical_notification").await;
    assert_eq!(replayed["id"], kept["id"]);
    assert_eq!(replayed["replayed"], true);
    clients.barrier("erin").await;
    assert!(clients.drain("erin", "critical_notification").is_empty());
    let stored = http
        .get(
            &daemon.api(&format!(
                "/notifications/{}",
                closed["id"].as_str().unwrap()
            )),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "acknowledged");
}

async fn concurrent_acks_from_two_tabs_make_one_acknowledgement(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();
    let frank = token("frank", &["radiologist"], None);
    clients.connect("tab1", &frank).await;
    clients.connect("tab2", &frank).await;
    clients
        .connect("colleague", &token("gina", &["radiologist"], None))
        .await;

    for round in 0..5 {
        let raised = http
            .raise(
                &daemon,
                json!({ "role": "radiologist" }),
                &format!("race {round}"),
            )
            .await;
        let id = raised["id"].as_str().unwrap();
        let (a, b, c) = tokio::join!(
            clients.ack("tab1", id),
            clients.ack("tab2", id),
            clients.ack("colleague", id)
        );
        for answer in [&a, &b, &c] {
            assert_eq!(answer["ok"], true, "{answer}");
            assert_eq!(answer["acknowledgedAt"], a["acknowledgedAt"]);
            assert_eq!(answer["acknowledgedBy"], a["acknowledgedBy"]);
        }
        assert_eq!(
            env.count(
                "SELECT COUNT(*) FROM acknowledgements WHERE notification_id = $1",
                id
            )
            .await,
            1
        );
        assert_eq!(
            env.audit_count(
                Audit::action("notification.acknowledged")
                    .outcome("ok")
                    .notification(id)
            )
            .await,
            1
        );
    }
}
