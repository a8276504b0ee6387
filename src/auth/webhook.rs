//! `AuthWebhook`: delegated validation for tokens of no known shape (SPEC §6.4).
//!
//! The token and a description of the request (minus `Authorization` and `Cookie`) are
//! POSTed to `auth_webhook.url`. 200 allows the request — the reply may bound it with
//! `user_id`, `team_id` and `models` (an empty body: no bounds; a body that is not a JSON
//! object, or has one of those fields of the wrong type: 401, never a wider grant); any
//! other status is the usual 401; a timeout or
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

/// What the webhook allowed. Fields other than these three are ignored; these must have
/// their type (`null` is the same as absent), or the answer is no grant at all.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhookGrant {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default, deserialize_with = "models")]
    pub models: Vec<String>,
}

/// `models`: an array of strings, or `null` (no bound, like an absent field).
fn models<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(de)?.unwrap_or_default())
}

impl WebhookGrant {
    /// Reads a 200 answer (SPEC §6.4): an empty body allows without bounds; anything that
    /// is not a JSON object with well-typed fields is `None` — refused, never read as a
    /// wider grant than the webhook meant.
    fn parse(body: &[u8]) -> Option<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(Self::default());
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(object)) => {
                serde_json::from_value(serde_json::Value::Object(object)).ok()
            }
            _ => None,
        }
    }
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
            match WebhookGrant::parse(&bytes) {
                Some(grant) => Outcome::Allowed(Arc::new(grant)),
                None => {
                    tracing::warn!(
                        "auth webhook answered 200 with a body it cannot be read as a grant; refused"
                    );
                    Outcome::Denied
                }
            }
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

#[cfg(test)]
mod tests {
    use super::WebhookGrant;

    #[test]
    fn an_empty_answer_allows_without_bounds() {
        for body in ["", "  \n", "{}", r#"{"user_id":null,"models":null}"#] {
            let grant = WebhookGrant::parse(body.as_bytes()).expect(body);
            assert!(grant.models.is_empty(), "{body}");
            assert!(grant.user_id.is_none(), "{body}");
        }
    }

    #[test]
    fn well_typed_answers_bound_the_request() {
        let grant = WebhookGrant::parse(
            br#"{"user_id":"u","team_id":"t","models":["llama3.1:8b"],"extra":1}"#,
        )
        .expect("grant");
        assert_eq!(grant.user_id.as_deref(), Some("u"));
        assert_eq!(grant.team_id.as_deref(), Some("t"));
        assert_eq!(grant.models, ["llama3.1:8b"]);
    }

    #[test]
    fn unreadable_answers_are_no_grant() {
        for body in [
            "not json",
            "{\"models\": [",
            "null",
            "[]",
            "\"ok\"",
            "true",
            r#"{"models":"llama3.1:8b"}"#,
            r#"{"models":[1]}"#,
            r#"{"models":{"a":1}}"#,
            r#"{"user_id":5}"#,
            r#"{"team_id":["t"]}"#,
            r#"{"user_id":"u"} trailing"#,
        ] {
            assert!(WebhookGrant::parse(body.as_bytes()).is_none(), "{body}");
        }
    }
}
