//! Long-lived HTTP/2 connections to upstreams: provider endpoints (h2c inside the city) and
//! peer nodes (mTLS across the boundary). One connection per endpoint carries many streams;
//! it is opened on first use and re-opened after it breaks.
//!
//! The connection is established *before* a request is handed over, so a provider endpoint
//! that cannot be reached is skipped for the next one without consuming the request body.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::assertion::ChannelBinding;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tongban_proto::h2;
use tonic::body::Body;

/// How long an endpoint that refused a connection is passed over while others are available.
const DOWN_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("timed out connecting to {endpoint}")]
    ConnectTimeout { endpoint: String },
    #[error("{0}")]
    BadEndpoint(String),
}

/// Why a request did not get its response headers.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("{}", with_sources(.0))]
    Http(hyper::Error),
    #[error("{0}")]
    Prepare(String),
}

/// A live HTTP/2 connection to an endpoint: its sender, and (over TLS) its channel binding.
#[derive(Clone)]
pub struct Conn {
    pub sender: SendRequest<Body>,
    pub binding: Option<ChannelBinding>,
}

/// An error and what caused it, as one line ("http2 error: stream no longer needed").
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How many times a request that never left goes again on a new connection.
const UNSENT_RETRIES: u32 = 2;

/// How far HTTP/2 says a request went, from its error: `Some(true)` when the peer said it
/// did not process it (its stream above the last one of the peer's GOAWAY, or refused),
/// `Some(false)` when the connection went away under it in another way (it may have been
/// processed unless nothing of it was read), `None` for any other failure.
fn refused(e: &hyper::Error) -> Option<bool> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<::h2::Error>() {
            let reason = h2.reason();
            if reason == Some(::h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && reason == Some(::h2::Reason::NO_ERROR))
            {
                return Some(true);
            }
            return h2.is_go_away().then_some(false);
        }
        source = err.source();
    }
    None
}

/// What a request is without its body, to make it again.
struct Head {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Head {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn with(self, body: Body) -> http::Request<Body> {
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// The most of a request body kept to send it again (a unary call's message is far less;
/// a large upload is not sent again).
const REPLAY_LIMIT: usize = 256 * 1024;

/// A request body that can be had again: whole when nothing read it before it was dropped
/// (a stream HTTP/2 refused at once), or as what it gave (its frames, shared rather than
/// copied, up to [`REPLAY_LIMIT`]) when it was read to its end.
struct Reclaimable {
    inner: Option<Body>,
    kept: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    read: bool,
    unread: Option<Body>,
    frames: Vec<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
    size: usize,
    ended: bool,
    over: bool,
}

/// Where a [`Reclaimable`] body is had again.
struct Unread(Arc<Mutex<Kept>>);

impl Unread {
    /// The body again, when the request is known not to have been processed
    /// (`unprocessed`), or when nothing of it was read.
    fn take(&self, unprocessed: bool) -> Option<Body> {
        let mut kept = self.0.lock().ok()?;
        if let Some(body) = kept.unread.take() {
            return Some(body);
        }
        if !unprocessed || !kept.ended || kept.over {
            return None;
        }
        let frames = std::mem::take(&mut kept.frames);
        let trailers = kept.trailers.take();
        let mut stream: Vec<Result<http_body::Frame<bytes::Bytes>, tonic::Status>> = frames
            .into_iter()
            .map(|d| Ok(http_body::Frame::data(d)))
            .collect();
        stream.extend(trailers.map(|t| Ok(http_body::Frame::trailers(t))));
        Some(Body::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(stream),
        )))
    }
}

impl Reclaimable {
    fn wrap(body: Body) -> (Body, Unread) {
        let kept = Arc::new(Mutex::new(Kept::default()));
        let body = Body::new(Reclaimable {
            inner: Some(body),
            kept: kept.clone(),
        });
        (body, Unread(kept))
    }
}

impl http_body::Body for Reclaimable {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = match self.inner.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        };
        if let Ok(mut kept) = self.kept.lock() {
            kept.read = true;
            match &polled {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        kept.size += data.len();
                        if kept.size > REPLAY_LIMIT {
                            kept.over = true;
                            kept.frames = Vec::new();
                        } else if !kept.over {
                            kept.frames.push(data.clone());
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        kept.trailers = Some(t.clone());
                    }
                }
                std::task::Poll::Ready(Some(Err(_))) => kept.over = true,
                std::task::Poll::Ready(None) => kept.ended = true,
                std::task::Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // HTTP/2 stops reading once the body says it ended: that is its end too.
        let end = self
            .inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream);
        if end {
            if let Ok(mut kept) = self.kept.lock() {
                kept.ended |= kept.read;
            }
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let Ok(mut kept) = self.kept.lock() {
            if !kept.read {
                kept.unread = self.inner.take();
            }
        }
    }
}

/// HTTP/2 keepalive of upstream connections: a PING every `interval` (idle or not); a PING
/// unanswered for `timeout` closes the connection, failing its streams at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Keepalive {
    pub fn of(limits: &crate::config::Limits) -> Keepalive {
        Keepalive {
            interval: limits.keepalive_interval,
            timeout: limits.keepalive_timeout,
        }
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive::of(&crate::config::Limits::default())
    }
}

/// How the connection to an endpoint is secured.
#[derive(Clone)]
pub enum Security {
    /// h2c: providers inside the city, on the node's own network.
    Plain,
    /// TLS with this node's client certificate, verifying the server as `name`.
    Tls {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    },
}

/// One upstream address and its (lazily opened) HTTP/2 connection.
pub struct Endpoint {
    label: String,
    /// Where it is: one address, or for a peer city the addresses of its replicas, tried in
    /// turn from the one that last worked.
    addrs: Vec<String>,
    preferred: AtomicUsize,
    scheme: Scheme,
    authority: Authority,
    security: Security,
    keepalive: Keepalive,
    sender: Mutex<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    down_until: Mutex<Option<Instant>>,
    /// Set when a connection attempt failed or the connection died of an error (a keepalive
    /// PING left unanswered, a reset); cleared by the next established connection.
    failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("label", &self.label)
            .finish()
    }
}

/// Splits a provider endpoint URL (`http://host:port`) into its parts.
pub fn parse_endpoint_url(url: &str) -> Result<(String, Authority), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("endpoint `{url}` is not a url"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "endpoint `{url}` must use http:// (h2c to a provider inside the city)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("endpoint `{url}` has no host"))?;
    if authority.port_u16().is_none() {
        return Err(format!("endpoint `{url}` has no port"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("endpoint `{url}` must not have a path"));
    }
    Ok((authority.as_str().to_string(), authority))
}

impl Endpoint {
    /// A provider endpoint inside the city.
    pub fn provider(url: &str) -> Result<Endpoint, UpstreamError> {
        let (addr, authority) = parse_endpoint_url(url).map_err(UpstreamError::BadEndpoint)?;
        Ok(Endpoint::new(
            url.to_string(),
            addr,
            Scheme::HTTP,
            authority,
            Security::Plain,
        ))
    }

    /// The peer node of `city` at `addr` (host:port), over mTLS.
    pub fn peer(
        city: &str,
        addrs: &[String],
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Endpoint, UpstreamError> {
        let authority: Authority = name
            .to_str()
            .parse()
            .map_err(|_| UpstreamError::BadEndpoint(format!("bad node name for {city}")))?;
        if addrs.is_empty() {
            return Err(UpstreamError::BadEndpoint(format!("no address for {city}")));
        }
        let mut e = Endpoint::new(
            format!("peer {city} ({})", addrs.join(", ")),
            addrs[0].clone(),
            Scheme::HTTPS,
            authority,
            Security::Tls { config, name },
        );
        e.addrs = addrs.to_vec();
        Ok(e)
    }

    /// Another replica of this city at its TLS caller listener (`host:port`), with the
    /// client config of [`crate::trust::NodeIdentity::replica_client_config`].
    pub fn replica(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Endpoint, UpstreamError> {
        let name = ServerName::try_from("replica.tongban.invalid")
            .map_err(|e| UpstreamError::BadEndpoint(e.to_string()))?;
        let authority: Authority = addr
            .parse()
            .map_err(|_| UpstreamError::BadEndpoint(format!("`{addr}` is not host:port")))?;
        Ok(Endpoint::new(
            format!("replica at {addr}"),
            addr.to_string(),
            Scheme::HTTPS,
            authority,
            Security::Tls { config, name },
        ))
    }

    /// One endpoint per address (the replicas of a peer city, each asked on its own), each
    /// with its own connection; this one itself when it has one address.
    pub fn each_address(self: &Arc<Self>) -> Vec<Arc<Endpoint>> {
        if self.addrs.len() == 1 {
            return vec![self.clone()];
        }
        self.addrs
            .iter()
            .map(|addr| {
                let mut e = Endpoint::new(
                    format!("{} at {addr}", self.label),
                    addr.clone(),
                    self.scheme.clone(),
                    self.authority.clone(),
                    self.security.clone(),
                );
                e.keepalive = self.keepalive;
                Arc::new(e)
            })
            .collect()
    }

    /// The same endpoint with another keepalive (limits.keepalive_*).
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Endpoint {
        self.keepalive = keepalive;
        self
    }

    fn new(
        label: String,
        addr: String,
        scheme: Scheme,
        authority: Authority,
        security: Security,
    ) -> Endpoint {
        Endpoint {
            label,
            addrs: vec![addr],
            preferred: AtomicUsize::new(0),
            scheme,
            authority,
            security,
            keepalive: Keepalive::default(),
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            down_until: Mutex::new(None),
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The absolute URI of `path` on this endpoint (HTTP/2 needs scheme and authority).
    pub fn uri_for(&self, path: &PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path.clone())
            .build()
            .unwrap_or_default()
    }

    /// Sends `req` on `conn`, after `prepare` has bound it to the connection (a caller
    /// assertion names the connection's channel binding). A request the upstream did not
    /// process is prepared again and goes on a fresh connection: gRPC's transparent retry.
    /// That is a request the connection handed back (it closed, as after a GOAWAY of a
    /// draining upstream, before the request was taken); one whose stream HTTP/2 refused
    /// before reading any of its body; and one the upstream refused or left above the last
    /// stream of its GOAWAY (RFC 9113 §6.8, §8.7), sent again from what its body gave when
    /// it was read to its end. Any other failure is the caller's to report.
    pub async fn send(
        &self,
        mut conn: Conn,
        mut req: http::Request<Body>,
        connect_timeout: Duration,
        mut prepare: impl FnMut(&mut http::Request<Body>, &Conn) -> Result<(), String>,
    ) -> Result<http::Response<Incoming>, SendError> {
        for attempt in 0..=UNSENT_RETRIES {
            let last = attempt == UNSENT_RETRIES;
            prepare(&mut req, &conn).map_err(SendError::Prepare)?;
            match conn.sender.ready().await {
                // Not sent: the request is still here.
                Err(e) if last => return Err(SendError::Http(e)),
                Err(_) => {}
                Ok(()) => {
                    let (parts, body) = req.into_parts();
                    let head = Head::of(&parts);
                    let (body, unread) = Reclaimable::wrap(body);
                    match conn
                        .sender
                        .try_send_request(http::Request::from_parts(parts, body))
                        .await
                    {
                        Ok(response) => return Ok(response),
                        Err(mut e) => match (e.take_message(), refused(e.error())) {
                            (Some(back), _) if !last => req = back,
                            (None, Some(unprocessed)) if !last => match unread.take(unprocessed) {
                                Some(body) => req = head.with(body),
                                None => return Err(SendError::Http(e.into_error())),
                            },
                            _ => return Err(SendError::Http(e.into_error())),
                        },
                    }
                }
            }
            tracing::debug!(endpoint = %self.label, attempt, "request never sent, sending on a new connection");
            // A closed connection is no longer cached: this one is new.
            conn = self.ready_conn(connect_timeout).await?;
        }
        unreachable!("the last attempt returns")
    }

    fn cached(&self) -> Option<Conn> {
        let guard = self.sender.lock().ok()?;
        guard.as_ref().filter(|c| !c.sender.is_closed()).cloned()
    }

    /// Whether this endpoint refused a connection recently.
    pub fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| Instant::now() < t)
    }

    fn set_down(&self, down: bool) {
        self.failed.store(down, Ordering::Relaxed);
        if let Ok(mut g) = self.down_until.lock() {
            *g = down.then(|| Instant::now() + DOWN_FOR);
        }
    }

    /// Whether the last connection to this endpoint failed (to open, or while open) and no
    /// new one has been established since. A connection closed gracefully does not count.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Drops the cached connection (after a peer was found broken).
    pub fn reset(&self) {
        if let Ok(mut g) = self.sender.lock() {
            *g = None;
        }
    }

    /// A sender on a live connection, connecting first if needed.
    pub async fn ready_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Body>, UpstreamError> {
        self.ready_conn(connect_timeout).await.map(|c| c.sender)
    }

    /// A live connection (its sender and channel binding), connecting first if needed.
    pub async fn ready_conn(&self, connect_timeout: Duration) -> Result<Conn, UpstreamError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _one_connect_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        // Each address in turn, from the one that last worked (after the next one when that
        // connection died of an error: its replica is likely gone).
        let n = self.addrs.len();
        let preferred = self.preferred.load(Ordering::Relaxed) % n;
        let first = if n > 1 && self.failed.load(Ordering::Relaxed) {
            (preferred + 1) % n
        } else {
            preferred
        };
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            // Boxed: connecting (a TLS handshake, kilobytes of state) is rare, and inline
            // it would make the future of every call that much larger to move around.
            let result =
                tokio::time::timeout(connect_timeout, Box::pin(self.connect(&self.addrs[i]))).await;
            match result {
                Ok(Ok(conn)) => {
                    if i != preferred {
                        tracing::info!(endpoint = %self.label, addr = %self.addrs[i], "connected to another address of the endpoint");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    self.set_down(false);
                    if let Ok(mut g) = self.sender.lock() {
                        *g = Some(conn.clone());
                    }
                    return Ok(conn);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(UpstreamError::ConnectTimeout {
                        endpoint: self.label.clone(),
                    })
                }
            }
        }
        self.set_down(true);
        Err(last.unwrap_or_else(|| UpstreamError::ConnectTimeout {
            endpoint: self.label.clone(),
        }))
    }

    async fn connect(&self, addr: &str) -> Result<Conn, UpstreamError> {
        let fail = |reason: String| UpstreamError::Connect {
            endpoint: self.label.clone(),
            reason,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.security {
            Security::Plain => handshake(tcp, self.keepalive, &self.label, self.failed.clone())
                .await
                .map(|sender| Conn {
                    sender,
                    binding: None,
                })
                .map_err(fail),
            Security::Tls { config, name } => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| fail(format!("tls: {e}")))?;
                let binding = ChannelBinding::of(tls.get_ref().1);
                handshake(tls, self.keepalive, &self.label, self.failed.clone())
                    .await
                    .map(|sender| Conn { sender, binding })
                    .map_err(fail)
            }
        }
    }
}

async fn handshake<I>(
    io: I,
    keepalive: Keepalive,
    label: &str,
    failed: Arc<AtomicBool>,
) -> Result<SendRequest<Body>, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(h2::STREAM_WINDOW)
        .initial_connection_window_size(h2::CONNECTION_WINDOW)
        .max_concurrent_reset_streams(h2::MAX_RESET_STREAMS)
        .max_pending_accept_reset_streams(h2::MAX_RESET_STREAMS)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http/2 handshake: {e}"))?;
    let label = label.to_string();
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            // A keepalive PING left unanswered ends here too: every stream on the
            // connection fails at once, and the next call reconnects.
            crate::stats::connection_ended(crate::stats::Side::Upstream, &label, &error);
            failed.store(true, Ordering::Relaxed);
        }
    });
    Ok(sender)
}

/// Several endpoints of one service, load-balanced round robin; endpoints that refused a
/// connection recently are tried last.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        EndpointSet {
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// A connected endpoint, or the last connection error when none can be reached.
    pub async fn pick(
        &self,
        connect_timeout: Duration,
    ) -> Result<(Arc<Endpoint>, Conn), UpstreamError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(UpstreamError::BadEndpoint("service has no endpoint".into()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Arc<Endpoint>> =
            (0..n).map(|i| &self.endpoints[(start + i) % n]).collect();
        // Healthy endpoints first; the sort is stable so round robin holds among them.
        order.sort_by_key(|e| e.is_down());
        let mut last = None;
        for ep in order {
            match ep.ready_conn(connect_timeout).await {
                Ok(s) => return Ok((ep.clone(), s)),
                Err(e) => {
                    tracing::warn!(endpoint = %ep.label(), error = %e, "endpoint unreachable, trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::BadEndpoint("no endpoint".into())))
    }
}

/// A tower service over one endpoint's connection, so generated tonic clients (the
/// federation client) share the long-lived channel the data plane uses.
#[derive(Clone)]
pub struct EndpointChannel {
    endpoint: Arc<Endpoint>,
    connect_timeout: Duration,
}

impl EndpointChannel {
    pub fn new(endpoint: Arc<Endpoint>, connect_timeout: Duration) -> Self {
        EndpointChannel {
            endpoint,
            connect_timeout,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for EndpointChannel {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let endpoint = self.endpoint.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let conn = endpoint.ready_conn(connect_timeout).await?;
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = endpoint.uri_for(&path);
            Ok(endpoint
                .send(conn, req, connect_timeout, |_, _| Ok(()))
                .await?)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt as _;

    fn two_frames() -> Body {
        let frames: Vec<Result<http_body::Frame<bytes::Bytes>, tonic::Status>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"ab"))),
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"cd"))),
        ];
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_body_comes_back_whole_unread_or_as_read_when_unprocessed() {
        // Dropped unread: back whole, whatever the error said.
        let (body, unread) = Reclaimable::wrap(two_frames());
        drop(body);
        let again = unread.take(false).unwrap();
        assert_eq!(&again.collect().await.unwrap().to_bytes()[..], b"abcd");

        // Read to its end: back as what it gave, only when known unprocessed.
        let (body, unread) = Reclaimable::wrap(two_frames());
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcd");
        assert!(unread.take(false).is_none(), "maybe processed: not again");
        let again = unread.take(true).unwrap();
        assert_eq!(&again.collect().await.unwrap().to_bytes()[..], b"abcd");

        // Read only in part: never again.
        let (mut body, unread) = Reclaimable::wrap(two_frames());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap(), &bytes::Bytes::from_static(b"ab"));
        drop(body);
        assert!(unread.take(true).is_none());
    }
}
