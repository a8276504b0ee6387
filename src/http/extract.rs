//! Extractors whose rejections are [`AppError`]s, so malformed input gets the envelope and
//! a message naming the offending field — never a serde or Rust type name.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::AppError;
use crate::json::parse_json;

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
            .map_err(AppError::from)?;
        // A NUL can only be spelled `\u0000` in JSON; without one, no check is needed.
        if memchr::memmem::find(&bytes, b"\\u0000").is_some() {
            let value: serde_json::Value = parse_json(&bytes)?;
            refuse_nul(&value, "")?;
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// NUL characters are refused in every string of a management body but those inside
/// `metadata` (kept as JSON): no database column holds them, PostgreSQL's text refuses
/// them, and `/openapi.json` says so (`openapi_rules`).
fn refuse_nul(value: &serde_json::Value, path: &str) -> Result<(), AppError> {
    use serde_json::Value;
    let found = |at: &str| {
        AppError::invalid(format!(
            "field `{at}` must not contain NUL (U+0000) characters"
        ))
    };
    match value {
        Value::String(s) if s.contains('\0') => Err(found(path)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| refuse_nul(item, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().try_for_each(|(name, field)| {
            let at = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            if name.contains('\0') {
                return Err(found(&at));
            }
            if path.is_empty() && name == "metadata" {
                return Ok(());
            }
            refuse_nul(field, &at)
        }),
        _ => Ok(()),
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
        if parts.uri.query().is_some_and(|q| q.contains("%00"))
            && let Ok(pairs) =
                axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            && let Some((name, _)) = pairs
                .0
                .iter()
                .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(AppError::invalid(format!(
                "query parameter `{}` must not contain NUL (U+0000) characters",
                name.replace('\0', "")
            )));
        }
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
