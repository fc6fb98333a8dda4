//! Security: transport limits and client addresses (issue #14), attacked
//! through the real daemon: connections per client address are capped (the
//! TCP peer, or the forwarded address behind a trusted proxy, never a
//! header an untrusted peer made up), Engine.IO sessions waiting to
//! authenticate are capped, slow requests are answered instead of held,
//! and audit rows say where a login, an admin action or a read of PHI came
//! from.
//!
//! Every 127.x.y.z address is this host: a test speaks from 127.0.0.2 or
//! 127.0.0.3 to be another client than 127.0.0.1.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

crate::both_databases!(
    connections_per_address_are_capped,
    sessions_waiting_to_authenticate_are_capped,
    a_trusted_proxy_names_the_client_and_nobody_else_does,
    slow_requests_are_answered_and_idle_connections_closed,
    long_polling_outlives_the_request_timeout,
    logins_and_admin_actions_record_the_client_address,
    reads_of_notifications_are_audited,
);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn viewer(user: &str) -> String {
    token(user, &["radiologist"], None)
}

/// The `detail` of every audit row of `action`, oldest first.
#[allow(clippy::disallowed_methods)] // assertions read what the daemon stored
async fn details(env: &TestEnv, action: &str) -> Vec<Value> {
    use sqlx::Row;
    let mut conn = env.sql().await;
    sqlx::query("SELECT detail FROM audit_log WHERE action = $1 ORDER BY seq")
        .bind(action)
        .fetch_all(&mut conn)
        .await
        .expect("read audit rows")
        .iter()
        .map(|row| serde_json::from_str(&row.get::<String, _>(0)).expect("JSON detail"))
        .collect()
}

/// Waits until some `action` row's detail satisfies `wanted`; that detail.
async fn wait_detail(env: &TestEnv, action: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rows = details(env, action).await;
        if let Some(found) = rows.iter().find(|d| wanted(d)) {
            return found.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a {action} row; there are: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a refusal of the connection cap: `429` problem+json.
fn assert_too_many(reply: &Reply) {
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["code"], "too_many_connections", "{}", reply.body);
}

/// A WebSocket handshake refused with an HTTP status: that status and the
/// body.
fn refused_handshake(error: tokio_tungstenite::tungstenite::Error) -> (u16, Value) {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        other => panic!("the handshake failed otherwise: {other}"),
    }
}

/// `server.max_connections_per_ip`: one address holding its share of
/// connections gets `429` for the next (an HTTP request or a Socket.IO
/// handshake), while other addresses and clients are served; a closed
/// connection frees its place.
async fn connections_per_address_are_capped(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__MAX_CONNECTIONS_PER_IP", "3")])
        .await;
    let busy = ip("127.0.0.2");
    let mut held = Vec::new();
    for i in 0..3 {
        let mut raw = RawSocket::open_from(&daemon, busy, &[])
            .await
            .expect("within the cap");
        let answer = raw.connect(&viewer(&format!("viewer-{i}"))).await;
        assert!(answer.starts_with("40"), "{answer}");
        held.push(raw);
    }
    let from_busy = Http::from_address(busy);
    let health = format!("{}/healthz", daemon.url);
    assert_too_many(&from_busy.send(from_busy.client().get(&health)).await);
    let (status, body) = refused_handshake(
        RawSocket::open_from(&daemon, busy, &[])
            .await
            .err()
            .expect("a fourth connection is refused"),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_connections", "{body}");

    // Others are served meanwhile; the refusals are counted for operators.
    let other = Http::from_address(ip("127.0.0.3"));
    assert_eq!(other.send(other.client().get(&health)).await.status, 200);
    let metrics = other
        .send(other.client().get(format!("{}/metrics", daemon.url)))
        .await;
    let metrics = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("readback_connections_refused_total{cap=\"connections\"} 2"),
        "{metrics}"
    );
    let clients = Clients::start(&daemon).await;
    clients.connect("elsewhere", &viewer("viewer-9")).await;
    clients.barrier("elsewhere").await;

    // Closing one frees its place (the daemon notices asynchronously).
    held.pop().unwrap().close().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = from_busy.send(from_busy.client().get(&health)).await;
        if reply.status == 200 {
            break;
        }
        assert_too_many(&reply);
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection did not free its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `server.max_pending_sessions_per_ip`: Engine.IO sessions that have not
/// completed a Socket.IO CONNECT are capped per address; completing the
/// CONNECT frees the place.
async fn sessions_waiting_to_authenticate_are_capped(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__MAX_PENDING_SESSIONS_PER_IP", "2")])
        .await;
    let idle = ip("127.0.0.2");
    let mut first = RawSocket::open_from(&daemon, idle, &[]).await.unwrap();
    let _second = RawSocket::open_from(&daemon, idle, &[]).await.unwrap();
    let (status, body) = refused_handshake(
        RawSocket::open_from(&daemon, idle, &[])
            .await
            .err()
            .expect("a third session waiting to authenticate is refused"),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_connections", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("waiting to authenticate"),
        "{body}"
    );
    // Another address is not affected.
    RawSocket::open_from(&daemon, ip("127.0.0.3"), &[])
        .await
        .expect("another address");
    // Authenticating one frees its place.
    let answer = first.connect(&viewer("viewer-1")).await;
    assert!(answer.starts_with("40"), "{answer}");
    RawSocket::open_from(&daemon, idle, &[])
        .await
        .expect("a place freed by the CONNECT");
}

/// `server.trusted_proxies`: only a trusted peer's `X-Forwarded-For` names
/// the client (its right-most untrusted hop), for refusal rows and for the
/// connection cap; the same header from anyone else is ignored.
async fn a_trusted_proxy_names_the_client_and_nobody_else_does(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[
            (
                "READBACK_SERVER__TRUSTED_PROXIES",
                "[\"127.0.0.1/32\", \"10.1.0.0/16\"]",
            ),
            ("READBACK_SERVER__MAX_CONNECTIONS_PER_IP", "2"),
        ])
        .await;
    let forged = sign(
        &json!({ "sub": "mallory", "roles": ["admin"], "exp": now_secs() + 3600 }),
        "not-the-secret-0123456789abcdef0123",
    );
    let url = daemon.api("/connections");
    // Through the proxy (127.0.0.1): the client is the right-most hop that
    // is not a trusted proxy (10.1.2.3 is the proxy's own upstream).
    let proxy = Http::default();
    let reply = proxy
        .send(
            proxy
                .client()
                .get(&url)
                .bearer_auth(&forged)
                .header("x-forwarded-for", "192.0.2.1, 198.51.100.7, 10.1.2.3"),
        )
        .await;
    assert_eq!(reply.status, 401);
    // From an untrusted peer, the same kind of header is a lie.
    let untrusted = Http::from_address(ip("127.0.0.2"));
    let reply = untrusted
        .send(
            untrusted
                .client()
                .get(&url)
                .bearer_auth(&forged)
                .header("x-forwarded-for", "203.0.113.66"),
        )
        .await;
    assert_eq!(reply.status, 401);
    // A Socket.IO login through the proxy.
    let mut raw = RawSocket::open_from(
        &daemon,
        ip("127.0.0.1"),
        &[("x-forwarded-for", "198.51.100.8")],
    )
    .await
    .unwrap();
    let answer = raw.connect(&forged).await;
    assert!(answer.starts_with("44"), "{answer}");

    let rows = env.refused_logins(3).await;
    let mut sources: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["channel"].as_str().unwrap(),
                r["source"].as_str().unwrap(),
            )
        })
        .collect();
    sources.sort_unstable();
    assert_eq!(
        sources,
        [
            ("http", "127.0.0.2"),
            ("http", "198.51.100.7"),
            ("socket.io", "198.51.100.8")
        ],
        "{rows:#?}"
    );

    // The cap counts the forwarded address, not the proxy: two sessions of
    // one client fill its share, another client behind the same proxy
    // still gets in (the proxy's own connections are not capped).
    let client = [("x-forwarded-for", "198.51.100.20")];
    let _one = RawSocket::open_from(&daemon, ip("127.0.0.1"), &client)
        .await
        .unwrap();
    let _two = RawSocket::open_from(&daemon, ip("127.0.0.1"), &client)
        .await
        .unwrap();
    let (status, body) = refused_handshake(
        RawSocket::open_from(&daemon, ip("127.0.0.1"), &client)
            .await
            .err()
            .expect("the forwarded client's third session is refused"),
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("198.51.100.20"),
        "{body}"
    );
    for other in ["198.51.100.21", "198.51.100.22"] {
        RawSocket::open_from(&daemon, ip("127.0.0.1"), &[("x-forwarded-for", other)])
            .await
            .expect("another client behind the proxy");
    }
    // An untrusted peer cannot borrow another client's address to dodge
    // its own cap: its forged header is ignored, its own address counts.
    let liar = ip("127.0.0.3");
    let _a = RawSocket::open_from(&daemon, liar, &[("x-forwarded-for", "192.0.2.50")])
        .await
        .unwrap();
    let _b = RawSocket::open_from(&daemon, liar, &[("x-forwarded-for", "192.0.2.51")])
        .await
        .unwrap();
    let (status, _) = refused_handshake(
        RawSocket::open_from(&daemon, liar, &[("x-forwarded-for", "192.0.2.52")])
            .await
            .err()
            .expect("the liar's third connection is refused"),
    );
    assert_eq!(status, 429);
}

/// `server.request_timeout`: a request not answered in time (here one whose
/// body never finishes) gets `503` problem+json instead of holding the
/// connection; and a keep-alive connection left idle is closed after
/// `server.header_read_timeout`.
async fn slow_requests_are_answered_and_idle_connections_closed(db: Db) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[
            ("READBACK_SERVER__REQUEST_TIMEOUT", "500ms"),
            ("READBACK_SERVER__HEADER_READ_TIMEOUT", "400ms"),
        ])
        .await;
    let addr = daemon.url.strip_prefix("http://").unwrap().to_string();

    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/notifications HTTP/1.1\r\nHost: readback\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"recipient\":",
            service_token()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer))
        .await
        .expect("a request whose body never came was held open")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A served keep-alive connection, then silence: closed.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: readback\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let read = idle.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..read])
    );
    let idle_since = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("an idle keep-alive connection was held open")
        .ok();
    assert!(idle_since.elapsed() >= Duration::from_millis(300));
}

/// Engine.IO long-polling holds a GET until there is something to send
/// (up to the ping interval): the request timeout does not cut it, so a
/// polling viewer stays connected and gets its findings.
async fn long_polling_outlives_the_request_timeout(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__REQUEST_TIMEOUT", "300ms")])
        .await;
    let clients = Clients::start(&daemon).await;
    clients
        .connect_with(
            "poller",
            json!({ "auth": { "token": viewer("user-123") }, "transports": ["polling"] }),
        )
        .await
        .expect("a polling viewer connects");
    clients.next_event("poller", "connected").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let http = Http::default();
    let raised = http
        .raise(&daemon, json!({ "userId": "user-123" }), "While polling")
        .await;
    let received = clients.next_event("poller", "critical_notification").await;
    assert_eq!(received["id"], raised["id"]);
    clients.barrier("poller").await;
}

/// Logins (`session.started`) and admin actions record the client address:
/// the forwarded one behind a trusted proxy, else the peer's; the log still
/// verifies.
async fn logins_and_admin_actions_record_the_client_address(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env
        .start_with_env(&[("READBACK_SERVER__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]")])
        .await;
    let clients = Clients::start(&daemon).await;
    clients
        .connect_with(
            "viewer",
            json!({
                "auth": { "token": token("user-123", &["radiologist"], Some("sess-net-1")) },
                "extraHeaders": { "x-forwarded-for": "10.5.5.5" },
            }),
        )
        .await
        .expect("the viewer connects through the proxy");
    let login = wait_detail(&env, "session.started", |_| true).await;
    assert_eq!(login["clientAddr"], "10.5.5.5", "{login}");

    let http = Http::default();
    let reply = http
        .send(
            http.client()
                .delete(daemon.api("/users/user-123/connections"))
                .bearer_auth(admin_token())
                .header("x-forwarded-for", "10.6.6.6"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let disconnect = wait_detail(&env, "admin.disconnect", |_| true).await;
    assert_eq!(disconnect["clientAddr"], "10.6.6.6", "{disconnect}");

    let reply = http
        .send(
            http.client()
                .delete(daemon.api("/sessions/sess-net-1"))
                .bearer_auth(admin_token())
                .header("x-forwarded-for", "10.7.7.7"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let terminated = wait_detail(&env, "session.terminated", |_| true).await;
    assert_eq!(terminated["clientAddr"], "10.7.7.7", "{terminated}");

    // Straight from the peer (no forwarding header): the peer's address.
    let reply = http
        .post(
            &daemon.api("/broadcast"),
            &admin_token(),
            &json!({ "message": "maintenance at noon", "level": "info" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let broadcast = wait_detail(&env, "admin.broadcast", |_| true).await;
    assert_eq!(broadcast["clientAddr"], "127.0.0.1", "{broadcast}");

    let (verified, output) = env.audit_verify();
    assert!(verified, "{output}");
}

/// Reads of PHI through the API are audited: `GET /notifications/{id}` and
/// the list write `notification.read` rows (counted per reader, address and
/// notification or filter per `audit.read_window`), audit queries say how
/// many rows they returned, and an export how many it sent.
async fn reads_of_notifications_are_audited(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let http = Http::default();
    let raised = http
        .raise(&daemon, json!({ "userId": "user-123" }), "Read me")
        .await;
    let id = raised["id"].as_str().unwrap();
    let auditor = token("audrey", &["auditor"], None);
    for _ in 0..2 {
        let reply = http
            .get(&daemon.api(&format!("/notifications/{id}")), &auditor)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reads: Vec<Value> = details(&env, "notification.read")
            .await
            .into_iter()
            .filter(|d| d["via"] == "get")
            .collect();
        let count: u64 = reads.iter().map(|d| d["count"].as_u64().unwrap()).sum();
        if count == 2 {
            for read in &reads {
                assert_eq!(read["clientAddr"], "127.0.0.1", "{read}");
            }
            break;
        }
        assert!(count < 2, "{reads:#?}");
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {count} reads audited: {reads:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        env.audit_count(
            Audit::action("notification.read")
                .notification(id)
                .user("user-123")
        )
        .await
            >= 1,
        "a read row names the notification, so its timeline shows who read it"
    );

    let reply = http
        .get(
            &daemon.api("/notifications?patientId=patient-789"),
            &auditor,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let list = wait_detail(&env, "notification.read", |d| d["via"] == "list").await;
    assert_eq!(list["rows"], 1, "{list}");
    assert_eq!(list["notificationIds"], json!([id]), "{list}");
    assert_eq!(list["filters"]["patientId"], "patient-789", "{list}");

    let page = http
        .get(&daemon.api("/audit?action=notification.raised"), &auditor)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let query = wait_detail(&env, "audit.queried", |d| d["format"] == "json").await;
    assert_eq!(query["rows"], 1, "{query}");
    assert_eq!(query["clientAddr"], "127.0.0.1", "{query}");

    let export = http
        .send(
            http.client()
                .get(daemon.api("/audit?format=csv&action=notification.raised"))
                .bearer_auth(&auditor),
        )
        .await;
    assert_eq!(export.status, 200);
    let exported = wait_detail(&env, "audit.exported", |_| true).await;
    assert_eq!(exported["rows"], 1, "{exported}");
    assert_eq!(exported["complete"], true, "{exported}");
    assert_eq!(exported["format"], "csv", "{exported}");
}
