//! JSON input from callers: parsing that names the field at fault, and the patch-field
//! helper (absent vs `null`).
//!
//! A leaf used by the HTTP extractors and by the proxy's body inspection alike, so that
//! every malformed body gets the same 400 with the same kind of message — never a serde
//! or Rust type name.

use crate::error::AppError;

/// Parses JSON, naming the field at fault.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, AppError> {
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
