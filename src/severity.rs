//! Severity: how urgent a finding is (ACR actionable-finding categories).
//!
//! Owns: the three severities and their stable names, which the wire
//! format, the config (`[severities.*]`) and the database share.
//! Never: depend on any other readback module — it is a leaf.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How urgent a finding is, after the ACR actionable-finding categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Category 1: communicate within minutes.
    Critical,
    /// Category 2: within hours.
    Urgent,
    /// Category 3: within days.
    Actionable,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Urgent, Severity::Actionable];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Urgent => "urgent",
            Severity::Actionable => "actionable",
        }
    }
}

impl FromStr for Severity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
