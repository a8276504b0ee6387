//! Model lists (`/api/tags`, `/api/ps`, `/v1/models`) filtered to the caller's models.

use axum::response::{IntoResponse, Response};

use super::routes::Kind;
use crate::auth::access::{is_cloud_model, model_allowed};
use crate::error::AppError;
use crate::upstream::UpstreamResponse;

/// Lists are small; anything bigger than this is not a model list.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// What a caller's model list keeps.
#[derive(Debug, Clone, Copy)]
pub struct ListFilter<'a> {
    /// The caller's allow-list; `None`: every model.
    pub patterns: Option<&'a [String]>,
    /// Drop Ollama cloud models (non-admin callers without `upstream.allow_cloud_models`).
    pub hide_cloud: bool,
}

impl ListFilter<'_> {
    /// Whether the list needs filtering at all.
    pub fn filters(&self) -> bool {
        self.patterns.is_some() || self.hide_cloud
    }

    fn keeps(&self, name: &str) -> bool {
        !(self.hide_cloud && is_cloud_model(name))
            && self.patterns.is_none_or(|p| model_allowed(p, name))
    }
}

pub async fn filtered(
    upstream: UpstreamResponse,
    kind: Kind,
    filter: ListFilter<'_>,
) -> Result<Response, AppError> {
    let body = upstream
        .into_body()
        .bytes(MAX_LIST_BYTES)
        .await
        .map_err(|_| AppError::UpstreamError)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| AppError::UpstreamError)?;
    Ok(axum::Json(filter_value(value, kind, filter)).into_response())
}

/// Keeps the entries of a model list the caller may use.
pub fn filter_value(
    mut value: serde_json::Value,
    kind: Kind,
    filter: ListFilter<'_>,
) -> serde_json::Value {
    let (array_field, name_fields): (&str, &[&str]) = match kind {
        Kind::OpenAiList => ("data", &["id"]),
        _ => ("models", &["name", "model"]),
    };
    if let Some(items) = value.get_mut(array_field).and_then(|v| v.as_array_mut()) {
        // An entry is kept when one of its names is allowed and none is a hidden cloud
        // model (`name` and `model` normally agree).
        items.retain(|item| {
            let names: Vec<&str> = name_fields
                .iter()
                .filter_map(|f| item.get(*f).and_then(|n| n.as_str()))
                .collect();
            names.iter().any(|name| filter.keeps(name))
                && !(filter.hide_cloud && names.iter().any(|name| is_cloud_model(name)))
        });
    }
    value
}
