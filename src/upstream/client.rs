//! The HTTP client of the Ollama hop: hyper-util's pooled client, kept lean because every
//! proxied request crosses it.
//!
//! - Connections: TCP_NODELAY, a keep-alive pool per server (`pool_max_idle_per_host`,
//!   idle ones closed after 90 s), `upstream.connect_timeout_s` on the connector; TLS
//!   (hyper-rustls, [`crate::outbound::tls_client_config`]) only when a server is
//!   `https://`, so a plain fleet never builds a root store.
//! - The whole request, streams included, is bounded by `server.request_timeout_s`: one
//!   timer is armed when the request leaves, raced against the response head, then moved
//!   into the [`UpstreamBody`], which ends with [`BodyError::Timeout`] when it fires.
//! - Per request: the URI is built from the server's parsed base ([`ServerBase`]) and the
//!   caller's path without formatting a string (unless the base has a path prefix), the
//!   `Host` header is the server's precomputed one, headers are moved in and the body is
//!   a `Full<Bytes>` that shares the caller's buffer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Sleep;

/// How the pool and the sockets are set; reqwest's defaults where tollgate had not
/// chosen otherwise (TCP keep-alive, user timeout), so dead peers are noticed the same.
#[derive(Debug, Clone, Copy)]
pub struct HopSettings {
    pub connect_timeout: Duration,
    /// `server.request_timeout_s`: the whole request, its body included.
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

/// A response from Ollama: its head, and its body still streaming under the request's
/// deadline.
pub type UpstreamResponse = http::Response<UpstreamBody>;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream server URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS for the upstream servers: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum HopError {
    /// The request's deadline passed first.
    Timeout,
    /// The client's own error (connect, TLS, reset, a malformed head).
    Client(hyper_util::client::legacy::Error),
    /// The server's base and the caller's path make no URI.
    Uri(http::Error),
}

/// Whether a client error means Ollama never saw a usable request: the connection
/// could not be made (refused, connect timeout, TLS handshake), or it was closed or
/// reset before any of the response came back. A malformed response head is not: the
/// server answered, wrongly.
pub fn undelivered(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return !h.is_parse() && !h.is_parse_status() && !h.is_parse_too_large();
        }
        if err.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A server's base URL, parsed once.
#[derive(Debug, Clone)]
pub struct ServerBase {
    scheme: Scheme,
    /// Host and port, without any userinfo.
    authority: Authority,
    /// A path the server is mounted under (`http://h/ollama`), prepended to every path.
    prefix: Option<String>,
    host: HeaderValue,
    /// Basic credentials from the URL's userinfo (`http://user:pass@h`), as reqwest
    /// sent them.
    authorization: Option<HeaderValue>,
}

impl ServerBase {
    pub fn parse(url: &str) -> Result<Self, BuildError> {
        let bad = |reason: &str| BuildError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = match parsed.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            _ => return Err(bad("not http:// or https://")),
        };
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        // `Url` leaves out a port that is the scheme's default, as a `Host` header does.
        let host_port = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authority = Authority::from_maybe_shared(Bytes::from(host_port.clone()))
            .map_err(|e| bad(&e.to_string()))?;
        let host = HeaderValue::from_maybe_shared(Bytes::from(host_port))
            .map_err(|e| bad(&e.to_string()))?;
        let path = parsed.path().trim_end_matches('/');
        let prefix = (!path.is_empty()).then(|| path.to_string());
        let authorization = if parsed.username().is_empty() && parsed.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(parsed.username());
            let password = parsed.password().map(decode).unwrap_or_default();
            let token = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}"),
            );
            let mut value =
                HeaderValue::try_from(format!("Basic {token}")).map_err(|e| bad(&e.to_string()))?;
            value.set_sensitive(true);
            Some(value)
        };
        Ok(Self {
            scheme,
            authority,
            prefix,
            host,
            authorization,
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The absolute URI of `path_and_query` on this server.
    fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
        let path_and_query = match &self.prefix {
            None => path_and_query,
            Some(prefix) => PathAndQuery::try_from(format!("{prefix}{path_and_query}"))?,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Ok(Uri::from_parts(parts)?)
    }
}

/// The hop's pooled client: plain, or able to speak TLS when any server needs it.
#[derive(Clone)]
enum Pool {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// The Ollama hop's client.
#[derive(Clone)]
pub struct HopClient {
    pool: Pool,
    request_timeout: Duration,
}

impl std::fmt::Debug for HopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopClient")
            .field("tls", &self.is_tls())
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl HopClient {
    /// A client for `servers`: TLS-capable when one of them is `https://`.
    pub fn new(settings: HopSettings, servers: &[ServerBase]) -> Result<Self, BuildError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        #[cfg(target_os = "linux")]
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let pool = if servers.iter().any(ServerBase::is_https) {
            http.enforce_http(false);
            let tls = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(crate::outbound::tls_client_config()?)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http);
            Pool::Tls(builder.build(tls))
        } else {
            Pool::Plain(builder.build(http))
        };
        Ok(Self {
            pool,
            request_timeout: settings.request_timeout,
        })
    }

    /// Whether the connector speaks TLS (some server is `https://`).
    pub fn is_tls(&self) -> bool {
        matches!(self.pool, Pool::Tls(_))
    }

    /// Sends a request to `server` under the request timeout; resolves with the head.
    pub async fn send(
        &self,
        server: &ServerBase,
        method: Method,
        path_and_query: PathAndQuery,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, HopError> {
        self.send_within(
            self.request_timeout,
            server,
            method,
            path_and_query,
            headers,
            body,
        )
        .await
    }

    /// Sends a request that must be done within `timeout`.
    pub async fn send_within(
        &self,
        timeout: Duration,
        server: &ServerBase,
        method: Method,
        path_and_query: PathAndQuery,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, HopError> {
        let mut deadline = Box::pin(tokio::time::sleep(timeout));
        let uri = server.uri(path_and_query).map_err(HopError::Uri)?;
        headers.insert(HOST, server.host.clone());
        if let Some(auth) = &server.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let head = Head {
            response: self.request(request),
            deadline: &mut deadline,
        };
        let response = head.await?;
        Ok(response.map(|inner| UpstreamBody { inner, deadline }))
    }

    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match &self.pool {
            Pool::Plain(c) => c.request(request),
            Pool::Tls(c) => c.request(request),
        }
    }
}

/// The response head, or the deadline: whichever comes first.
struct Head<'a> {
    response: ResponseFuture,
    deadline: &'a mut Pin<Box<Sleep>>,
}

impl Future for Head<'_> {
    type Output = Result<http::Response<Incoming>, HopError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(result) = Pin::new(&mut self.response).poll(cx) {
            return Poll::Ready(result.map_err(HopError::Client));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(HopError::Timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// `server.request_timeout_s` passed while the body was still coming.
    #[error("upstream timeout")]
    Timeout,
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("upstream body larger than {0} bytes")]
    TooLarge(usize),
}

impl BodyError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// A response body from Ollama, ended by the request's deadline.
pub struct UpstreamBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The whole body (small documents: errors, lists), at most `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut first: Option<Bytes> = None;
        let mut rest = bytes::BytesMut::new();
        while let Some(frame) = self.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let len = first.as_ref().map_or(0, Bytes::len) + rest.len() + data.len();
            if len > limit {
                return Err(BodyError::TooLarge(limit));
            }
            match &first {
                None => first = Some(data),
                Some(_) => rest.extend_from_slice(&data),
            }
        }
        Ok(match first {
            None => Bytes::new(),
            Some(only) if rest.is_empty() => only,
            Some(head) => {
                let mut all = bytes::BytesMut::with_capacity(head.len() + rest.len());
                all.extend_from_slice(&head);
                all.extend_from_slice(&rest);
                all.freeze()
            }
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::Timeout)));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BodyError::Upstream)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HopSettings {
        HopSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 8,
        }
    }

    fn base(url: &str) -> ServerBase {
        ServerBase::parse(url).expect("a valid base")
    }

    #[test]
    fn a_base_url_gives_scheme_authority_host_and_prefix() {
        let b = base("http://10.0.0.11:11434");
        assert_eq!(
            b.uri(PathAndQuery::from_static("/api/chat?x=1"))
                .expect("uri")
                .to_string(),
            "http://10.0.0.11:11434/api/chat?x=1"
        );
        assert_eq!(b.host, "10.0.0.11:11434");
        assert!(b.authorization.is_none());

        let b = base("https://ollama.example/gpu-a");
        assert!(b.is_https());
        assert_eq!(b.host, "ollama.example");
        assert_eq!(
            b.uri(PathAndQuery::from_static("/api/tags"))
                .expect("uri")
                .to_string(),
            "https://ollama.example/gpu-a/api/tags"
        );

        let b = base("http://[::1]:8080");
        assert_eq!(b.host, "[::1]:8080");
    }

    #[test]
    fn userinfo_becomes_basic_credentials_and_leaves_the_host() {
        let b = base("http://us%40er:p%3Ass@127.0.0.1:11434");
        assert_eq!(b.host, "127.0.0.1:11434");
        let expected =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "us@er:p:ss");
        assert_eq!(
            b.authorization.expect("credentials"),
            format!("Basic {expected}").as_str()
        );
    }

    #[test]
    fn only_an_https_server_builds_a_tls_connector() {
        let plain = HopClient::new(settings(), &[base("http://127.0.0.1:1")]).expect("client");
        assert!(!plain.is_tls());
        let mixed = HopClient::new(
            settings(),
            &[base("http://127.0.0.1:1"), base("https://127.0.0.1:2")],
        )
        .expect("client");
        assert!(mixed.is_tls());
    }

    /// This test waits `connect_timeout` (1 s) by its nature.
    #[tokio::test]
    async fn a_connect_timeout_is_undelivered_not_the_request_timeout() {
        let blackhole = testkit::net::Blackhole::start().await;
        let server = base(&blackhole.url("http"));
        let client = HopClient::new(
            HopSettings {
                request_timeout: Duration::from_secs(600),
                ..settings()
            },
            std::slice::from_ref(&server),
        )
        .expect("client");
        let answer = version(&client, &server).await;
        match answer {
            Err(HopError::Client(e)) => {
                assert!(e.is_connect(), "{e:?}");
                assert!(undelivered(&e), "{e:?}");
            }
            other => panic!("expected a connect timeout, got {other:?}"),
        }
    }

    /// `GET /api/version` with no headers or body.
    async fn version(
        client: &HopClient,
        server: &ServerBase,
    ) -> Result<UpstreamResponse, HopError> {
        client
            .send(
                server,
                Method::GET,
                PathAndQuery::from_static("/api/version"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
    }

    /// A server that answers, but not in HTTP: it saw the request, so the request is
    /// not retried elsewhere.
    #[tokio::test]
    async fn a_malformed_response_head_is_not_undelivered() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await.expect("read the request");
            stream
                .write_all(b"NOT HTTP AT ALL\r\n\r\n")
                .await
                .expect("write");
            // Held open until the client gave up on the answer.
            let _ = stream.read(&mut buf).await;
        };
        let server = base(&format!("http://{addr}"));
        let client = HopClient::new(settings(), std::slice::from_ref(&server)).expect("client");
        let send = version(&client, &server);
        let (answer, ()) = tokio::join!(send, peer);
        match answer {
            Err(HopError::Client(e)) => assert!(!undelivered(&e), "{e:?}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn a_refused_connection_is_undelivered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // A port that was just free: nothing listens there.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let server = base(&format!("http://127.0.0.1:{port}"));
            let client = HopClient::new(settings(), std::slice::from_ref(&server)).expect("client");
            let answer = version(&client, &server).await;
            match answer {
                Err(HopError::Client(e)) => assert!(undelivered(&e), "{e:?}"),
                other => panic!("expected a connection error, got {other:?}"),
            }
        });
    }
}
