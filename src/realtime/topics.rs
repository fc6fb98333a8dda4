//! Topics: rooms `topic:{name}` a socket joins on request (one study, one
//! worklist), and which roles may join which topics.
//!
//! Owns: topic-name rules and the role → pattern check.
//! Never: let a configured pattern open a topic readback reserves for
//! itself (`readback.*`).

use std::collections::BTreeMap;

use wildmatch::WildMatch;

use crate::auth::{Identity, roles};
use crate::error::Error;
use crate::validation::{FieldError, MAX_TOPIC_NAME_LEN, topic_name_char};

pub use super::rooms::CONSOLE_TOPIC;
/// Topics under this prefix are readback's own.
pub const RESERVED_TOPIC_PREFIX: &str = "readback.";

pub use super::rooms::topic_room;

/// A topic name: 1–200 of `A-Z a-z 0-9 . _ : / @ + -`.
pub fn check_name(topic: &str) -> Result<(), FieldError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_NAME_LEN {
        return Err(FieldError::new(
            "topic",
            format!("must be 1 to {MAX_TOPIC_NAME_LEN} characters"),
        ));
    }
    if !topic.chars().all(topic_name_char) {
        return Err(FieldError::new(
            "topic",
            "may only contain letters, digits and . _ : / @ + -",
        ));
    }
    Ok(())
}

/// May `identity` subscribe to `topic`, given role → patterns?
pub fn may_subscribe(
    identity: &Identity,
    topic: &str,
    allowed: &BTreeMap<String, Vec<String>>,
) -> Result<(), Error> {
    check_name(topic)?;
    if topic == CONSOLE_TOPIC {
        return if identity.has_any_role(&[roles::ADMIN, roles::AUDITOR]) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "`{CONSOLE_TOPIC}` is for the admin and auditor roles"
            )))
        };
    }
    if topic.starts_with(RESERVED_TOPIC_PREFIX) {
        return Err(Error::Forbidden(format!(
            "topics starting with `{RESERVED_TOPIC_PREFIX}` are reserved"
        )));
    }
    let granted = identity.roles.iter().any(|role| {
        allowed
            .get(role)
            .is_some_and(|patterns| patterns.iter().any(|p| WildMatch::new(p).matches(topic)))
    });
    if granted {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "your roles may not subscribe to topic `{topic}`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::check_topic_pattern;

    fn identity(roles: &[&str]) -> Identity {
        Identity {
            user_id: "u".into(),
            roles: roles.iter().map(std::string::ToString::to_string).collect(),
            session_id: None,
            email: None,
            name: None,
            client_addr: None,
        }
    }

    fn policy() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            (
                "radiologist".to_string(),
                vec!["study:*".to_string(), "worklist:*".to_string()],
            ),
            ("admin".to_string(), vec!["*".to_string()]),
        ])
    }

    #[test]
    fn roles_reach_only_their_patterns() {
        let radiologist = identity(&["radiologist"]);
        assert!(may_subscribe(&radiologist, "study:1.2.840.1", &policy()).is_ok());
        assert!(may_subscribe(&radiologist, "worklist:ct", &policy()).is_ok());
        assert!(matches!(
            may_subscribe(&radiologist, "billing:1", &policy()),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            may_subscribe(&identity(&["technologist"]), "study:1", &policy()),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn reserved_topics_are_not_opened_by_patterns() {
        let admin = identity(&["admin"]);
        assert!(may_subscribe(&admin, CONSOLE_TOPIC, &policy()).is_ok());
        assert!(may_subscribe(&identity(&["auditor"]), CONSOLE_TOPIC, &policy()).is_ok());
        assert!(matches!(
            may_subscribe(&admin, "readback.other", &policy()),
            Err(Error::Forbidden(_))
        ));
        let everything = BTreeMap::from([("radiologist".to_string(), vec!["*".to_string()])]);
        assert!(matches!(
            may_subscribe(&identity(&["radiologist"]), CONSOLE_TOPIC, &everything),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn names_are_checked_before_permissions() {
        let admin = identity(&["admin"]);
        for bad in ["", "has space", "quote\"", &"x".repeat(201)] {
            assert!(matches!(
                may_subscribe(&admin, bad, &policy()),
                Err(Error::Invalid(_))
            ));
        }
        assert!(check_topic_pattern("study:*").is_ok());
        assert!(check_topic_pattern("stu dy").is_err());
    }
}
