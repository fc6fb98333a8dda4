//! Messages: ordinary real-time updates ("study available", "report
//! signed") that services push to users, roles, topics or everyone.
//!
//! Owns: parsing and checking a message — its addressees, its event name
//! against the configured patterns and readback's reserved names, the size
//! of its data — into the rooms and payload to emit.
//! Never: store a message or let one use an event name a viewer relies on
//! for critical findings, sessions or errors.

use serde::Deserialize;
use serde_json::{Map, Value};
use wildmatch::WildMatch;

use super::topics::{RESERVED_TOPIC_PREFIX, check_name as check_topic, topic_room};
use crate::clock::Timestamp;
use crate::realtime::rooms::{role_room, user_room};
use crate::validation::{
    FieldError, MAX_EVENT_NAME_LEN, check_text, deserialize_json, event_name_char,
};

/// Event names of the Socket.IO client itself: never a message (nor are
/// readback's own, `events::ALL`).
pub const SOCKET_IO_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// At most this many users in one `to.userIds`.
pub const MAX_USER_IDS: usize = 1000;

/// Who a message goes to: exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressees {
    User(String),
    Users(Vec<String>),
    Role(String),
    Topic(String),
    All,
}

impl Addressees {
    /// The rooms to emit to; `None` means every socket.
    pub fn rooms(&self) -> Option<Vec<String>> {
        match self {
            Addressees::User(user) => Some(vec![user_room(user)]),
            Addressees::Users(users) => Some(users.iter().map(|u| user_room(u)).collect()),
            Addressees::Role(role) => Some(vec![role_room(role)]),
            Addressees::Topic(topic) => Some(vec![topic_room(topic)]),
            Addressees::All => None,
        }
    }
}

/// A checked message, ready to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub to: Addressees,
    pub event: String,
    /// `data` with `timestamp` added.
    pub payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Body {
    to: To,
    event: String,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct To {
    user_id: Option<String>,
    user_ids: Option<Vec<String>>,
    role: Option<String>,
    topic: Option<String>,
    all: Option<bool>,
}

/// What a message may be, from config.
pub struct MessagePolicy<'a> {
    pub allowed_events: &'a [String],
    pub max_data_bytes: usize,
}

/// Parses `{ to, event, data }` and checks every part of it.
pub fn parse(body: &Value, policy: &MessagePolicy, now: Timestamp) -> Result<Message, FieldError> {
    let body: Body = deserialize_json(body)?;
    let to = addressees(body.to)?;
    check_event(&body.event, policy.allowed_events)?;
    let mut data = match body.data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(FieldError::new("data", "must be a JSON object")),
    };
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
    if size > policy.max_data_bytes {
        return Err(FieldError::new(
            "data",
            format!(
                "is {size} bytes; a message's data may be at most {} bytes",
                policy.max_data_bytes
            ),
        ));
    }
    data.entry("timestamp")
        .or_insert_with(|| serde_json::to_value(now).expect("serializable"));
    Ok(Message {
        to,
        event: body.event,
        payload: Value::Object(data),
    })
}

fn addressees(to: To) -> Result<Addressees, FieldError> {
    let given = [
        to.user_id.is_some(),
        to.user_ids.is_some(),
        to.role.is_some(),
        to.topic.is_some(),
        to.all.is_some(),
    ]
    .into_iter()
    .filter(|g| *g)
    .count();
    if given != 1 {
        return Err(FieldError::new(
            "to",
            "must have exactly one of userId, userIds, role, topic, all",
        ));
    }
    if let Some(user) = to.user_id {
        check_text("to.userId", &user, 256)?;
        return Ok(Addressees::User(user));
    }
    if let Some(users) = to.user_ids {
        if users.is_empty() || users.len() > MAX_USER_IDS {
            return Err(FieldError::new(
                "to.userIds",
                format!("must list 1 to {MAX_USER_IDS} users"),
            ));
        }
        for user in &users {
            check_text("to.userIds", user, 256)?;
        }
        return Ok(Addressees::Users(users));
    }
    if let Some(role) = to.role {
        check_text("to.role", &role, 256)?;
        return Ok(Addressees::Role(role));
    }
    if let Some(topic) = to.topic {
        check_topic(&topic).map_err(|e| FieldError::new("to.topic", e.message))?;
        if topic.starts_with(RESERVED_TOPIC_PREFIX) {
            return Err(FieldError::new(
                "to.topic",
                format!("topics starting with `{RESERVED_TOPIC_PREFIX}` are readback's own"),
            ));
        }
        return Ok(Addressees::Topic(topic));
    }
    match to.all {
        Some(true) => Ok(Addressees::All),
        _ => Err(FieldError::new("to.all", "must be true when given")),
    }
}

fn check_event(event: &str, allowed: &[String]) -> Result<(), FieldError> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME_LEN || !event.chars().all(event_name_char) {
        return Err(FieldError::new(
            "event",
            "must be 1 to 64 letters, digits or _ . : -",
        ));
    }
    if super::events::ALL.contains(&event) || SOCKET_IO_EVENTS.contains(&event) {
        return Err(FieldError::new(
            "event",
            format!("`{event}` is reserved by readback and cannot be sent as a message"),
        ));
    }
    if !allowed.iter().any(|p| WildMatch::new(p).matches(event)) {
        return Err(FieldError::new(
            "event",
            format!("`{event}` is not allowed by realtime.message_events"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(events: &[&str]) -> (Vec<String>, usize) {
        (
            events
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            100,
        )
    }

    fn parse_with(body: Value, events: &[&str]) -> Result<Message, FieldError> {
        let (allowed, max) = policy(events);
        parse(
            &body,
            &MessagePolicy {
                allowed_events: &allowed,
                max_data_bytes: max,
            },
            Timestamp::from_millis(1_000),
        )
    }

    #[test]
    fn each_kind_of_addressee_becomes_rooms() {
        let cases = [
            (json!({ "userId": "u1" }), Some(vec!["user:u1".to_string()])),
            (
                json!({ "userIds": ["u1", "u2"] }),
                Some(vec!["user:u1".to_string(), "user:u2".to_string()]),
            ),
            (
                json!({ "role": "radiologist" }),
                Some(vec!["role:radiologist".to_string()]),
            ),
            (
                json!({ "topic": "study:42" }),
                Some(vec!["topic:study:42".to_string()]),
            ),
            (json!({ "all": true }), None),
        ];
        for (to, rooms) in cases {
            let message =
                parse_with(json!({ "to": to, "event": "study_available" }), &["*"]).expect("valid");
            assert_eq!(message.to.rooms(), rooms);
        }
    }

    #[test]
    fn data_gets_a_timestamp_unless_it_has_one() {
        let message = parse_with(
            json!({ "to": { "userId": "u" }, "event": "e", "data": { "studyId": "s" } }),
            &["*"],
        )
        .unwrap();
        assert_eq!(
            message.payload,
            json!({ "studyId": "s", "timestamp": "1970-01-01T00:00:01.000Z" })
        );
        let kept = parse_with(
            json!({ "to": { "userId": "u" }, "event": "e", "data": { "timestamp": "x" } }),
            &["*"],
        )
        .unwrap();
        assert_eq!(kept.payload["timestamp"], "x");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({ "to": {}, "event": "e" }), "to"),
            (
                json!({ "to": { "userId": "u", "role": "r" }, "event": "e" }),
                "to",
            ),
            (
                json!({ "to": { "userIds": [] }, "event": "e" }),
                "to.userIds",
            ),
            (json!({ "to": { "all": false }, "event": "e" }), "to.all"),
            (
                json!({ "to": { "topic": "a b" }, "event": "e" }),
                "to.topic",
            ),
            (
                json!({ "to": { "all": true }, "event": "critical_notification" }),
                "event",
            ),
            (
                json!({ "to": { "all": true }, "event": "connect" }),
                "event",
            ),
            (
                json!({ "to": { "all": true }, "event": "has space" }),
                "event",
            ),
            (json!({ "to": { "all": true }, "event": "" }), "event"),
            (
                json!({ "to": { "all": true }, "event": "billing_ready" }),
                "event",
            ),
            (
                json!({ "to": { "all": true }, "event": "e", "data": [1] }),
                "data",
            ),
            (
                json!({ "to": { "all": true }, "event": "e", "data": { "x": "y".repeat(200) } }),
                "data",
            ),
        ];
        for (body, field) in cases {
            let error = parse_with(body.clone(), &["e", "study_*"]).expect_err(&body.to_string());
            assert_eq!(error.field, field, "{body}");
        }
    }
}
