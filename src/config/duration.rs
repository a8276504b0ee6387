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

/// The longest duration: 100 years of 365 days, so that adding it to "now" can never
/// overflow a timestamp.
pub const MAX_SECS: u64 = 100 * 365 * 86_400;

/// The units and their lengths in seconds.
const UNITS: [(&str, u64); 5] = [
    ("s", 1),
    ("m", 60),
    ("h", 3_600),
    ("d", 86_400),
    ("w", 7 * 86_400),
];

/// Parses `N` (seconds) or `N` followed by one of `s`, `m`, `h`, `d`, `w`: digits only
/// (no sign, space or fraction), from 1 second to [`MAX_SECS`] — exactly what
/// [`pattern`] matches.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit = if unit.is_empty() { "s" } else { unit };
    let (_, factor) = UNITS.iter().find(|(name, _)| *name == unit)?;
    seconds(n.checked_mul(*factor)?)
}

/// `secs` as a duration, when it is from 1 to [`MAX_SECS`].
fn seconds(secs: u64) -> Option<Duration> {
    (1..=MAX_SECS)
        .contains(&secs)
        .then(|| Duration(std::time::Duration::from_secs(secs)))
}

/// The regular expression (ECMA 262, as in JSON Schema) of the strings
/// [`parse_duration`] accepts: for each unit, the whole numbers from 1 to its share of
/// [`MAX_SECS`], with any leading zeros.
pub fn pattern() -> String {
    let alternatives: Vec<String> = UNITS
        .iter()
        .map(|(unit, factor)| {
            let unit = if *unit == "s" { "s?" } else { unit };
            format!("(?:{}){unit}", up_to(MAX_SECS / factor))
        })
        .collect();
    format!("^0*(?:{})$", alternatives.join("|"))
}

/// A regular expression of the numbers 1..=`max` written without leading zeros.
fn up_to(max: u64) -> String {
    let digits: Vec<u8> = max.to_string().bytes().map(|b| b - b'0').collect();
    let len = digits.len();
    let mut parts = Vec::new();
    // Fewer digits than `max`: any of them.
    if len >= 2 {
        parts.push(format!("[1-9][0-9]{{0,{}}}", len - 2));
    }
    // As many digits: the same prefix as `max`, then a smaller digit, then anything.
    for (i, &d) in digits.iter().enumerate() {
        let low = if i == 0 { 1 } else { 0 };
        if d > low {
            let prefix: String = digits[..i].iter().map(|d| char::from(b'0' + d)).collect();
            let rest = len - i - 1;
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            let digit = if d - 1 == low {
                low.to_string()
            } else {
                format!("[{low}-{}]", d - 1)
            };
            parts.push(format!("{prefix}{digit}{tail}"));
        }
    }
    parts.push(max.to_string());
    parts.join("|")
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

/// A string for [`parse_duration`], or a whole number of seconds (an integral number
/// such as `90.0` too: JSON does not tell it from `90`).
impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

const NOT_A_DURATION: &str =
    "not a duration (expected e.g. 30s, 15m, 1h, 30d, from 1s to 100 years)";

struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as 30d, or a number of seconds")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).ok_or_else(|| E::custom(NOT_A_DURATION))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        seconds(v).ok_or_else(|| E::custom(NOT_A_DURATION))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .ok()
            .and_then(seconds)
            .ok_or_else(|| E::custom(NOT_A_DURATION))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        if v.is_finite() && v.fract() == 0.0 && (1.0..=MAX_SECS as f64).contains(&v) {
            self.visit_u64(v as u64)
        } else {
            Err(E::custom(NOT_A_DURATION))
        }
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
            " 30d",
            "30d ",
            "30d\n",
            "+30d",
            "36501d",
        ] {
            assert!(parse_duration(bad).is_none(), "{bad} should be rejected");
        }
    }

    /// The pattern in `/openapi.json` accepts exactly what the parser does.
    #[test]
    fn pattern_matches_what_parses() {
        let re = regex::Regex::new(&pattern()).expect("a valid pattern");
        let mut cases: Vec<String> = ["", "0", "00", "s", "1.5h", "-1h", "1y", "30d\n"]
            .into_iter()
            .map(String::from)
            .collect();
        for (unit, factor) in UNITS {
            let max = MAX_SECS / factor;
            let edges = [
                0,
                1,
                2,
                9,
                10,
                11,
                99,
                100,
                101,
                max - 1,
                max,
                max + 1,
                max * 10,
            ];
            for n in edges
                .into_iter()
                .chain((0..2_000).map(|i| i * 7919 % (max + 2)))
            {
                for spelled in [n.to_string(), format!("00{n}")] {
                    cases.push(format!("{spelled}{unit}"));
                    if unit == "s" {
                        cases.push(spelled);
                    }
                }
            }
        }
        for case in cases {
            assert_eq!(
                re.is_match(&case),
                parse_duration(&case).is_some(),
                "`{case:?}`"
            );
        }
    }

    #[test]
    fn numbers_are_seconds() {
        let parse = |json: &str| serde_json::from_str::<Duration>(json).ok();
        assert_eq!(parse("90").map(|d| d.as_secs()), Some(90));
        assert_eq!(parse("90.0").map(|d| d.as_secs()), Some(90));
        for bad in ["0", "-5", "90.5", "3153600001", "\" 30d\""] {
            assert!(parse(bad).is_none(), "{bad}");
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
