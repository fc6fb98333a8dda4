//! Wall-clock time as readback stores and speaks it.
//!
//! Owns: the `Timestamp` type (milliseconds since the Unix epoch, UTC), its
//! RFC 3339 wire form with milliseconds, and parsing of timestamps in
//! query strings. Never: time zones or local time — everything is UTC.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A point in time, stored as integer milliseconds since the Unix epoch so
/// that SQLite and PostgreSQL compare and index it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    // The one place that reads the wall clock (clippy.toml).
    #[allow(clippy::disallowed_methods)]
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(since_epoch.as_millis() as i64)
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Saturating addition, so a huge configured duration cannot overflow.
    pub fn plus(self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0 - earlier.0
    }

    /// Parses an RFC 3339 UTC timestamp such as `2026-11-22T10:00:00.123Z`.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
        let since_epoch = time.duration_since(UNIX_EPOCH).ok()?;
        Some(Self(i64::try_from(since_epoch.as_millis()).ok()?))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH
        };
        write!(f, "{}", humantime::format_rfc3339_millis(time))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_milliseconds_and_z() {
        let t = Timestamp::from_millis(1_795_341_600_123);
        assert_eq!(t.to_string(), "2026-11-22T10:00:00.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T10:00:00.123Z"),
            Some(t)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T10:00:00Z"),
            Some(Timestamp::from_millis(1_795_341_600_000))
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
