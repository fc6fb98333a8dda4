//! Tokens the daemon accepts, signed with the harness's secret.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::SECRET;

/// Signs a token the daemon accepts.
pub fn token(user: &str, roles: &[&str], session: Option<&str>) -> String {
    let mut claims = json!({ "sub": user, "roles": roles, "exp": now_secs() + 3600 });
    if let Some(session) = session {
        claims["sessionId"] = json!(session);
    }
    sign(&claims, SECRET)
}

pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[allow(clippy::disallowed_methods)] // tokens and timings need the wall clock, not the daemon's
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn service_token() -> String {
    token("pacs", &["service"], None)
}
pub fn admin_token() -> String {
    token("it-admin", &["admin"], None)
}

/// A token that also carries an e-mail (learnt by the user directory).
pub fn token_with_email(user: &str, roles: &[&str], email: &str) -> String {
    sign(
        &json!({ "sub": user, "roles": roles, "email": email, "exp": now_secs() + 3600 }),
        SECRET,
    )
}
