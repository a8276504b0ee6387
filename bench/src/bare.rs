//! The floor of tollgate's stack: a bare proxy on the same libraries tollgate's hop runs
//! on — hyper's HTTP/1 server, hyper-util's pooled client, tokio with one worker on the
//! gateway CPU, on the runtime `tollgate serve` would choose — that forwards every request to the upstream and its response back, and
//! does nothing else (no auth, no limits, no routing table, no usage, no log line).
//!
//! Scenario h compares tollgate with it in the same run: what nginx does better than the
//! bare proxy is the stack's cost (HTTP parsing, the client's connection task, the
//! runtime), what the bare proxy does better than tollgate is tollgate's own work.

use std::time::Duration;

use crate::gateway::GatewayRuntime;
use crate::system::Placement;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Hop = Client<HttpConnector, Full<Bytes>>;

/// The bare proxy, serving on its own runtime until dropped.
pub struct BareProxy {
    pub url: String,
    runtime: GatewayRuntime,
}

impl BareProxy {
    /// Serves on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub fn start(placement: &Placement, upstream: &str) -> anyhow::Result<Self> {
        let authority: hyper::http::uri::Authority = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .context("the bare proxy's upstream is not host:port")?;
        let runtime = GatewayRuntime::start("bare-proxy", &placement.gateway)?;
        let url = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let hop: Hop = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector);
            tokio::spawn(accept(listener, hop, authority));
            anyhow::Ok(url)
        })?;
        Ok(Self { url, runtime })
    }

    pub fn stop(self) {
        drop(self.runtime);
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    hop: Hop,
    authority: hyper::http::uri::Authority,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let hop = hop.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(hop.clone(), authority.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// What a proxy must do at the least: read the body, send it on with the upstream's
/// `Host`, stream the answer back.
async fn forward(
    hop: Hop,
    authority: hyper::http::uri::Authority,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = hyper::Uri::from_parts(uri)?;
    parts.headers.remove(hyper::header::AUTHORIZATION);
    if let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str()) {
        parts.headers.insert(hyper::header::HOST, host);
    }
    // A failed hop is an error of the service, which closes the connection: the bench's
    // upstreams do not fail, and a bare proxy has no error envelope to answer with.
    Ok(hop
        .request(Request::from_parts(parts, Full::new(body)))
        .await?)
}
