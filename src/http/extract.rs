//! Extractors: who is calling (and may they), and request bodies and
//! query strings parsed with errors that name the field.
//!
//! A handler's signature says who may call it: `Authorized<ServiceOrAdmin>`
//! runs the token check and the role check, and audits a refusal.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::audit::refusals::Refusal;
use crate::audit::{Action, AuditEvent};
use crate::auth::{Identity, TokenError, roles};
use crate::client_addr::ClientAddr;
use crate::clock::Timestamp;
use crate::limits::PerKey;
use crate::state::AppState;
use crate::store::audit::append_alone;
use crate::validation::FieldError;

/// The set of roles an endpoint admits.
pub trait Roles: Send + Sync + 'static {
    /// Empty means any authenticated caller.
    const ALLOWED: &'static [&'static str];
    const DESCRIPTION: &'static str;
}

pub struct ServiceOrAdmin;
impl Roles for ServiceOrAdmin {
    const ALLOWED: &'static [&'static str] = &[roles::SERVICE, roles::ADMIN];
    const DESCRIPTION: &'static str = "service or admin";
}

pub struct AdminOnly;
impl Roles for AdminOnly {
    const ALLOWED: &'static [&'static str] = &[roles::ADMIN];
    const DESCRIPTION: &'static str = "admin";
}

/// Service, admin or auditor: may read notifications.
pub struct Reader;
impl Roles for Reader {
    const ALLOWED: &'static [&'static str] = &[roles::SERVICE, roles::ADMIN, roles::AUDITOR];
    const DESCRIPTION: &'static str = "service, admin or auditor";
}

pub struct AnyRole;
impl Roles for AnyRole {
    const ALLOWED: &'static [&'static str] = &[];
    const DESCRIPTION: &'static str = "any";
}

/// A verified caller holding one of `R`'s roles.
pub struct Authorized<R: Roles>(pub Identity, pub PhantomData<R>);

impl<R: Roles> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let verified = match token {
            Some(token) => state
                .verifier
                .verify_fetching(token)
                .await
                .map(|verified| verified.identity),
            None => Err(TokenError::Missing),
        };
        let path = parts.uri.path().to_string();
        // Resolved once, by the outermost middleware (`limits::admit`).
        let client = parts.extensions.get::<ClientAddr>().map(|c| c.ip);
        let identity = match verified {
            Ok(identity) => Identity {
                client_addr: client,
                ..identity
            },
            Err(refusal) => {
                state.metrics.auth_refused.inc();
                if let Some(client) = client {
                    state.limits.refused_logins.refused(client);
                }
                state.refusals.record(&Refusal {
                    source: client,
                    channel: "http",
                    reason: refusal.reason(),
                    path: Some(&path),
                    user_agent: parts
                        .headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok()),
                });
                return Err(ApiError::Unauthorized(refusal));
            }
        };
        if !R::ALLOWED.is_empty() && !identity.has_any_role(R::ALLOWED) {
            audit(
                state,
                AuditEvent::new(Action::AccessDenied, Timestamp::now())
                    .by(&identity)
                    .outcome("refused")
                    .detail(json!({
                        "method": parts.method.as_str(),
                        "path": path,
                        "required": R::DESCRIPTION,
                    })),
            )
            .await;
            return Err(ApiError::RoleRequired(format!(
                "this endpoint requires the role {}",
                R::DESCRIPTION
            )));
        }
        Ok(Self(identity, PhantomData))
    }
}

/// Spends one unit of `caller`'s budget in `limiter` (the `[limits]` limit
/// named `limit`), before the handler does any work: over it, `429` with
/// `Retry-After`, counted in `readback_rate_limited_total{limit}`.
/// Which `[limits]` budget an HTTP request spends.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Raises,
    AuditQueries,
}

impl Budget {
    /// The `limit` label of `readback_rate_limited_total`.
    fn name(self) -> &'static str {
        match self {
            Budget::Raises => "raises",
            Budget::AuditQueries => "audit_queries",
        }
    }
}

/// Spends one request of the caller's `budget`, or refuses it (429).
pub fn within_limit(state: &AppState, budget: Budget, caller: &Identity) -> Result<(), ApiError> {
    let limiter: &PerKey = match budget {
        Budget::Raises => &state.limits.raises,
        Budget::AuditQueries => &state.limits.audit_queries,
    };
    let limit = budget.name();
    limiter.check(&caller.user_id).map_err(|retry_after| {
        state.metrics.rate_limited(limit);
        // Not logged above debug: a flood would flood the log too; the
        // metric is what operators watch.
        tracing::debug!(user_id = %caller.user_id, limit, ?retry_after, "rate limited");
        ApiError::RateLimited(retry_after)
    })
}

async fn audit(state: &AppState, event: AuditEvent) {
    if let Err(e) = append_alone(&state.store, &event).await {
        tracing::warn!(error = %e, "could not audit a refused request");
    }
}

/// A JSON body, size-limited, with errors as problem+json.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.config.server.max_body_bytes;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: absent (empty) is `None`.
pub struct OptionalJsonBody(pub Option<Value>);

impl FromRequest<AppState> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let has_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0")
            || request.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_body {
            return Ok(Self(None));
        }
        JsonBody::from_request(request, state)
            .await
            .map(|JsonBody(v)| Self(Some(v)))
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new("body", format!("malformed JSON: {e}")).into())
}

pub use crate::validation::deserialize_json as from_json;

/// A query string parsed into `T`, naming the offending parameter.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "query".to_string()
                } else {
                    path
                };
                FieldError::new(field, e.into_inner().to_string()).into()
            })
    }
}

/// The `limit` query parameter of a list: `default` when absent, else
/// between 1 and `max`.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, FieldError> {
    match limit.unwrap_or(default) {
        limit if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(FieldError::new(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

/// An optional RFC 3339 UTC query parameter.
pub fn query_time(field: &str, value: &Option<String>) -> Result<Option<Timestamp>, FieldError> {
    value
        .as_deref()
        .map(|text| {
            Timestamp::parse_rfc3339(text).ok_or_else(|| {
                FieldError::new(
                    field,
                    "must be an RFC 3339 UTC time, e.g. 2026-11-22T10:00:00.000Z",
                )
            })
        })
        .transpose()
}
