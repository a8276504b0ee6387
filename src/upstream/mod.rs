//! `Upstream`: the Ollama server tollgate forwards to, and the pooled client that talks
//! to it.
//!
//! The proxy pipeline hands it a [`UpstreamRequest`] (method, path, the headers it may
//! pass on, the body) and gets the response head back with its body still streaming.
//! This module owns the connection pool, the timeouts and the upstream's base URL, so
//! that routing to several servers can grow here without the pipeline changing.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use bytes::Bytes;

use crate::config::Config;

/// What the pipeline sends: everything checked, the body rewritten where policy says.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    /// The caller's path and query, forwarded as they are.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why nothing usable came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `server.request_timeout_s` passed.
    #[error("upstream timeout")]
    Timeout,
    /// Connection refused or reset, TLS, or a malformed response head.
    #[error("upstream request failed: {0}")]
    Failed(#[source] reqwest::Error),
}

/// The pooled HTTP client for Ollama and its base URL.
pub struct Upstream {
    client: reqwest::Client,
    base: String,
}

impl Upstream {
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let client = crate::outbound::client_builder()
            .connect_timeout(Duration::from_secs(config.upstream.connect_timeout_s))
            .timeout(Duration::from_secs(config.server.request_timeout_s))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            base: config.upstream.url.trim_end_matches('/').to_string(),
        })
    }

    /// Sends the request; resolves with the response head, its body still streaming.
    /// `route` labels the upstream latency histogram.
    pub async fn send(
        &self,
        route: &'static str,
        request: UpstreamRequest,
    ) -> Result<reqwest::Response, SendError> {
        let mut url = String::with_capacity(self.base.len() + request.path_and_query.len());
        url.push_str(&self.base);
        url.push_str(&request.path_and_query);
        let started = Instant::now();
        let sent = self
            .client
            .request(request.method, url)
            .headers(request.headers)
            .body(request.body)
            .send()
            .await;
        metrics::histogram!(crate::telemetry::UPSTREAM_SECONDS, "route" => route)
            .record(started.elapsed().as_secs_f64());
        sent.map_err(|e| {
            if e.is_timeout() {
                SendError::Timeout
            } else {
                SendError::Failed(e)
            }
        })
    }
}
