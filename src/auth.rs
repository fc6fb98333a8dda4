//! Who is calling: JWT verification and the caller's identity.
//!
//! Owns: turning a bearer token into an [`Identity`] (signature always
//! verified, one configured algorithm, `exp` required, `nbf`/`iss`/`aud`
//! checked when configured), the three refusal messages of the contract, and
//! minting tokens for `readbackd token`. Never: decode a token without
//! verifying it, accept `alg: none`, or let the token header choose the
//! algorithm.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
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

/// Verifies tokens with the one algorithm and key the configuration names.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime: Option<Duration>,
}

impl Verifier {
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let (algorithm, key) = decoding_key(config)?;
        // A single allowed algorithm is what defeats algorithm confusion: a
        // token whose header names any other algorithm (including `none`)
        // is refused before its signature is looked at.
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
        Ok(Self {
            key,
            validation,
            max_lifetime: config.max_token_lifetime,
        })
    }

    /// Verifies `token` and reads the identity claims from it.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_until(token).map(|verified| verified.identity)
    }

    /// [`Self::verify`], and when the token expires (its `exp`) and was
    /// issued (its `iat`, when it has one).
    pub fn verify_until(&self, token: &str) -> Result<Verified, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > 16 * 1024 {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            other => TokenError::Invalid(format!("{other:?}")),
        })?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if let Some(max) = self.max_lifetime {
            let iat = data
                .claims
                .get("iat")
                .and_then(Value::as_i64)
                .ok_or_else(|| TokenError::Invalid("no iat claim".into()))?;
            if exp.saturating_sub(iat) > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
                return Err(TokenError::Invalid(
                    "lifetime over auth.max_token_lifetime".into(),
                ));
            }
        }
        let identity = identity_from_claims(&data.claims).map_err(TokenError::Invalid)?;
        Ok(Verified {
            identity,
            expires_at: Timestamp::from_millis(exp.saturating_mul(1000)),
            issued_at: data
                .claims
                .get("iat")
                .and_then(Value::as_i64)
                .map(|iat| Timestamp::from_millis(iat.saturating_mul(1000))),
        })
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
        .ok_or("auth: no jwt_secret or jwt_public_key_file")?;
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "auth.jwt_public_key_file: cannot read {}: {e}",
            path.display()
        )
    })?;
    let wanted = config.jwt_algorithm;
    if wanted != Some(JwtAlgorithm::ES256)
        && let Ok(key) = DecodingKey::from_rsa_pem(&pem)
    {
        return Ok((Algorithm::RS256, key));
    }
    if wanted != Some(JwtAlgorithm::RS256)
        && let Ok(key) = DecodingKey::from_ec_pem(&pem)
    {
        return Ok((Algorithm::ES256, key));
    }
    Err(format!(
        "auth.jwt_public_key_file: {} is not an RSA or P-256 public key in PEM form",
        path.display()
    ))
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
}

/// Signs a token with the configured key (HS256 secret, or the private key
/// file for RS256/ES256).
pub fn mint(config: &AuthConfig, request: &TokenRequest) -> Result<String, String> {
    let (algorithm, key) = if let Some(secret) = &config.jwt_secret {
        (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )
    } else {
        let path = config
            .jwt_private_key_file
            .as_ref()
            .ok_or("auth.jwt_private_key_file is needed to mint RS256/ES256 tokens")?;
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, key)
        } else {
            let key = EncodingKey::from_ec_pem(&pem)
                .map_err(|e| format!("{} is not an RSA or EC private key: {e}", path.display()))?;
            (Algorithm::ES256, key)
        }
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
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(|e| e.to_string())
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
}
