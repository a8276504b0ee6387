//! Human durations (`30s`, `15m`, `1h`, `30d`, `2w`) for `duration` and `budget_duration`,
//! in configuration and in the management API alike.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive whole number of seconds, written and read as `30s`, `15m`, `1h`, `30d`, `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn as_secs(&self) -> u64 {
        self.0.as_secs()
    }

    pub fn to_chrono(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX))
    }
}

/// Parses `N` (seconds) or `N` followed by one of `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(factor)?;
    // Bounded so that adding it to "now" can never overflow a timestamp.
    if secs == 0 || secs > 100 * 365 * 86_400 {
        return None;
    }
    Some(Duration(std::time::Duration::from_secs(secs)))
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        // Weeks are accepted on input but shown as days (`7d` stays `7d`).
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s.is_multiple_of(size) {
                return write!(f, "{}{unit}", s / size);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let parsed = match Raw::deserialize(deserializer)? {
            Raw::Seconds(n) => parse_duration(&n.to_string()),
            Raw::Text(t) => parse_duration(&t),
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom("not a duration (expected e.g. 30s, 15m, 1h, 30d)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("30s").map(|d| d.as_secs()), Some(30));
        assert_eq!(parse_duration("15m").map(|d| d.as_secs()), Some(900));
        assert_eq!(parse_duration("1h").map(|d| d.as_secs()), Some(3600));
        assert_eq!(parse_duration("30d").map(|d| d.as_secs()), Some(2_592_000));
        assert_eq!(parse_duration("45").map(|d| d.as_secs()), Some(45));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "1y",
            "-1h",
            "0s",
            "1.5h",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_none(), "{bad} should be rejected");
        }
    }

    #[test]
    fn displays_in_largest_whole_unit() {
        let d = |s| Duration(std::time::Duration::from_secs(s));
        assert_eq!(d(86_400 * 30).to_string(), "30d");
        assert_eq!(d(90).to_string(), "90s");
        assert_eq!(d(3600).to_string(), "1h");
    }
}
