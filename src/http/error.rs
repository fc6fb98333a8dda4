//! The HTTP error: every refusal and failure as RFC 9457 problem+json.
//!
//! Owns: the single mapping from errors to status codes and problem
//! bodies. Handlers return `Result<_, ApiError>` and use `?`.
//! Never: show database errors to clients (they are logged here instead).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::TokenError;
use crate::error::Error;
use crate::limits::RetryAfter;
use crate::store::StoreError;
use crate::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("{0}")]
    Unauthorized(TokenError),
    /// The caller's role may not use this endpoint.
    #[error("{0}")]
    RoleRequired(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// `/readyz`: the daemon cannot serve its callers yet.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A client address over one of its connection caps.
    #[error("{0}")]
    TooManyConnections(String),
    /// Not answered within `server.request_timeout`.
    #[error(
        "the request was not answered within server.request_timeout ({}); it may or may not have taken effect: retry it (a raise with the same Idempotency-Key is not raised twice)",
        humantime::format_duration(*.0)
    )]
    TimedOut(std::time::Duration),
    /// The caller spent its budget of this kind of request (`[limits]`).
    #[error("too many requests; retry after {} s", .0.whole_seconds())]
    RateLimited(RetryAfter),
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        ApiError::Domain(Error::Invalid(error))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Domain(Error::Store(error))
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Domain(error) => match error {
                Error::Invalid(_) => StatusCode::BAD_REQUEST,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                Error::Conflict(_) | Error::Expired(_) => StatusCode::CONFLICT,
                Error::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
                Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RoleRequired(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TimedOut(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Domain(error) => error.code(),
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RoleRequired(_) => "forbidden",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::NoRoute => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NotReady(_) => "not_ready",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::TimedOut(_) => "request_timeout",
            ApiError::RateLimited(_) => "rate_limited",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Domain(error @ Error::Store(inner)) => {
                tracing::error!(error = %inner, "database error");
                error.public_message()
            }
            ApiError::Domain(error) => error.public_message(),
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("urn:readback:problem:{}", self.code()),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
            "code": self.code(),
        });
        if let ApiError::Domain(Error::Invalid(field)) = &self {
            body["field"] = json!(field.field);
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited(retry_after) = &self {
            headers.insert(header::RETRY_AFTER, retry_after.whole_seconds().into());
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
