//! Model lists (`/api/tags`, `/api/ps`, `/v1/models`) filtered to the caller's models.

use axum::response::{IntoResponse, Response};

use super::routes::Kind;
use crate::auth::access::model_allowed;
use crate::error::AppError;

/// Lists are small; anything bigger than this is not a model list.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

pub async fn filtered(
    upstream: reqwest::Response,
    kind: Kind,
    patterns: &[String],
) -> Result<Response, AppError> {
    let body = upstream
        .bytes()
        .await
        .map_err(|_| AppError::UpstreamError)?;
    if body.len() > MAX_LIST_BYTES {
        return Err(AppError::UpstreamError);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| AppError::UpstreamError)?;
    Ok(axum::Json(filter_value(value, kind, patterns)).into_response())
}

/// Keeps the entries of a model list the caller may use.
pub fn filter_value(
    mut value: serde_json::Value,
    kind: Kind,
    patterns: &[String],
) -> serde_json::Value {
    let (array_field, name_fields): (&str, &[&str]) = match kind {
        Kind::OpenAiList => ("data", &["id"]),
        _ => ("models", &["name", "model"]),
    };
    if let Some(items) = value.get_mut(array_field).and_then(|v| v.as_array_mut()) {
        items.retain(|item| {
            name_fields
                .iter()
                .filter_map(|f| item.get(*f).and_then(|n| n.as_str()))
                .any(|name| model_allowed(patterns, name))
        });
    }
    value
}
