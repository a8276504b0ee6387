//! `AuthWebhook`: delegated validation for tokens of no known shape (SPEC §6.4).
//!
//! The token and a description of the request (minus `Authorization` and `Cookie`) are
//! POSTed to `auth_webhook.url`. 200 allows the request — the reply may bound it with
//! `user_id`, `team_id` and `models`; any other status is the usual 401; a timeout or
//! connection error is 503 `auth_unavailable`. Answers (allowed or denied) are cached by
//! the token's SHA-256 for `auth_webhook.cache_ttl_s`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, Uri, header};
use moka::future::Cache;
use serde::Deserialize;
use serde_json::json;

use crate::config::AuthWebhookConfig;
use crate::error::AppError;

/// What the webhook allowed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhookGrant {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Clone)]
enum Outcome {
    Allowed(Arc<WebhookGrant>),
    Denied,
}

pub struct AuthWebhook {
    url: String,
    client: reqwest::Client,
    cache: Cache<String, Outcome>,
}

impl AuthWebhook {
    pub fn new(config: &AuthWebhookConfig) -> Option<Result<Self, reqwest::Error>> {
        let url = config.url.clone()?;
        let client = match crate::outbound::client_builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .build()
        {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Self {
            url,
            client,
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(config.cache_ttl_s.max(1)))
                .build(),
        }))
    }

    /// Asks (or remembers) whether `token` may make this request.
    pub async fn check(
        &self,
        token: &str,
        token_hash: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Arc<WebhookGrant>, AppError> {
        if let Some(outcome) = self.cache.get(token_hash).await {
            return match outcome {
                Outcome::Allowed(grant) => Ok(grant),
                Outcome::Denied => Err(AppError::Unauthorized),
            };
        }
        let forwarded: BTreeMap<&str, &str> = headers
            .iter()
            .filter(|(name, _)| **name != header::AUTHORIZATION && **name != header::COOKIE)
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let params: BTreeMap<String, String> = uri
            .query()
            .and_then(|q| reqwest::Url::parse(&format!("http://q/?{q}")).ok())
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let body = json!({
            "api_key": token,
            "request": {
                "method": method.as_str(),
                "path": uri.path(),
                "headers": forwarded,
                "params": params,
            }
        });
        let reply = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "auth webhook unreachable");
                AppError::AuthUnavailable
            })?;
        let outcome = if reply.status() == reqwest::StatusCode::OK {
            let bytes = reply.bytes().await.map_err(|_| AppError::AuthUnavailable)?;
            let grant: WebhookGrant = serde_json::from_slice(&bytes).unwrap_or_default();
            Outcome::Allowed(Arc::new(grant))
        } else {
            Outcome::Denied
        };
        self.cache
            .insert(token_hash.to_string(), outcome.clone())
            .await;
        match outcome {
            Outcome::Allowed(grant) => Ok(grant),
            Outcome::Denied => {
                metrics::counter!(crate::telemetry::AUTH_FAILURES, "reason" => "webhook_denied")
                    .increment(1);
                Err(AppError::Unauthorized)
            }
        }
    }
}
