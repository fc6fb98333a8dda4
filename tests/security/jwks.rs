//! Security: tokens verified against the identity provider's published
//! keys (`auth.jwks_url`), attacked through the real daemon with a real
//! JWKS server the test runs and changes: a token is verified with the key
//! its `kid` names and only with that key's algorithm; a key published
//! later is fetched at its first use (at most once per cooldown), a key
//! withdrawn stops verifying at the next periodic fetch, and a JWKS server
//! that is down at start leaves a daemon that runs but lets nobody in
//! until the keys arrive.
//!
//! The RSA and Ed25519 test keys are fixtures in `keys/` (made with
//! `openssl genpkey`; RSA generation would cost seconds per run); the
//! P-256 keys are generated per run.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::*;

crate::both_databases!(
    tokens_are_verified_with_the_published_key_their_kid_names,
    a_new_key_is_fetched_at_its_first_use_at_most_once_per_cooldown,
    a_withdrawn_key_is_refused_after_the_next_periodic_fetch,
    a_jwks_server_down_at_start_refuses_logins_until_it_is_back,
);

const REFUSED: &str = "Invalid authentication token";

/// A signing key of the test's identity provider, and its public JWK.
struct TestKey {
    kid: &'static str,
    algorithm: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn new(kid: &'static str, algorithm: Algorithm, key: EncodingKey) -> Self {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&key, algorithm).expect("a JWK")).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid,
            algorithm,
            key,
            jwk,
        }
    }

    /// An RSA key of `keys/`, published for `algorithm` (RS256 or PS256).
    fn rsa(kid: &'static str, file: &str, algorithm: Algorithm) -> Self {
        let key = EncodingKey::from_rsa_pem(&fixture(file)).expect("an RSA key");
        Self::new(kid, algorithm, key)
    }

    /// A fresh P-256 key.
    fn ec(kid: &'static str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("a P-256 key");
        Self::new(kid, Algorithm::ES256, key)
    }

    fn ed(kid: &'static str) -> Self {
        let key = EncodingKey::from_ed_pem(&fixture("ed25519.pem")).expect("an Ed25519 key");
        Self::new(kid, Algorithm::EdDSA, key)
    }

    /// Signs `claims` as the identity provider does: its algorithm, its
    /// `kid`.
    fn sign(&self, claims: &Value) -> String {
        sign_as(self.algorithm, Some(self.kid), claims, &self.key)
    }

    fn viewer(&self, user: &str) -> String {
        self.sign(&viewer_claims(user))
    }

    fn service(&self) -> String {
        self.sign(&service_claims())
    }
}

fn fixture(file: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/security/keys")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sign_as(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn viewer_claims(user: &str) -> Value {
    json!({ "sub": user, "roles": ["radiologist"], "exp": now_secs() + 3600 })
}

fn service_claims() -> Value {
    json!({ "sub": "pacs", "roles": ["service"], "exp": now_secs() + 3600 })
}

/// The `[auth]` keys pointing at `server`, quick to retry.
fn jwks_auth(server: &JwksServer, extra: &str) -> String {
    format!(
        "jwks_url = \"{}\"\njwks_timeout = \"2s\"\n{extra}",
        server.url()
    )
}

/// A daemon verifying tokens against `server`.
async fn start(db: Db, server: &JwksServer, auth: &str) -> (TestEnv, Daemon) {
    let mut env = TestEnv::new(db).await;
    env.auth = jwks_auth(server, auth);
    let daemon = env.start().await;
    (env, daemon)
}

async fn raise(http: &Http, daemon: &Daemon, token: &str, user: &str) -> Reply {
    http.post(
        &daemon.api("/notifications"),
        token,
        &json!({
            "recipient": { "userId": user },
            "severity": "critical",
            "title": "Tension pneumothorax",
            "patientId": "patient-789",
            "studyId": "study-012",
        }),
    )
    .await
}

/// The value of one line of `/metrics` (`0` when absent).
async fn metric(daemon: &Daemon, line: &str) -> u64 {
    daemon
        .metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}

/// Each published key verifies tokens of its own algorithm (RS256, PS256,
/// ES256, EdDSA) on Socket.IO and HTTP; nothing else gets in: an unknown
/// `kid`, no `kid`, another key's signature, another algorithm than the
/// key's, HS256 signed with the RSA public key (algorithm confusion) or
/// with a symmetric key slipped into the JWKS, and `alg: none`.
async fn tokens_are_verified_with_the_published_key_their_kid_names(db: Db) {
    let rsa = TestKey::rsa("rsa-a", "rsa-a.pem", Algorithm::RS256);
    let pss = TestKey::rsa("rsa-pss", "rsa-b.pem", Algorithm::PS256);
    let ec = TestKey::ec("ec-1");
    let ed = TestKey::ed("ed-1");
    let shared_secret = "a-shared-secret-of-more-than-32-bytes";
    let mut oct = serde_json::to_value(
        Jwk::from_encoding_key(
            &EncodingKey::from_secret(shared_secret.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap(),
    )
    .unwrap();
    oct["kid"] = json!("shared");
    let server = JwksServer::start(vec![
        rsa.jwk.clone(),
        pss.jwk.clone(),
        ec.jwk.clone(),
        ed.jwk.clone(),
        oct,
    ])
    .await;
    let (env, daemon) = start(
        db,
        &server,
        "jwks_algorithms = [\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]\n",
    )
    .await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;

    for (name, key) in [
        ("rs256", &rsa),
        ("ps256", &pss),
        ("es256", &ec),
        ("eddsa", &ed),
    ] {
        clients
            .connect(name, &key.viewer(&format!("dr-{name}")))
            .await;
    }
    let raised = raise(&http, &daemon, &ec.service(), "dr-rs256").await;
    assert_eq!(raised.status, 201, "{}", raised.body);
    let received = clients.next_event("rs256", "critical_notification").await;
    assert_eq!(received["id"], raised.body["id"]);
    for key in [&rsa, &pss, &ed] {
        let list = http
            .get(&daemon.api("/notifications"), &key.service())
            .await;
        assert_eq!(list.status, 200, "{}: {}", key.kid, list.body);
    }

    let rsa_public_pem = fixture("rsa-a.pub.pem");
    let forged = TestKey::rsa("rsa-a", "rsa-b.pem", Algorithm::RS256);
    let unknown = TestKey::rsa("nobody", "rsa-b.pem", Algorithm::RS256);
    let attacks: Vec<(&str, String)> = vec![
        ("unknown kid", unknown.service()),
        (
            "no kid",
            sign_as(Algorithm::RS256, None, &service_claims(), &rsa.key),
        ),
        ("signed by another key", forged.service()),
        (
            "PS256 with a key published for RS256",
            sign_as(Algorithm::PS256, Some("rsa-a"), &service_claims(), &rsa.key),
        ),
        (
            "HS256 signed with the RSA public key",
            sign_as(
                Algorithm::HS256,
                Some("rsa-a"),
                &service_claims(),
                &EncodingKey::from_secret(&rsa_public_pem),
            ),
        ),
        (
            "HS256 with a symmetric key from the JWKS",
            sign_as(
                Algorithm::HS256,
                Some("shared"),
                &service_claims(),
                &EncodingKey::from_secret(shared_secret.as_bytes()),
            ),
        ),
        (
            "alg none",
            "eyJhbGciOiJub25lIiwia2lkIjoicnNhLWEiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJtYWxsb3J5Iiwicm9sZXMiOlsic2VydmljZSJdLCJleHAiOjQxMDI0NDQ4MDB9.".to_string(),
        ),
    ];
    for (index, (attack, token)) in attacks.iter().enumerate() {
        let socket = clients
            .connect_with(
                &format!("attack-{index}"),
                json!({ "auth": { "token": token } }),
            )
            .await;
        assert_eq!(socket, Err(REFUSED.to_string()), "{attack}");
        let reply = raise(&http, &daemon, token, "dr-rs256").await;
        assert_eq!(reply.status, 401, "{attack}: {}", reply.body);
    }
    let refusals = env.refused_logins(2 * attacks.len() as u64).await;
    let reasons: Vec<&str> = refusals
        .iter()
        .filter_map(|d| d["reason"].as_str())
        .collect();
    for reason in [
        "unknown kid",
        "no kid",
        "algorithm not allowed for this key",
        "InvalidSignature",
    ] {
        assert!(reasons.contains(&reason), "{reason} not in {reasons:?}");
    }
    // Only the one notification was stored.
    assert!(clients.drain("rs256", "critical_notification").is_empty());
}

/// A key the identity provider publishes after the daemon started is
/// accepted at its first use, without a restart: the unknown `kid` makes
/// the daemon fetch the key set again and the login waits for it. Made-up
/// `kid`s cannot turn that into a flood on the identity provider: within
/// `auth.jwks_unknown_kid_cooldown` of a fetch they asked for, tokens with
/// unknown `kid`s are refused without one — a key published meanwhile
/// included, until the cooldown or the periodic fetch.
async fn a_new_key_is_fetched_at_its_first_use_at_most_once_per_cooldown(db: Db) {
    let old = TestKey::rsa("rsa-a", "rsa-a.pem", Algorithm::RS256);
    let new = TestKey::ec("ec-next");
    let newer = TestKey::ed("ed-later");
    let server = JwksServer::start(vec![old.jwk.clone()]).await;
    let (_env, daemon) = start(
        db,
        &server,
        "jwks_algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n\
         jwks_refresh = \"1h\"\njwks_unknown_kid_cooldown = \"1h\"\n",
    )
    .await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    assert_eq!(server.requests(), 1, "fetched once at start");

    // The identity provider publishes a new key beside the old one.
    server.publish(vec![old.jwk.clone(), new.jwk.clone()]);
    clients.connect("new", &new.viewer("dr-new")).await;
    assert_eq!(server.requests(), 2, "one fetch for the new kid");
    let raised = raise(&http, &daemon, &old.service(), "dr-new").await;
    assert_eq!(
        raised.status, 201,
        "the old key still verifies: {}",
        raised.body
    );
    clients.next_event("new", "critical_notification").await;

    // Made-up kids within the cooldown: refused without a fetch.
    for i in 0..20 {
        let made_up = sign_as(
            Algorithm::RS256,
            Some(&format!("made-up-{i}")),
            &service_claims(),
            &old.key,
        );
        let reply = raise(&http, &daemon, &made_up, "dr-new").await;
        assert_eq!(reply.status, 401);
    }
    server.publish(vec![old.jwk.clone(), new.jwk.clone(), newer.jwk.clone()]);
    let within = clients
        .connect_with(
            "newer",
            json!({ "auth": { "token": newer.viewer("dr-newer") } }),
        )
        .await;
    assert_eq!(within, Err(REFUSED.to_string()));
    assert_eq!(server.requests(), 2, "no fetch within the cooldown");

    assert_eq!(
        metric(&daemon, "readback_jwks_refresh_total{outcome=\"ok\"}").await,
        2
    );
    assert_eq!(metric(&daemon, "readback_jwks_keys").await, 2);
}

/// A key the identity provider withdraws stops verifying once the
/// periodic fetch (`auth.jwks_refresh`) has seen it gone; the keys still
/// published go on verifying.
async fn a_withdrawn_key_is_refused_after_the_next_periodic_fetch(db: Db) {
    let old = TestKey::rsa("rsa-a", "rsa-a.pem", Algorithm::RS256);
    let current = TestKey::ec("ec-current");
    let server = JwksServer::start(vec![old.jwk.clone(), current.jwk.clone()]).await;
    let (_env, daemon) = start(
        db,
        &server,
        "jwks_refresh = \"300ms\"\njwks_unknown_kid_cooldown = \"1h\"\n",
    )
    .await;
    let http = Http::default();
    let clients = Clients::start(&daemon).await;
    clients.connect("before", &old.viewer("dr-old")).await;

    server.publish(vec![current.jwk.clone()]);
    // The second fetch after publishing began after it: by the time it is
    // counted, the first one has been installed.
    let fetched = server.requests();
    server.wait_requests(fetched + 2).await;
    let after = clients
        .connect_with(
            "after",
            json!({ "auth": { "token": old.viewer("dr-old") } }),
        )
        .await;
    assert_eq!(after, Err(REFUSED.to_string()));
    let reply = raise(&http, &daemon, &old.service(), "dr-old").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    clients
        .connect("current", &current.viewer("dr-current"))
        .await;
    let raised = raise(&http, &daemon, &current.service(), "dr-current").await;
    assert_eq!(raised.status, 201, "{}", raised.body);
}

/// The daemon starts although the JWKS server is down (it still has
/// findings to escalate), but is not ready and lets nobody in. Once the
/// server is back, the keys are fetched within seconds and logins pass;
/// when it goes down again, the keys already fetched stay in use.
async fn a_jwks_server_down_at_start_refuses_logins_until_it_is_back(db: Db) {
    let key = TestKey::rsa("rsa-a", "rsa-a.pem", Algorithm::RS256);
    let mut server = JwksServer::stopped(vec![key.jwk.clone()]);
    let (_env, daemon) = start(
        db,
        &server,
        "jwks_refresh = \"1h\"\njwks_unknown_kid_cooldown = \"300ms\"\n",
    )
    .await;
    let http = Http::default();
    let ready = || async {
        http.client()
            .get(format!("{}/readyz", daemon.url))
            .send()
            .await
            .expect("GET /readyz")
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 503);
    let clients = Clients::start(&daemon).await;
    let refused = clients
        .connect_with("down", json!({ "auth": { "token": key.viewer("dr-a") } }))
        .await;
    assert_eq!(refused, Err(REFUSED.to_string()));
    let reply = raise(&http, &daemon, &key.service(), "dr-a").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(
        metric(
            &daemon,
            "readback_jwks_refresh_total{outcome=\"unreachable\"}"
        )
        .await
            >= 1
    );

    server.resume().await;
    let deadline = std::time::Instant::now() + WAIT;
    while ready().await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready after the JWKS server came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    clients.connect("back", &key.viewer("dr-a")).await;

    // Down again: a fetch fails (asked for by an unknown kid), the keys
    // fetched before still verify, and the daemon stays ready.
    server.stop().await;
    let failed = metric(
        &daemon,
        "readback_jwks_refresh_total{outcome=\"unreachable\"}",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let unknown = TestKey::rsa("nobody", "rsa-b.pem", Algorithm::RS256);
    assert_eq!(
        raise(&http, &daemon, &unknown.service(), "dr-a")
            .await
            .status,
        401
    );
    let unreachable = metric(
        &daemon,
        "readback_jwks_refresh_total{outcome=\"unreachable\"}",
    )
    .await;
    assert!(
        unreachable > failed,
        "the fetch the unknown kid asked for failed"
    );
    let raised = raise(&http, &daemon, &key.service(), "dr-a").await;
    assert_eq!(raised.status, 201, "{}", raised.body);
    clients.next_event("back", "critical_notification").await;
    assert_eq!(ready().await, 200);
}
