//! The domain error: why an action was refused or failed.
//!
//! Owns: the one error type that domain functions return. Each boundary
//! maps it exactly once — `http::error` to problem+json, `realtime` to the
//! Socket.IO ack `{ ok: false, code, message }`.
//! Never: carry database details to clients (`Store` is logged, not shown).

use crate::store::StoreError;
use crate::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (wrong user or role).
    #[error("{0}")]
    Forbidden(String),
    /// The target is in a state that does not allow it (e.g. cancelling an
    /// acknowledged notification, reusing an idempotency key).
    #[error("{0}")]
    Conflict(String),
    /// The target is no longer actionable (cancelled, session expired).
    #[error("{0}")]
    Expired(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The stable code of the Socket.IO refusal (`bad_request`, `forbidden`,
    /// `not_found`, `expired`) and of the problem+json `code` member.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::Forbidden(_) => "forbidden",
            Error::Conflict(_) => "conflict",
            Error::Expired(_) => "expired",
            Error::Store(StoreError::Unavailable(_)) => "unavailable",
            Error::Store(_) => "internal",
        }
    }

    /// What the client may be told. Database errors are not described.
    pub fn public_message(&self) -> String {
        match self {
            Error::Store(StoreError::Unavailable(_)) => {
                "the database is unavailable; nothing was changed, retry later".into()
            }
            Error::Store(_) => "internal error; nothing was changed".into(),
            other => other.to_string(),
        }
    }
}
