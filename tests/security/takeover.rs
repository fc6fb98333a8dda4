//! Security: nobody takes over a viewer's long-polling session through
//! what readback shows about it.
//!
//! An Engine.IO session id is a bearer handle: whoever sends it as `sid`
//! on `POST /socket.io/?transport=polling` speaks as that socket, without a
//! token. So the id of a connection that readback hands out — in API
//! answers, audit rows and logs — must never be that handle.

use crate::common::*;
use serde_json::{Value, json};

crate::both_databases!(a_leaked_id_does_not_open_a_viewers_polling_session);

const VIEWER: &str = "user-123";
const SESSION: &str = "sess-takeover";

/// A viewer on long-polling receives a finding. An admin and an auditor
/// read everything the API shows about it and about the viewer's
/// connection, an admin's socket watches presence and the console feed,
/// and the daemon's logs (at debug level) are read; every id-looking
/// string in there is tried as `sid` in a token-less polling POST carrying
/// `acknowledge_notification`, a polling GET and a WebSocket upgrade. None
/// is accepted and the finding stays unacknowledged. Then the viewer's real
/// session id — known only to its own client — is shown to work the same
/// way, so the probe would have caught a leak.
async fn a_leaked_id_does_not_open_a_viewers_polling_session(db: Db) {
    let mut env = TestEnv::with_config(db, "[realtime]\npresence_events = true\n").await;
    let logs = env.dir.path().join("logs");
    env.log_level = "debug".into();
    std::fs::create_dir_all(&logs).unwrap();
    env.logging = format!("dir = \"{}\"\nrotation = \"never\"\n", logs.display());
    let daemon = env.start().await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    // An admin watching live: presence events and the console feed.
    let admin = admin_token();
    clients.connect("admin", &admin).await;
    let subscribed = clients
        .emit_ack(
            "admin",
            "subscribe",
            json!([{ "topic": "readback.console" }]),
        )
        .await;
    assert_eq!(subscribed["ok"], true, "{subscribed}");

    let viewer_token = token(VIEWER, &["radiologist"], Some(SESSION));
    let handle = clients
        .connect_with(
            "viewer",
            json!({ "auth": { "token": viewer_token }, "transports": ["polling"] }),
        )
        .await
        .expect("the viewer connects over long-polling");
    let connection = clients.next_event("viewer", "connected").await["socketId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(connection, handle);
    let raised = http
        .raise(&daemon, json!({ "userId": VIEWER }), "Tension pneumothorax")
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    // The socket is named by its connection id, the one it was told.
    assert_eq!(raised["deliveries"][0]["socketId"], connection, "{raised}");
    clients.next_event("viewer", "critical_notification").await;
    env.wait_audit(Audit::action("notification.delivered").notification(&id), 1)
        .await;

    // Everything an admin and an auditor can read about it.
    let auditor = token("auditor-1", &["auditor"], None);
    let reads = [
        (&admin, format!("/notifications/{id}")),
        (&admin, format!("/notifications?userId={VIEWER}")),
        (&admin, format!("/notifications/{id}/timeline")),
        (&admin, "/connections".to_string()),
        (&admin, "/presence".to_string()),
        (&admin, format!("/users/{VIEWER}/status")),
        (&admin, "/sessions".to_string()),
        (&admin, format!("/sessions/{SESSION}")),
        (&admin, "/audit?format=json".to_string()),
        (&admin, "/audit?format=csv".to_string()),
        (&admin, "/audit?format=ndjson".to_string()),
        (&auditor, format!("/notifications/{id}")),
        (&auditor, "/audit?format=json".to_string()),
        (&auditor, "/connections".to_string()),
    ];
    let mut sources: Vec<(String, String)> = Vec::new();
    for (token, path) in reads {
        let reply = http.get(&daemon.api(&path), token).await;
        let body = match reply.body {
            Value::String(text) => text,
            other => other.to_string(),
        };
        sources.push((format!("GET /api/v1{path} (HTTP {})", reply.status), body));
    }
    clients.barrier("admin").await;
    let live: Vec<Value> = ["user_online", "console_update"]
        .iter()
        .flat_map(|event| clients.drain("admin", event))
        .collect();
    assert!(!live.is_empty(), "the admin saw nothing live");
    sources.push((
        "the admin's live events".to_string(),
        json!(live).to_string(),
    ));
    // And the logs, once they tell of the viewer's connection.
    let logs_text = wait_for_logs(&logs, VIEWER).await;
    sources.push(("the daemon's log".to_string(), logs_text));

    let mut candidates: Vec<&str> = sources.iter().flat_map(|(_, text)| id_like(text)).collect();
    candidates.sort_unstable();
    candidates.dedup();
    assert!(
        candidates.len() > 10,
        "the probe found too few ids to be meaningful: {candidates:?}"
    );

    let ack = format!(r#"42["acknowledge_notification",{{"notificationId":"{id}"}}]"#);
    let mut accepted = Vec::new();
    for candidate in &candidates {
        for (how, ok) in try_as_sid(&http, &daemon, candidate, &ack).await {
            if ok {
                let found_in: Vec<&str> = sources
                    .iter()
                    .filter(|(_, text)| text.contains(*candidate))
                    .map(|(source, _)| source.as_str())
                    .collect();
                accepted.push(format!("{candidate} ({how}), found in {found_in:?}"));
            }
        }
    }

    if accepted.is_empty() {
        // The viewer's connection is unharmed, and anything sent in its
        // name has been handled by now.
        clients.barrier("viewer").await;
    } else {
        // What got through (and may have broken the viewer's connection)
        // has time to act before the report.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let stored = http
        .get(&daemon.api(&format!("/notifications/{id}")), &admin)
        .await
        .body;
    let acks = env
        .audit_count(Audit::action("notification.acknowledged").notification(&id))
        .await;
    assert!(
        accepted.is_empty() && stored["state"] == "pending" && acks == 0,
        "ids readback showed opened the viewer's polling session without a token:\n{}\n\
         finding state {}, acknowledgement {}, audited acknowledgements {acks}",
        accepted.join("\n"),
        stored["state"],
        stored["acknowledgement"],
    );
    assert!(
        clients
            .drain("viewer", "notification_acknowledged")
            .is_empty()
    );
    for (source, text) in &sources {
        assert!(
            !text.contains(&handle),
            "the viewer's Engine.IO session id is in {source}"
        );
    }
    // What the API, the audit log and the logs call the socket instead.
    for wanted in ["/users/", "/audit?format=json", "the daemon's log"] {
        assert!(
            sources
                .iter()
                .any(|(source, text)| source.contains(wanted) && text.contains(&connection)),
            "{wanted} does not name the connection {connection}"
        );
    }

    // The control: the real handle, which only the viewer's client knows,
    // does act as the viewer — the probe above would have seen a leak.
    let reply = http
        .send(polling(&http, &daemon, &handle).post().body(ack.clone()))
        .await;
    assert_eq!(reply.status, 200, "the control POST: {}", reply.body);
    env.wait_audit(
        Audit::action("notification.acknowledged").notification(&id),
        1,
    )
    .await;
}

/// Every run of id characters (letters, digits, `-`, `_`) of 8 to 64 of
/// them: an Engine.IO session id is 16 url-safe base64 characters.
fn id_like(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|word| (8..=64).contains(&word.len()))
}

/// A request builder for the polling transport with `sid`.
struct Polling {
    url: String,
    client: reqwest::Client,
}

impl Polling {
    fn get(&self) -> reqwest::RequestBuilder {
        self.client
            .get(&self.url)
            .timeout(std::time::Duration::from_secs(2))
    }
    fn post(&self) -> reqwest::RequestBuilder {
        self.client
            .post(&self.url)
            .header("content-type", "text/plain;charset=UTF-8")
            .timeout(std::time::Duration::from_secs(2))
    }
}

fn polling(http: &Http, daemon: &Daemon, sid: &str) -> Polling {
    Polling {
        url: format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={}",
            daemon.url,
            form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
        ),
        client: http.client().clone(),
    }
}

/// Tries `sid` without a token as the daemon's clients use a session: a
/// polling POST carrying `packet`, a polling GET, a WebSocket upgrade.
/// Whether each was accepted.
async fn try_as_sid(
    http: &Http,
    daemon: &Daemon,
    sid: &str,
    packet: &str,
) -> [(&'static str, bool); 3] {
    let polling = polling(http, daemon, sid);
    let posted = polling
        .post()
        .body(packet.to_string())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    // A GET on a live session waits for data: a timeout is an acceptance.
    let got = match polling.get().send().await {
        Ok(reply) => reply.status().is_success(),
        Err(e) => e.is_timeout(),
    };
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket&sid={}",
        daemon.url.replacen("http://", "ws://", 1),
        form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
    );
    let upgraded = upgrade_is_answered(&ws_url).await;
    [
        ("polling POST", posted),
        ("polling GET", got),
        ("WebSocket upgrade", upgraded),
    ]
}

/// Whether a WebSocket upgrade of the session in `url` gets as far as the
/// Engine.IO probe answer (`2probe` → `3probe`): the 101 comes before the
/// session is looked up, the probe answer only for a live session.
async fn upgrade_is_answered(url: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let probe = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        ws.send(Message::text("2probe")).await.ok()?;
        match ws.next().await {
            Some(Ok(Message::Text(text))) => Some(text.as_str() == "3probe"),
            _ => Some(false),
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The log files' text once it mentions `needle`.
async fn wait_for_logs(dir: &std::path::Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text: String = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .collect();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log in {} mentions {needle}",
            dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
