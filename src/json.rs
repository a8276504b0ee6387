//! JSON input from callers: parsing that names the field at fault, and the patch-field
//! helper (absent vs `null`).
//!
//! A leaf used by the HTTP extractors and by the proxy's body inspection alike, so that
//! every malformed body gets the same 400 with the same kind of message — never a serde
//! or Rust type name.

use crate::error::AppError;

/// Parses JSON, naming the field at fault.
///
/// A body that parses is read once, untracked; only a failure is read again with the
/// path tracked (which allocates for every field it passes) to name the field.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, AppError> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(describe_json_error)?;
    de.end()
        .map_err(|_| AppError::invalid("malformed JSON: trailing characters"))?;
    Ok(value)
}

fn describe_json_error(err: serde_path_to_error::Error<serde_json::Error>) -> AppError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return AppError::invalid(format!(
            "malformed JSON at line {} column {}",
            inner.line(),
            inner.column()
        ));
    }
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or_default();
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        // serde_path_to_error may or may not include the unknown field in the path.
        let full = if path == "." {
            field.to_string()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path
        } else {
            format!("{path}.{field}")
        };
        return AppError::invalid(format!("unknown field `{full}`"));
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return AppError::invalid(format!("missing field `{field}`"));
    }
    if path == "." {
        return AppError::invalid("the request body must be a JSON object");
    }
    // Custom validation messages are ours and safe to show; serde's type messages name
    // Rust types, so those are summarised.
    if text.starts_with("invalid type")
        || text.starts_with("invalid value")
        || text.starts_with("invalid length")
    {
        AppError::invalid(format!("field `{path}` has an invalid value or type"))
    } else {
        AppError::invalid(format!("field `{path}`: {text}"))
    }
}

/// `Option<Option<T>>` for patch fields: absent → `None`, `null` → `Some(None)`.
pub fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

/// The largest integer a limit may have: 2^53, the last of the integers every JSON
/// reader holds exactly (SPEC §4.2: "integers beyond 2^53" are refused).
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// A count limit from a caller (`tpm_limit`, `rpm_limit`, `max_parallel_requests`): a
/// whole number from 0 to 2^53, never clamped.
///
/// JSON does not tell `2507` from `2507.0` (JSON Schema's `integer` admits both), so an
/// integral number is accepted in either spelling; a fraction, a negative number or
/// anything beyond 2^53 is refused, naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub u64);

impl Limit {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(WholeVisitor {
            max: MAX_EXACT_INTEGER,
        })
        .map(Limit)
    }
}

impl utoipa::PartialSchema for Limit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .description(Some("A whole number from 0 to 2^53 (9007199254740992)."))
            .minimum(Some(0))
            .maximum(Some(MAX_EXACT_INTEGER as f64))
            .into()
    }
}

impl utoipa::ToSchema for Limit {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Limit")
    }
}

/// Reads a whole number from 0 to `max` from a JSON integer or an integral JSON number.
pub(crate) struct WholeVisitor {
    pub max: u64,
}

impl WholeVisitor {
    fn bounded<E: serde::de::Error>(&self, n: u64) -> Result<u64, E> {
        if n > self.max {
            Err(E::custom(format!("must be at most {}", self.max)))
        } else {
            Ok(n)
        }
    }
}

impl serde::de::Visitor<'_> for WholeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a whole number from 0 to {}", self.max)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
        self.bounded(n)
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u64, E> {
        match u64::try_from(n) {
            Ok(n) => self.bounded(n),
            Err(_) => Err(E::custom("must not be negative")),
        }
    }

    fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<u64, E> {
        match u64::try_from(n) {
            Ok(n) => self.bounded(n),
            Err(_) => Err(E::custom(format!("must be at most {}", self.max))),
        }
    }

    fn visit_i128<E: serde::de::Error>(self, n: i128) -> Result<u64, E> {
        if n < 0 {
            return Err(E::custom("must not be negative"));
        }
        self.visit_u128(n.unsigned_abs())
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<u64, E> {
        if !n.is_finite() || n.fract() != 0.0 {
            return Err(E::custom("must be a whole number"));
        }
        if n < 0.0 {
            return Err(E::custom("must not be negative"));
        }
        // Exact: `max` is at most 2^53 here, and every integral f64 up to it is an integer.
        if n > self.max as f64 {
            return Err(E::custom(format!("must be at most {}", self.max)));
        }
        Ok(n as u64)
    }
}

/// Whether `text` has a character other than space, tab, CR and LF — the rule for names
/// that must not be blank, spelled the same way in `/openapi.json` ([`NOT_BLANK`]).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// The `pattern` of a string that must not be blank (see [`is_blank`]).
pub const NOT_BLANK: &str = "[^ \\t\\r\\n]";
