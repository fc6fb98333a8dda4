//! Property-based fuzzing (proptest) of every HTTP body parser and every
//! client-event payload parser, through the real daemon: each generated
//! input is a valid body or payload mutated (a field removed, retyped,
//! replaced by arbitrary JSON, huge or control-character text, unknown
//! fields), arbitrary JSON, or arbitrary bytes. Every answer must be a
//! success or a clear refusal (problem+json with a known status and code
//! over HTTP; an ack `{ ok: false, code, message }` over Socket.IO), the
//! daemon must stay up, and nothing may be stored but what was accepted.
//!
//! `READBACK_FUZZ_CASES` sets the cases per target (64 in the test suite);
//! `scripts/fuzz.sh` runs the long campaign and writes its figures to
//! docs/fuzzing.md (through `READBACK_FUZZ_REPORT`).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

both_databases!(
    http_bodies_are_refused_clearly_and_store_nothing,
    client_event_payloads_are_refused_clearly_and_change_nothing,
);

const VIEWER: &str = "fuzz-viewer";

fn cases() -> u32 {
    std::env::var("READBACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Limits loose enough that the fuzzer meets the parsers, not the rate
/// limiters, and message events the fuzzer can aim at.
const FUZZ_CONFIG: &str = "[realtime]\nmessage_events = [\"study_*\"]\n\n[realtime.topics]\nradiologist = [\"study:*\"]\n\n\
     [limits]\nraises_burst = 1000000\nraises_per_second = 1000000\nclient_events_burst = 1000000\n\
     client_events_per_second = 1000000\nconnects_burst = 1000000\nconnects_per_second = 1000000\n";

// ---- generators -----------------------------------------------------------

/// Text as attackers and careless clients write it.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,24}",
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f\\x7f]{1,6}",
        1 => "[ \\t\\r\\n]{1,4}",
        1 => "\\PC{100,300}",
        1 => (1usize..80_000).prop_map(|n| "x".repeat(n)),
        1 => prop::sample::select(vec![
            "RB-1", "RB-99999999999999999999", "ntf_", "../../etc/passwd", "%00", "\u{202e}",
            "\u{2028}", "<script>", "' OR 1=1 --", "null", "-1", "1e999", "critical",
            "fuzz-viewer", "study:1", "*",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(0), Just(1u64 << 53)].prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a valid object.
#[derive(Debug, Clone)]
enum Change {
    Set(String, Value),
    Remove(String),
}

/// `valid`, changed by up to four mutations of its known fields (and
/// unknown ones), or replaced by arbitrary JSON.
fn mutated(valid: Value, fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    let field = prop_oneof![
        4 => prop::sample::select(fields.to_vec()).prop_map(str::to_owned),
        1 => text(),
    ];
    let change = prop_oneof![
        3 => (field.clone(), json_value()).prop_map(|(f, v)| Change::Set(f, v)),
        1 => field.prop_map(Change::Remove),
    ];
    let changed = prop::collection::vec(change, 0..4).prop_map(move |changes| {
        let mut body = valid.clone();
        for change in changes {
            let object = body.as_object_mut().expect("valid bodies are objects");
            match change {
                Change::Set(f, v) => {
                    object.insert(f, v);
                }
                Change::Remove(f) => {
                    object.remove(&f);
                }
            }
        }
        body
    });
    prop_oneof![6 => changed, 1 => json_value()].boxed()
}

/// What is sent: JSON, or bytes that are not (truncated, binary, not UTF-8).
#[derive(Debug, Clone)]
enum Input {
    Json(Value),
    Bytes(Vec<u8>),
}

fn input(valid: Value, fields: &'static [&'static str]) -> impl Strategy<Value = Input> {
    prop_oneof![
        12 => mutated(valid.clone(), fields).prop_map(Input::Json),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Bytes),
        1 => mutated(valid, fields).prop_flat_map(|v| {
            let text = v.to_string();
            let len = text.len();
            (Just(text), 0..=len).prop_map(|(t, cut)| Input::Bytes(t.as_bytes()[..cut].to_vec()))
        }),
    ]
}

// ---- the campaign's tally -------------------------------------------------

/// What one target answered, for the assertions and the campaign report.
#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
}

impl Tally {
    fn refused(&mut self, what: String) {
        *self.refused.entry(what).or_default() += 1;
    }
}

/// Appends one JSON line per target to `READBACK_FUZZ_REPORT`, if set.
fn report(db: Db, transport: &str, target: &str, tally: &Tally, took: std::time::Duration) {
    let line = json!({
        "db": format!("{db:?}").to_lowercase(), "transport": transport, "target": target,
        "cases": tally.cases, "accepted": tally.accepted, "refused": tally.refused,
        "seconds": took.as_secs_f64(),
    });
    println!("fuzz {line}");
    if let Ok(path) = std::env::var("READBACK_FUZZ_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(file, "{line}").expect("write report");
    }
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        // The daemon is the oracle; shrinking a failure is worth a few hundred runs.
        max_shrink_iters: 256,
        ..RunnerConfig::default()
    })
}

/// Runs `body` on the test's runtime from proptest's synchronous runner.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

// ---- HTTP -----------------------------------------------------------------

struct HttpTarget {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    token: String,
    valid: Value,
    fields: &'static [&'static str],
    /// No body at all is a valid request (the body's fields are optional).
    body_optional: bool,
}

/// Checks one HTTP answer: a success, or a problem+json refusal.
fn check_http_answer(
    status: u16,
    content_type: &str,
    body: &str,
) -> Result<Option<String>, String> {
    if (200..300).contains(&status) {
        return Ok(None);
    }
    if !matches!(status, 400 | 403 | 404 | 409 | 413 | 415 | 422 | 429) {
        return Err(format!("unexpected status {status}: {body}"));
    }
    if content_type != "application/problem+json" {
        return Err(format!(
            "{status} without problem+json ({content_type}): {body}"
        ));
    }
    let problem: Value = serde_json::from_str(body)
        .map_err(|e| format!("{status}: body is not JSON ({e}): {body}"))?;
    let code = problem["code"].as_str().unwrap_or_default();
    let detail = problem["detail"].as_str().unwrap_or_default();
    if code.is_empty() || detail.is_empty() || problem["status"] != json!(status) {
        return Err(format!("{status}: not a clear refusal: {problem}"));
    }
    Ok(Some(format!("{status} {code}")))
}

async fn http_bodies_are_refused_clearly_and_store_nothing(db: Db) {
    let env = TestEnv::with_config(db, FUZZ_CONFIG).await;
    let daemon = env.start().await;
    let http = Http::default();
    let seed = http
        .raise(&daemon, json!({ "userId": VIEWER }), "seed to cancel")
        .await;
    let seed_id = seed["id"].as_str().expect("id").to_owned();
    let before = Counts::read(&env, &seed_id).await;

    let targets = [
        HttpTarget {
            name: "raise",
            method: reqwest::Method::POST,
            path: "/notifications".into(),
            token: service_token(),
            valid: json!({ "recipient": { "userId": VIEWER }, "severity": "critical", "title": "Fuzz finding" }),
            fields: &[
                "id",
                "recipient",
                "type",
                "severity",
                "title",
                "message",
                "patientId",
                "studyId",
                "accessionNumber",
                "ackWithin",
            ],
            body_optional: false,
        },
        HttpTarget {
            name: "cancel",
            method: reqwest::Method::POST,
            path: format!("/notifications/{seed_id}/cancel"),
            token: service_token(),
            // Valid but for the one field that differs: the seed stays open
            // unless the fuzzer finds a valid body (then it is counted).
            valid: json!({ "reason": "fuzz" }),
            fields: &["reason"],
            body_optional: false,
        },
        HttpTarget {
            name: "broadcast",
            method: reqwest::Method::POST,
            path: "/broadcast".into(),
            token: admin_token(),
            valid: json!({ "message": "fuzz", "level": "info" }),
            fields: &["role", "message", "level"],
            body_optional: false,
        },
        HttpTarget {
            name: "disconnect_user",
            method: reqwest::Method::DELETE,
            path: "/users/fuzz-other/connections".into(),
            token: admin_token(),
            valid: json!({ "reason": "fuzz", "refuseFor": 1 }),
            fields: &["reason", "refuseFor"],
            body_optional: true,
        },
        HttpTarget {
            name: "messages",
            method: reqwest::Method::POST,
            path: "/messages".into(),
            token: service_token(),
            valid: json!({ "to": { "userId": VIEWER }, "event": "study_available", "data": { "studyId": "1.2.3" } }),
            fields: &["to", "event", "data"],
            body_optional: false,
        },
        HttpTarget {
            name: "register_session",
            method: reqwest::Method::PUT,
            path: "/sessions/fuzz-session".into(),
            token: service_token(),
            valid: json!({ "userId": VIEWER, "idleTimeout": 600000 }),
            fields: &["userId", "idleTimeout", "maxLifetime"],
            body_optional: false,
        },
    ];

    let mut accepted_raises = 0;
    let mut accepted_cancels = 0;
    let mut accepted_sessions = 0;
    for target in &targets {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let url = daemon.api(&target.path);
        let result = runner().run(&input(target.valid.clone(), target.fields), |input| {
            let body_was_empty = matches!(&input, Input::Bytes(b) if b.is_empty());
            let (body, json) = match &input {
                Input::Json(v) => (v.to_string().into_bytes(), true),
                Input::Bytes(b) => (b.clone(), serde_json::from_slice::<Value>(b).is_ok()),
            };
            let send = || {
                http.client()
                    .request(target.method.clone(), &url)
                    .bearer_auth(&target.token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
            };
            let (status, content_type, text) = block_on(async {
                // After refusing a body it did not read (413), the daemon
                // closes that connection; a request the client had already
                // put on it fails before the daemon saw it, and is sent once
                // more on a new connection, as any HTTP client would.
                let response = match send().await {
                    Ok(response) => response,
                    Err(first) if first.is_request() => send()
                        .await
                        .map_err(|e| format!("{e:?} (first attempt: {first:?})"))?,
                    Err(e) => return Err(format!("{e:?}")),
                };
                let status = response.status().as_u16();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let text = response.text().await.map_err(|e| format!("{e:?}"))?;
                Ok::<_, String>((status, content_type, text))
            })
            .map_err(|e| {
                TestCaseError::fail(format!("{}: the daemon did not answer: {e}", target.name))
            })?;
            let verdict = check_http_answer(status, &content_type, &text)
                .map_err(|e| TestCaseError::fail(format!("{} {input:?}: {e}", target.name)))?;
            let mut tally = tally.lock().unwrap();
            tally.cases += 1;
            match verdict {
                None => {
                    tally.accepted += 1;
                    let allowed_without_json = target.body_optional && body_was_empty;
                    if !json && !allowed_without_json {
                        return Err(TestCaseError::fail(format!(
                            "{}: bytes that are not JSON were accepted: {input:?}",
                            target.name
                        )));
                    }
                }
                Some(what) => tally.refused(what),
            }
            Ok(())
        });
        let tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
        if let Err(failure) = result {
            panic!("{}: {failure}", target.name);
        }
        report(db, "http", target.name, &tally, started.elapsed());
        match target.name {
            "raise" => accepted_raises = tally.accepted,
            "cancel" => accepted_cancels = tally.accepted,
            "register_session" => accepted_sessions = tally.accepted,
            _ => {}
        }
    }

    // Nothing stored but what was accepted.
    let after = Counts::read(&env, &seed_id).await;
    // Raises with the same `id` are answered with the first one: at most
    // one row per accepted raise.
    assert!(
        after.notifications <= before.notifications + accepted_raises as i64,
        "{before:?} → {after:?} with {accepted_raises} raises accepted"
    );
    if accepted_cancels == 0 {
        assert_eq!(
            after.seed_state, before.seed_state,
            "the seed changed without an accepted cancel"
        );
    }
    assert!(after.sessions <= before.sessions + accepted_sessions.min(1) as i64);
    assert_eq!(
        http.get(&format!("{}/healthz", daemon.url), "")
            .await
            .status,
        200
    );
}

/// Row counts the fuzzer must not change except by accepted requests.
#[derive(Debug)]
struct Counts {
    notifications: i64,
    sessions: i64,
    seed_state: String,
}

impl Counts {
    #[allow(clippy::disallowed_methods)] // assertions read what the daemon stored
    async fn read(env: &TestEnv, seed: &str) -> Self {
        use sqlx::Row;
        let mut sql = env.sql().await;
        let notifications = env
            .count("SELECT COUNT(*) FROM notifications WHERE id <> $1", seed)
            .await
            + 1;
        let sessions = env
            .count("SELECT COUNT(*) FROM sessions WHERE id <> $1", "")
            .await;
        let seed_state: String = sqlx::query("SELECT state FROM notifications WHERE id = $1")
            .bind(seed.to_owned())
            .fetch_one(&mut sql)
            .await
            .expect("seed")
            .get(0);
        Self {
            notifications,
            sessions,
            seed_state,
        }
    }
}

// ---- Socket.IO ------------------------------------------------------------

struct EventTarget {
    event: &'static str,
    valid: Value,
    fields: &'static [&'static str],
}

/// Sends `42<ack>[event, payload]` and returns the ack's first argument, or
/// `None` if the daemon closed the socket (it may, for a malformed packet).
async fn emit_with_ack(
    socket: &mut RawSocket,
    ack: u64,
    event: &str,
    payload: Option<&Value>,
) -> Option<Value> {
    let args = match payload {
        Some(p) => json!([event, p]),
        None => json!([event]),
    };
    socket.try_send(format!("42{ack}{args}")).await.ok()?;
    let prefix = format!("43{ack}");
    loop {
        let packet = socket.next_text().await?;
        if let Some(rest) = packet.strip_prefix(&prefix) {
            let args: Value = serde_json::from_str(rest).expect("ack arguments are JSON");
            return Some(args[0].clone());
        }
    }
}

async fn client_event_payloads_are_refused_clearly_and_change_nothing(db: Db) {
    let env = TestEnv::with_config(db, FUZZ_CONFIG).await;
    let daemon = env.start().await;
    let http = Http::default();
    let seed = http
        .raise(&daemon, json!({ "userId": VIEWER }), "seed to acknowledge")
        .await;
    let seed_id = seed["id"].as_str().expect("id").to_owned();
    let token = token(VIEWER, &["radiologist"], None);
    let before = Counts::read(&env, &seed_id).await;

    let targets = [
        EventTarget {
            event: "acknowledge_notification",
            // A notification that is not the viewer's: valid in shape, so
            // every mutation reaches the parser and the lookup.
            valid: json!({ "notificationId": "ntf_not_theirs" }),
            fields: &["notificationId", "userId"],
        },
        EventTarget {
            event: "extend_session",
            valid: json!({ "sessionId": "fuzz-session" }),
            fields: &["sessionId"],
        },
        EventTarget {
            event: "reauth",
            valid: json!({ "token": "not-a-token" }),
            fields: &["token"],
        },
        EventTarget {
            event: "subscribe",
            valid: json!({ "topic": "study:1" }),
            fields: &["topic"],
        },
        EventTarget {
            event: "unsubscribe",
            valid: json!({ "topic": "study:1" }),
            fields: &["topic"],
        },
        EventTarget {
            event: "activity",
            valid: json!({}),
            fields: &["at"],
        },
        EventTarget {
            event: "no_such_event",
            valid: json!({}),
            fields: &["x"],
        },
    ];

    for target in &targets {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let socket = Arc::new(tokio::sync::Mutex::new(None::<RawSocket>));
        let ack = std::sync::atomic::AtomicU64::new(0);
        let strategy = (input(target.valid.clone(), target.fields), any::<bool>());
        let result = runner().run(&strategy, |(input, omit)| {
            let ack = ack.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let payload = match &input {
                Input::Json(v) => Some(v.clone()),
                // A client event's arguments are always JSON on this
                // transport: bytes become a string argument.
                Input::Bytes(b) => Some(Value::from(String::from_utf8_lossy(b).into_owned())),
            };
            let payload = if omit { None } else { payload };
            let answer = block_on(async {
                let mut guard = socket.lock().await;
                if guard.is_none() {
                    let mut raw = RawSocket::open(&daemon, None).await;
                    let connected = raw.connect(&token).await;
                    assert!(connected.starts_with("40"), "{connected}");
                    *guard = Some(raw);
                }
                let answer =
                    emit_with_ack(guard.as_mut().unwrap(), ack, target.event, payload.as_ref())
                        .await;
                if answer.is_none() {
                    *guard = None;
                }
                answer
            });
            let mut tally = tally.lock().unwrap();
            tally.cases += 1;
            let Some(answer) = answer else {
                // Closing the connection is a refusal too, but only for a
                // packet the protocol cannot carry.
                return Err(TestCaseError::fail(format!(
                    "{}: the socket was closed for {payload:?}",
                    target.event
                )));
            };
            match answer["ok"].as_bool() {
                Some(true) => tally.accepted += 1,
                Some(false) => {
                    let code = answer["code"].as_str().unwrap_or_default();
                    let message = answer["message"].as_str().unwrap_or_default();
                    if code.is_empty() || message.is_empty() {
                        return Err(TestCaseError::fail(format!(
                            "{}: not a clear refusal: {answer} for {payload:?}",
                            target.event
                        )));
                    }
                    tally.refused(code.to_owned());
                }
                None => {
                    return Err(TestCaseError::fail(format!(
                        "{}: an ack without `ok`: {answer} for {payload:?}",
                        target.event
                    )));
                }
            }
            Ok(())
        });
        let tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
        if let Err(failure) = result {
            panic!("{}: {failure}", target.event);
        }
        report(db, "socket.io", target.event, &tally, started.elapsed());
        if target.event == "acknowledge_notification" {
            // The only notification the viewer may acknowledge is the seed,
            // which no generated id names.
            assert_eq!(tally.accepted, 0, "an acknowledgement was accepted");
        }
    }

    let after = Counts::read(&env, &seed_id).await;
    assert_eq!(after.notifications, before.notifications);
    assert_eq!(after.seed_state, before.seed_state, "the seed changed");
    assert_eq!(
        http.get(&format!("{}/healthz", daemon.url), "")
            .await
            .status,
        200
    );
}
