//! Validation primitives every layer shares.
//!
//! Owns: [`FieldError`] (a request field that is not acceptable, named as
//! the client wrote it), the text limits, the checks for caller-chosen ids
//! and free text, JSON decoding that names the bad field, and the syntax
//! of event and topic names and of the `*` patterns config uses for them.
//! Never: depend on any other readback module — config, the domain and the
//! edges all build on it, so it must stay a leaf.

use serde_json::Value;

/// A field of a request that is not acceptable, named as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub const MAX_ID_LEN: usize = 128;
pub const MAX_TITLE_LEN: usize = 200;
pub const MAX_MESSAGE_LEN: usize = 4000;
pub const MAX_REASON_LEN: usize = 1000;
/// The longest `ackWithin` accepted: 90 days.
pub const MAX_ACK_WITHIN_MS: u64 = 90 * 86_400_000;

/// Deserializes JSON into `T`, naming the field that is wrong, missing or
/// unknown (`recipient.userId`, not "line 1 column 40").
/// Request bodies are always JSON objects.
pub fn deserialize_json<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new("body", "must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A missing field is reported on its parent: name the field itself.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), named) {
            (_, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => path,
            (".", Some(name)) => name.to_string(),
            (_, Some(name)) => format!("{path}.{name}"),
            (".", None) => "body".to_string(),
            _ => path,
        };
        FieldError::new(field, message)
    })
}

/// Caller-chosen ids: short and URL-safe, so they can sit in a path.
pub fn check_identifier(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(FieldError::new(
            field,
            "may contain only letters, digits, '-', '_', '.' and ':'",
        ));
    }
    Ok(())
}

/// Free text: not blank, bounded, no control characters but line breaks.
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Longest event name a message may use.
pub const MAX_EVENT_NAME_LEN: usize = 64;
/// Longest topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 200;

/// Characters of an event name: `A-Z a-z 0-9 _ . : -`.
pub fn event_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:-".contains(c)
}

/// Characters of a topic name: `A-Z a-z 0-9 . _ : / @ + -`.
pub fn topic_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/@+-".contains(c)
}

/// A configured event-name pattern: an event name in which `*` matches
/// anything.
pub fn check_event_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() || pattern.len() > MAX_EVENT_NAME_LEN {
        return Err("must be 1 to 64 characters");
    }
    if !pattern.chars().all(|c| c == '*' || event_name_char(c)) {
        return Err("may only contain letters, digits, _ . : - and *");
    }
    Ok(())
}

/// A configured topic pattern: a topic name in which `*` matches anything.
pub fn check_topic_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.is_empty() || pattern.len() > MAX_TOPIC_NAME_LEN {
        return Err("must be 1 to 200 characters");
    }
    if !pattern.chars().all(|c| c == '*' || topic_name_char(c)) {
        return Err("may only contain letters, digits, . _ : / @ + - and *");
    }
    Ok(())
}
