//! Durations written as strings (`"250ms"`, `"5s"`, `"1h"`), the way Kong users and operators
//! write them, instead of bare numbers whose unit has to be guessed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A duration that (de)serializes as a human string such as `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whole milliseconds, saturating: what the WIT interfaces carry.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl TryFrom<String> for Duration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(text.trim())
            .map(Self)
            .map_err(|err| {
                format!("invalid duration {text:?} ({err}); write e.g. \"250ms\", \"5s\", \"1h\"")
            })
    }
}

impl From<Duration> for String {
    fn from(duration: Duration) -> Self {
        duration.to_string()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_human_units() {
        let d = Duration::try_from("5m".to_string()).unwrap();
        assert_eq!(d.get(), std::time::Duration::from_secs(300));
        assert_eq!(String::from(d), "5m");
        assert_eq!(
            Duration::try_from("250ms".to_string()).unwrap().as_millis(),
            250
        );
    }

    #[test]
    fn rejects_unitless_numbers_with_a_hint() {
        let err = Duration::try_from("30".to_string()).unwrap_err();
        assert!(err.contains("invalid duration \"30\""), "{err}");
    }
}
