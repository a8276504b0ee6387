//! Extractors whose rejections are [`AppError`]s, so malformed input gets the envelope and
//! a message naming the offending field — never a serde or Rust type name.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::AppError;

/// JSON body, parsed with field paths in error messages.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn body_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else {
        AppError::invalid("could not read the request body")
    }
}

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

/// Query string, with the same error treatment.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                let detail = e.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or("malformed query string");
                AppError::invalid(format!("invalid query parameter: {detail}"))
            })
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
