//! Who is calling: JWT verification and the caller's identity.
//!
//! Owns: turning a bearer token into an [`Identity`] (signature always
//! verified, `exp` required, `nbf`/`iss`/`aud` checked when configured),
//! the three refusal messages of the contract, the keys tokens are checked
//! against — one configured key, or the identity provider's published key
//! set ([`JwksKeys`]: which published keys are usable, and when a token
//! naming an unknown `kid` may ask for the set again) — and minting tokens
//! for `readbackd token`. Never: decode a token without verifying it,
//! accept `alg: none`, let the token header choose an algorithm its key was
//! not configured for, take a symmetric key from a JWKS, or fetch anything
//! itself (the fetcher in `jwks.rs` hands it the documents).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::clock::Timestamp;
use crate::config::{AuthConfig, JwtAlgorithm};

/// Longest user, session or role identifier accepted from a token.
const MAX_ID_LEN: usize = 256;
const MAX_ROLES: usize = 32;

/// Roles that mean something to the HTTP API; any other role is a viewer.
pub mod roles {
    pub const SERVICE: &str = "service";
    pub const ADMIN: &str = "admin";
    pub const AUDITOR: &str = "auditor";
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<String>,
    pub session_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Where the caller is (the client address the edge resolved, proxy-
    /// aware): recorded in the audit rows written on its behalf. Set by
    /// the edge after verification; `None` for work the daemon does itself.
    pub client_addr: Option<std::net::IpAddr>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_any_role(&self, roles: &[&str]) -> bool {
        roles.iter().any(|role| self.has_role(role))
    }

    /// The first role, for audit rows that record one `actorRole`.
    pub fn primary_role(&self) -> Option<&str> {
        self.roles.first().map(String::as_str)
    }
}

/// Why a token was refused. `Display` is the exact text the contract gives
/// for Socket.IO `connect_error` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Authentication token required")]
    Missing,
    #[error("Authentication token expired")]
    Expired,
    /// The detail is for the audit log and server logs, never the client.
    #[error("Invalid authentication token")]
    Invalid(String),
}

impl TokenError {
    /// A short machine-readable reason for the audit row.
    pub fn reason(&self) -> &str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Expired => "expired",
            TokenError::Invalid(detail) => detail,
        }
    }
}

/// A verified token: who, and its validity period.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Identity,
    pub expires_at: Timestamp,
    pub issued_at: Option<Timestamp>,
}

/// Verifies tokens with the configured key, or with the JWKS key their
/// `kid` names.
pub struct Verifier {
    keys: Keys,
    /// One per algorithm a key may verify: a single allowed algorithm per
    /// decode is what defeats algorithm confusion.
    validations: HashMap<Algorithm, Validation>,
    max_lifetime: Option<Duration>,
}

enum Keys {
    /// `jwt_secret` or `jwt_public_key_file`: one key, one algorithm.
    Fixed {
        algorithm: Algorithm,
        key: DecodingKey,
    },
    /// `jwks_url`: the published keys, each with its own algorithms.
    Jwks(Arc<JwksKeys>),
}

/// A refusal, telling apart a token whose key is not (yet) known: that one
/// may pass once the key set has been fetched again.
enum Refusal {
    Token(TokenError),
    UnknownKey(&'static str),
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Self {
        Refusal::Token(error)
    }
}

impl From<Refusal> for TokenError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Token(error) => error,
            Refusal::UnknownKey(reason) => TokenError::Invalid(reason.into()),
        }
    }
}

impl Verifier {
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let (keys, algorithms) = if config.jwks_url.is_some() {
            // Asymmetric only, whatever the configuration says: a JWKS is
            // public, so an HMAC "key" from it would let anyone sign.
            let algorithms: Vec<Algorithm> = config
                .jwks_algorithms()
                .into_iter()
                .map(algorithm)
                .filter(|a| *a != Algorithm::HS256)
                .collect();
            if algorithms.is_empty() {
                return Err("auth.jwks_algorithms: no asymmetric algorithm".into());
            }
            let keys = JwksKeys::new(
                algorithms.clone(),
                config.jwks_unknown_kid_cooldown,
                config.jwks_timeout,
            );
            (Keys::Jwks(Arc::new(keys)), algorithms)
        } else {
            let (algorithm, key) = decoding_key(config)?;
            (Keys::Fixed { algorithm, key }, vec![algorithm])
        };
        let validations = algorithms
            .into_iter()
            .map(|algorithm| (algorithm, validation(config, algorithm)))
            .collect();
        Ok(Self {
            keys,
            validations,
            max_lifetime: config.max_token_lifetime,
        })
    }

    /// The published key set, when tokens are verified against a JWKS: for
    /// the fetcher to fill, and for readiness.
    pub fn jwks(&self) -> Option<Arc<JwksKeys>> {
        match &self.keys {
            Keys::Jwks(keys) => Some(keys.clone()),
            Keys::Fixed { .. } => None,
        }
    }

    /// Verifies `token` and reads the identity claims from it.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_until(token).map(|verified| verified.identity)
    }

    /// [`Self::verify`], and when the token expires (its `exp`) and was
    /// issued (its `iat`, when it has one). Never waits: a token naming a
    /// JWKS key not known yet is refused, and the key set is asked for
    /// again (at most once per `auth.jwks_unknown_kid_cooldown`) so that
    /// the next attempt may pass.
    pub fn verify_until(&self, token: &str) -> Result<Verified, TokenError> {
        match self.check(token) {
            Err(Refusal::UnknownKey(reason)) => {
                if let Keys::Jwks(keys) = &self.keys {
                    keys.ask_refresh();
                }
                Err(TokenError::Invalid(reason.into()))
            }
            other => other.map_err(TokenError::from),
        }
    }

    /// [`Self::verify_until`] for a login that can wait: a token naming a
    /// JWKS key not known yet waits (at most `auth.jwks_timeout`) for the
    /// key set to be fetched again, then is checked once more — so a key
    /// the identity provider has just published is accepted at its first
    /// use. When a fetch was asked for less than
    /// `auth.jwks_unknown_kid_cooldown` ago (and has finished), the token
    /// is refused at once.
    pub async fn verify_fetching(&self, token: &str) -> Result<Verified, TokenError> {
        match self.check(token) {
            Err(Refusal::UnknownKey(reason)) => {
                let Keys::Jwks(keys) = &self.keys else {
                    return Err(TokenError::Invalid(reason.into()));
                };
                let Some(fetch) = keys.ask_refresh() else {
                    return Err(TokenError::Invalid(reason.into()));
                };
                keys.fetched(fetch).await;
                self.check(token).map_err(TokenError::from)
            }
            other => other.map_err(TokenError::from),
        }
    }

    fn check(&self, token: &str) -> Result<Verified, Refusal> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing.into());
        }
        if token.len() > 16 * 1024 {
            return Err(TokenError::Invalid("token too long".into()).into());
        }
        let claims = match &self.keys {
            Keys::Fixed { algorithm, key } => self.decode(token, key, *algorithm)?,
            Keys::Jwks(keys) => {
                // The header is read unverified only to pick the key; the
                // key then fixes which algorithms may verify it.
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| TokenError::Invalid("malformed header".into()))?;
                let kid = header
                    .kid
                    .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
                let set = keys.set.load();
                let Some(key) = set.keys.get(&kid) else {
                    return Err(Refusal::UnknownKey(if set.loaded {
                        "unknown kid"
                    } else {
                        "no JWKS keys fetched yet"
                    }));
                };
                if !key.algorithms.contains(&header.alg) {
                    return Err(
                        TokenError::Invalid("algorithm not allowed for this key".into()).into(),
                    );
                }
                self.decode(token, &key.key, header.alg)?
            }
        };
        self.read_claims(&claims).map_err(Refusal::Token)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Map<String, Value>, TokenError> {
        let validation = self
            .validations
            .get(&algorithm)
            .ok_or_else(|| TokenError::Invalid("algorithm not allowed".into()))?;
        jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                other => TokenError::Invalid(format!("{other:?}")),
            })
    }

    fn read_claims(&self, claims: &Map<String, Value>) -> Result<Verified, TokenError> {
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if let Some(max) = self.max_lifetime {
            let iat = claims
                .get("iat")
                .and_then(Value::as_i64)
                .ok_or_else(|| TokenError::Invalid("no iat claim".into()))?;
            if exp.saturating_sub(iat) > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
                return Err(TokenError::Invalid(
                    "lifetime over auth.max_token_lifetime".into(),
                ));
            }
        }
        let identity = identity_from_claims(claims).map_err(TokenError::Invalid)?;
        Ok(Verified {
            identity,
            expires_at: Timestamp::from_millis(exp.saturating_mul(1000)),
            issued_at: claims
                .get("iat")
                .and_then(Value::as_i64)
                .map(|iat| Timestamp::from_millis(iat.saturating_mul(1000))),
        })
    }
}

/// The checks of every token, for one algorithm.
fn validation(config: &AuthConfig, algorithm: Algorithm) -> Validation {
    // A single allowed algorithm is what defeats algorithm confusion: a
    // token whose header names any other algorithm (including `none`) is
    // refused before its signature is looked at.
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    // A configured issuer or audience is required, not merely checked
    // when present: a token from elsewhere that simply leaves the claim
    // out must not pass.
    let mut required = vec!["exp"];
    if config.issuer.is_some() {
        required.push("iss");
    }
    if config.audience.is_some() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = config.leeway.as_secs();
    match &config.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
    }
    validation
}

fn algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn decoding_key(config: &AuthConfig) -> Result<(Algorithm, DecodingKey), String> {
    if let Some(secret) = &config.jwt_secret {
        return Ok((
            Algorithm::HS256,
            DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        ));
    }
    let path = config
        .jwt_public_key_file
        .as_ref()
        .ok_or("auth: no jwt_secret, jwt_public_key_file or jwks_url")?;
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "auth.jwt_public_key_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let candidates = [
        (JwtAlgorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
        (JwtAlgorithm::PS256, DecodingKey::from_rsa_pem(&pem)),
        (JwtAlgorithm::ES256, DecodingKey::from_ec_pem(&pem)),
        (JwtAlgorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
    ];
    // The key type decides; `jwt_algorithm` picks between RS256 and PS256
    // for an RSA key, or pins the type.
    let wanted = config.jwt_algorithm;
    for (candidate, key) in candidates {
        if let Ok(key) = key
            && (wanted == Some(candidate) || wanted.is_none())
        {
            return Ok((algorithm(candidate), key));
        }
    }
    Err(format!(
        "auth.jwt_public_key_file: {} is not an RSA, P-256 or Ed25519 public key in PEM form{}",
        path.display(),
        match wanted {
            Some(wanted) => format!(" for {wanted:?}"),
            None => String::new(),
        }
    ))
}

/// The keys of the identity provider's JWKS that tokens may be verified
/// with, swapped whole when a fetch brings a usable set, and the
/// bookkeeping that lets a token with an unknown `kid` ask for a fetch
/// without letting made-up `kid`s hammer the identity provider.
pub struct JwksKeys {
    set: ArcSwap<KeySet>,
    /// What `auth.jwks_algorithms` allows.
    allowed: Vec<Algorithm>,
    cooldown: Duration,
    /// The longest a login waits for a fetch it asked for.
    wait: Duration,
    demand: Mutex<Demand>,
    /// Rung when a fetch is wanted before the periodic one.
    wanted: tokio::sync::Notify,
    /// The number of the last fetch that finished (successful or not).
    finished: tokio::sync::watch::Sender<u64>,
}

/// The fetches asked for by tokens with an unknown `kid`.
#[derive(Default)]
struct Demand {
    /// When the last fetch was asked for (the cooldown runs from here).
    last_asked: Option<Instant>,
    /// A fetch was asked for and has not started yet.
    pending: bool,
    /// The number of fetches started.
    started: u64,
}

/// One usable published key.
struct JwksKey {
    key: DecodingKey,
    /// Its algorithms: the one its `alg` names, else those of its key type
    /// that `auth.jwks_algorithms` allows.
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, JwksKey>,
    /// Whether any fetch has succeeded yet.
    loaded: bool,
}

/// What a fetched key set brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The `kid`s now usable.
    pub kids: Vec<String>,
    /// Published keys left out, each as `kid: why`.
    pub skipped: Vec<String>,
    /// Whether the usable `kid`s differ from the previous set's.
    pub changed: bool,
}

/// A fetch, to wait for with [`JwksKeys::fetched`].
#[derive(Debug, Clone, Copy)]
pub struct FetchTicket(u64);

impl JwksKeys {
    fn new(allowed: Vec<Algorithm>, cooldown: Duration, wait: Duration) -> Self {
        Self {
            set: ArcSwap::from_pointee(KeySet::default()),
            allowed,
            cooldown,
            wait,
            demand: Mutex::new(Demand::default()),
            wanted: tokio::sync::Notify::new(),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether a key set has been fetched: until then every token is
    /// refused.
    pub fn is_loaded(&self) -> bool {
        self.set.load().loaded
    }

    /// Reads a fetched JWKS document and, when it holds at least one
    /// usable key, verifies tokens with exactly its keys from now on. A
    /// document without a usable key changes nothing (the previous keys
    /// stay): it is far likelier a fault than a deliberate revocation of
    /// every key.
    pub fn install(&self, document: &[u8]) -> Result<Installed, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|e| format!("not a JWKS document (an object with `keys`): {e}"))?;
        let mut keys = HashMap::new();
        let mut skipped = Vec::new();
        for value in &document.keys {
            let kid = value.get("kid").and_then(Value::as_str).unwrap_or("?");
            match usable_key(value, &self.allowed) {
                Ok((kid, _)) if keys.contains_key(&kid) => {
                    skipped.push(format!("{kid}: the same kid again"));
                }
                Ok((kid, key)) => {
                    keys.insert(kid, key);
                }
                Err(why) => skipped.push(format!("{kid}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable key among {} published ({})",
                document.keys.len(),
                skipped.join("; ")
            ));
        }
        let mut kids: Vec<String> = keys.keys().cloned().collect();
        kids.sort();
        let previous = self.set.load();
        let mut before: Vec<&String> = previous.keys.keys().collect();
        before.sort();
        let changed = !previous.loaded || before.into_iter().ne(kids.iter());
        self.set.store(Arc::new(KeySet { keys, loaded: true }));
        Ok(Installed {
            kids,
            skipped,
            changed,
        })
    }

    /// Waits until a fetch is wanted sooner than the periodic one.
    pub async fn refresh_wanted(&self) {
        self.wanted.notified().await;
    }

    /// The fetcher starts a fetch: it serves every request made so far.
    pub fn fetch_starting(&self) -> FetchTicket {
        let mut demand = self.demand.lock().unwrap_or_else(PoisonError::into_inner);
        demand.pending = false;
        demand.started += 1;
        FetchTicket(demand.started)
    }

    /// The fetcher finished `fetch` (whatever its outcome): its waiters
    /// look again.
    pub fn fetch_finished(&self, fetch: FetchTicket) {
        self.finished.send_replace(fetch.0);
    }

    /// Asks for a fetch because a token named an unknown `kid`, unless one
    /// was asked for less than the cooldown ago. The fetch to wait for, or
    /// `None` when a token should be refused at once.
    fn ask_refresh(&self) -> Option<FetchTicket> {
        let mut demand = self.demand.lock().unwrap_or_else(PoisonError::into_inner);
        if !demand.pending {
            let now = Instant::now();
            if demand
                .last_asked
                .is_some_and(|at| now.duration_since(at) < self.cooldown)
            {
                return None;
            }
            demand.last_asked = Some(now);
            demand.pending = true;
            self.wanted.notify_one();
        }
        // The fetch that will start next, not one already under way: that
        // one may have read the document before the new key was in it.
        Some(FetchTicket(demand.started + 1))
    }

    /// Waits (at most `auth.jwks_timeout`) until `fetch` has finished.
    async fn fetched(&self, fetch: FetchTicket) {
        let mut finished = self.finished.subscribe();
        let _ = tokio::time::timeout(self.wait, finished.wait_for(|done| *done >= fetch.0)).await;
    }
}

/// A published key readback may verify with: a signing key of an allowed
/// asymmetric type, with a `kid`, whose `alg` (when given) agrees with its
/// type. Never a symmetric (`oct`) key.
fn usable_key(value: &Value, allowed: &[Algorithm]) -> Result<(String, JwksKey), String> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "not a JWK".to_string())?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|kid| !kid.is_empty() && kid.len() <= MAX_ID_LEN)
        .ok_or("no kid")?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|usage| *usage != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use is not sig)".into());
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("key_ops does not include verify".into());
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::PS256],
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            &[Algorithm::ES256]
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (kty oct) is never taken from a JWKS".into());
        }
        _ => return Err("key type or curve not supported".into()),
    };
    let mut algorithms: Vec<Algorithm> = family
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    if let Some(named) = jwk.common.key_algorithm {
        let named = match named {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => return Err(format!("alg {other:?} is not supported")),
        };
        if !family.contains(&named) {
            return Err(format!("alg {named:?} does not match the key type"));
        }
        algorithms.retain(|a| *a == named);
    }
    if algorithms.is_empty() {
        return Err("its algorithm is not in auth.jwks_algorithms".into());
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok((kid, JwksKey { key, algorithms }))
}

/// Reads the contract's claims: user from `sub` else `userId`, roles from
/// `role` and/or `roles`, session from `sessionId` else `sid`.
fn identity_from_claims(claims: &Map<String, Value>) -> Result<Identity, String> {
    let user_id = claim_id(claims, "sub")
        .or_else(|| claim_id(claims, "userId"))
        .ok_or("no sub or userId claim")?;
    if user_id.is_empty() || user_id.len() > MAX_ID_LEN {
        return Err("user id empty or too long".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(role) = claims.get("role") {
        match role {
            Value::String(role) => roles.push(role.clone()),
            Value::Null => {}
            _ => return Err("role claim is not a string".into()),
        }
    }
    if let Some(list) = claims.get("roles") {
        match list {
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(role) => roles.push(role.clone()),
                        _ => return Err("roles claim holds a non-string".into()),
                    }
                }
            }
            Value::String(role) => roles.push(role.clone()),
            Value::Null => {}
            _ => return Err("roles claim is not an array".into()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    roles.retain(|r| !r.is_empty() && seen.insert(r.clone()));
    if roles.len() > MAX_ROLES || roles.iter().any(|r| r.len() > MAX_ID_LEN) {
        return Err("too many or too long roles".into());
    }
    let session_id = claim_id(claims, "sessionId").or_else(|| claim_id(claims, "sid"));
    if session_id
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > MAX_ID_LEN)
    {
        return Err("session id empty or too long".into());
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .map(str::to_owned)
    };
    Ok(Identity {
        user_id,
        roles,
        session_id,
        email: text("email"),
        name: text("name"),
        client_addr: None,
    })
}

/// Identifiers are opaque strings; a number is accepted and kept as text.
fn claim_id(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What `readbackd token` puts into a token.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenRequest {
    pub user_id: String,
    pub roles: Vec<String>,
    pub session_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub ttl: Duration,
    /// The `kid` header: which published key verifies the token (JWKS).
    pub key_id: Option<String>,
}

/// Signs a token with the configured key (HS256 secret, or the private key
/// file for RS256, PS256, ES256 or EdDSA).
pub fn mint(config: &AuthConfig, request: &TokenRequest) -> Result<String, String> {
    let (algorithm, key) = if let Some(secret) = &config.jwt_secret {
        (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )
    } else {
        let path = config.jwt_private_key_file.as_ref().ok_or(
            "auth.jwt_private_key_file is needed to mint RS256, PS256, ES256 or EdDSA tokens",
        )?;
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let wanted = config.jwt_algorithm;
        let candidates = [
            (JwtAlgorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
            (JwtAlgorithm::PS256, EncodingKey::from_rsa_pem(&pem)),
            (JwtAlgorithm::ES256, EncodingKey::from_ec_pem(&pem)),
            (JwtAlgorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
        ];
        candidates
            .into_iter()
            .find_map(|(candidate, key)| {
                key.ok()
                    .filter(|_| wanted.is_none_or(|w| w == candidate))
                    .map(|key| (algorithm(candidate), key))
            })
            .ok_or_else(|| {
                format!(
                    "{} is not an RSA, P-256 or Ed25519 private key in PEM form",
                    path.display()
                )
            })?
    };
    let now = Timestamp::now().as_millis() / 1000;
    let mut claims = json!({
        "sub": request.user_id,
        "roles": request.roles,
        "iat": now,
        "exp": now + request.ttl.as_secs() as i64,
    });
    let object = claims.as_object_mut().expect("json object");
    if let Some(role) = request.roles.first() {
        object.insert("role".into(), json!(role));
    }
    for (name, value) in [
        ("sessionId", &request.session_id),
        ("email", &request.email),
        ("name", &request.name),
    ] {
        if let Some(value) = value {
            object.insert(name.into(), json!(value));
        }
    }
    if let Some(issuer) = &config.issuer {
        object.insert("iss".into(), json!(issuer));
    }
    if let Some(audience) = &config.audience {
        object.insert("aud".into(), json!(audience));
    }
    let mut header = Header::new(algorithm);
    header.kid.clone_from(&request.key_id);
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(SecretString::from("0123456789abcdef-test")),
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_private_key_file: None,
            jwt_algorithm: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
            max_token_lifetime: None,
            expired_token_grace: Duration::from_secs(30),
            jwks_url: None,
            jwks_algorithms: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_unknown_kid_cooldown: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            jwks_max_bytes: 128 * 1024,
            jwks_allow_plaintext: false,
        }
    }

    fn sign(claims: Value, secret: &str, algorithm: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(algorithm),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> i64 {
        Timestamp::now().as_millis() / 1000 + 3600
    }

    #[test]
    fn reads_contract_claims() {
        let verifier = Verifier::from_config(&config()).unwrap();
        let token = sign(
            json!({"userId": 42, "roles": ["radiologist", "admin"], "sid": "s-1", "email": "a@b.c", "exp": in_an_hour()}),
            "0123456789abcdef-test",
            Algorithm::HS256,
        );
        let identity = verifier.verify(&token).unwrap();
        assert_eq!(identity.user_id, "42");
        assert_eq!(identity.roles, ["radiologist", "admin"]);
        assert_eq!(identity.session_id.as_deref(), Some("s-1"));
        assert_eq!(identity.email.as_deref(), Some("a@b.c"));
    }

    #[test]
    fn refuses_expired_forged_unsigned_and_exp_less_tokens() {
        let verifier = Verifier::from_config(&config()).unwrap();
        let expired = sign(
            json!({"sub": "u", "exp": in_an_hour() - 7200}),
            "0123456789abcdef-test",
            Algorithm::HS256,
        );
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let forged = sign(
            json!({"sub": "u", "exp": in_an_hour()}),
            "another-secret-of-16+",
            Algorithm::HS256,
        );
        assert!(matches!(
            verifier.verify(&forged),
            Err(TokenError::Invalid(_))
        ));
        let other_alg = sign(
            json!({"sub": "u", "exp": in_an_hour()}),
            "0123456789abcdef-test",
            Algorithm::HS512,
        );
        assert!(matches!(
            verifier.verify(&other_alg),
            Err(TokenError::Invalid(_))
        ));
        // alg: none, hand-built.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(matches!(verifier.verify(none), Err(TokenError::Invalid(_))));
        let no_exp = sign(
            json!({"sub": "u"}),
            "0123456789abcdef-test",
            Algorithm::HS256,
        );
        assert!(matches!(
            verifier.verify(&no_exp),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(verifier.verify("  "), Err(TokenError::Missing));
    }

    #[test]
    fn minted_tokens_verify() {
        let config = config();
        let token = mint(
            &config,
            &TokenRequest {
                user_id: "dr-who".into(),
                roles: vec!["radiologist".into()],
                session_id: Some("s-9".into()),
                email: None,
                name: None,
                ttl: Duration::from_secs(60),
                key_id: None,
            },
        )
        .unwrap();
        let identity = Verifier::from_config(&config)
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!(identity.user_id, "dr-who");
        assert_eq!(identity.session_id.as_deref(), Some("s-9"));
    }

    fn jwks_config() -> AuthConfig {
        AuthConfig {
            jwt_secret: None,
            jwks_url: Some("https://idp.hospital.example/jwks.json".into()),
            ..config()
        }
    }

    /// A fresh P-256 key and its public JWK (`kid`, `use: sig`).
    fn ec_key(kid: &str) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        (key, jwk)
    }

    fn sign_with(algorithm: Algorithm, kid: &str, key: &EncodingKey) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &json!({"sub": "u", "exp": in_an_hour()}), key).unwrap()
    }

    #[test]
    fn only_usable_signing_keys_are_taken_from_a_jwks() {
        let verifier = Verifier::from_config(&jwks_config()).unwrap();
        let keys = verifier.jwks().unwrap();
        assert!(!keys.is_loaded());
        let (key, jwk) = ec_key("ec-1");
        let (_, mut encryption) = ec_key("enc");
        encryption["use"] = json!("enc");
        let (_, mut mislabelled) = ec_key("mislabelled");
        mislabelled["alg"] = json!("RS256");
        let (_, mut no_kid) = ec_key("x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let (_, mut p384) = ec_key("p384");
        p384["crv"] = json!("P-384");
        let secret = "a-shared-secret-of-more-than-32-bytes";
        let mut oct = serde_json::to_value(
            Jwk::from_encoding_key(
                &EncodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap(),
        )
        .unwrap();
        oct["kid"] = json!("shared");
        let document = json!({ "keys": [jwk, encryption, mislabelled, no_kid, p384, oct, {"kty": "RSA", "kid": "junk"}] });
        let installed = keys.install(document.to_string().as_bytes()).unwrap();
        assert_eq!(installed.kids, ["ec-1"]);
        assert_eq!(installed.skipped.len(), 6, "{:?}", installed.skipped);
        assert!(installed.changed);
        assert!(keys.is_loaded());

        assert!(
            verifier
                .verify(&sign_with(Algorithm::ES256, "ec-1", &key))
                .is_ok()
        );
        let hs = sign_with(
            Algorithm::HS256,
            "shared",
            &EncodingKey::from_secret(secret.as_bytes()),
        );
        assert_eq!(
            verifier.verify(&hs),
            Err(TokenError::Invalid("unknown kid".into()))
        );

        // A document without a usable key changes nothing.
        assert!(keys.install(br#"{"keys": []}"#).is_err());
        assert!(keys.install(b"<html>").is_err());
        assert!(
            verifier
                .verify(&sign_with(Algorithm::ES256, "ec-1", &key))
                .is_ok()
        );
        let again = keys.install(json!({ "keys": [ec_key("ec-1").1] }).to_string().as_bytes());
        assert!(!again.unwrap().changed, "same kids");
    }

    #[test]
    fn an_unknown_kid_asks_for_one_fetch_per_cooldown() {
        let verifier = Verifier::from_config(&jwks_config()).unwrap();
        let keys = verifier.jwks().unwrap();
        let first = keys.ask_refresh().expect("the first ask is granted");
        // Asked again before the fetch started: the same fetch.
        assert_eq!(keys.ask_refresh().map(|t| t.0), Some(first.0));
        let fetch = keys.fetch_starting();
        assert_eq!(fetch.0, first.0);
        keys.fetch_finished(fetch);
        // Within the cooldown (30 s): refused at once, no fetch.
        assert!(keys.ask_refresh().is_none());
    }
}
