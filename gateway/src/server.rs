//! The two listeners of a node, both HTTP/2 only:
//! - the **caller listener** (TLS, with optional client certificates; plaintext h2c only when
//!   `listen.caller_plaintext = true` says so) serves the node's own control plane
//!   (Registry, Consent, Audit, Health, Reflection) and proxies every other call;
//! - the **peer listener** (mTLS) identifies the peer city from its certificate, then serves
//!   the Federation API and proxies calls to this city's providers.
//!
//! Each connection's requests go to a [`Dispatch`], a `tower::Service`: the seam where
//! tracing, metrics and gRPC-Web are added as layers. Listeners are bound by the caller of
//! [`serve`] and handed over, so tests bind `127.0.0.1:0` without races.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tongban_proto::h2;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::config::Limits;
use crate::proxy::Proxy;
use crate::trust::{PeerIdentity, TrustBundle};

/// Paths the caller listener serves itself instead of proxying.
pub(crate) const CALLER_CONTROL: &[&str] = &[
    "/tongban.registry.v1.Registry/",
    "/tongban.consent.v1.Consent/",
    "/tongban.audit.v1.Audit/",
    "/tongban.admin.v1.Admin/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];
/// Paths the peer listener serves itself.
const PEER_CONTROL: &[&str] = &[
    "/tongban.federation.v1.Federation/",
    "/grpc.health.v1.Health/",
];

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open calls may finish after shutdown is requested.
const GRACE: Duration = Duration::from_secs(5);
/// Hard cap on the header list of one HTTP/2 request; the proxy enforces the (smaller)
/// `limits.max_metadata_bytes` itself so that callers get RESOURCE_EXHAUSTED, not a reset.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Which listener a connection arrived on.
#[derive(Clone)]
pub enum Side {
    /// Plaintext h2c only when the config says so; otherwise TLS.
    Caller {
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
    Peer {
        tls: tokio_rustls::TlsAcceptor,
        bundle: TrustBundle,
    },
}

/// The dispatch of one connection's requests: the node's own services for the control paths
/// of its listener, the proxy for everything else. It is a `tower::Service`, so cross-cutting
/// concerns (tracing, metrics, gRPC-Web) wrap it as layers in [`serve_conn`] instead of
/// being edited into the proxy.
#[derive(Clone)]
pub struct Dispatch {
    routes: Routes,
    proxy: Arc<Proxy>,
    control: &'static [&'static str],
    peer: Option<PeerIdentity>,
}

impl Dispatch {
    async fn call(self, mut req: Request<Incoming>) -> Response<Body> {
        if self.peer.is_none() {
            // The authentication layer of the caller listener: the principal, made once.
            self.proxy.trust.auth.authenticate_request(&mut req).await;
        }
        let path = req.uri().path();
        if self.control.iter().any(|p| path.starts_with(p)) {
            if let Some(peer) = &self.peer {
                req.extensions_mut().insert(peer.clone());
            }
            return match self.routes.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
        }
        match self.peer {
            None => self.proxy.from_caller(req).await,
            Some(peer) => self.proxy.from_peer(peer, req).await,
        }
    }
}

impl tower::Service<Request<Incoming>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let d = self.clone();
        // One box for the whole call (its future is large: the exchange's record and every
        // stage's state), not one around another.
        Box::pin(futures_util::FutureExt::map(Dispatch::call(d, req), Ok))
    }
}

/// The HTTP/2 server settings of a listener.
fn http2_builder(
    side: &Side,
    limits: &Limits,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    // Peer nodes are pinged like they ping us (limits.keepalive_*), so a frozen peer's
    // streams are released on this side too; callers get a gentler pace.
    let (ping_every, ping_timeout) = match side {
        Side::Caller { .. } => (Duration::from_secs(20), Duration::from_secs(10)),
        Side::Peer { .. } => (limits.keepalive_interval, limits.keepalive_timeout),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(Some(ping_every))
        .keep_alive_timeout(ping_timeout)
        .initial_stream_window_size(h2::STREAM_WINDOW)
        .initial_connection_window_size(h2::CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(h2::MAX_RESET_STREAMS)
        .max_local_error_reset_streams(h2::MAX_RESET_STREAMS);
    builder
}

/// The runtimes the accepted connections of the caller and peer listeners are spread over
/// (`[runtime] flavor = "per_core"`: one current-thread runtime per core), round-robin. Empty
/// (the default): each connection runs on the runtime that accepted it.
#[derive(Clone, Default)]
pub struct Spread {
    handles: Arc<[tokio::runtime::Handle]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Spread {
    pub fn new(handles: Vec<tokio::runtime::Handle>) -> Spread {
        Spread {
            handles: handles.into(),
            next: Arc::default(),
        }
    }

    /// How many runtimes the connections are spread over (0: none, each on its own).
    pub fn runtimes(&self) -> usize {
        self.handles.len()
    }

    /// Runs `conn` on the next runtime. Its socket moves there (it is registered with that
    /// runtime's reactor, so its wake-ups stay on that runtime's thread).
    fn spawn(&self, conn: Connection, side: Side, tcp: tokio::net::TcpStream) {
        let n = self.handles.len();
        let target = (n > 0).then(|| {
            &self.handles[self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n]
        });
        let here = tokio::runtime::Handle::try_current().ok();
        match target {
            Some(h) if here.as_ref().is_none_or(|c| c.id() != h.id()) => {
                match tcp.into_std() {
                    Ok(std) => {
                        h.spawn(async move {
                            match tokio::net::TcpStream::from_std(std) {
                                Ok(tcp) => conn.run(side, tcp).await,
                                Err(error) => tracing::warn!(%error, "cannot move a connection to its runtime"),
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "cannot move a connection to its runtime"),
                }
            }
            _ => {
                tokio::spawn(conn.run(side, tcp));
            }
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then lets open calls finish for a grace
/// period. Each connection runs on a runtime of `spread`.
pub async fn serve(
    listener: TcpListener,
    side: Side,
    routes: Routes,
    proxy: Arc<Proxy>,
    limits: Limits,
    spread: Spread,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let control = match side {
        Side::Caller { .. } => CALLER_CONTROL,
        Side::Peer { .. } => PEER_CONTROL,
    };
    let builder = Arc::new(http2_builder(&side, &limits));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let dispatch = Dispatch {
            routes: routes.clone(),
            proxy: proxy.clone(),
            control,
            peer: None,
        };
        let conn = Connection {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            dispatch,
            remote,
        };
        spread.spawn(conn, side.clone(), tcp);
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open calls did not finish within the grace period");
    }
}

/// One accepted connection, before its TLS handshake.
struct Connection {
    builder: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    watcher: Watcher,
    dispatch: Dispatch,
    remote: std::net::SocketAddr,
}

impl Connection {
    async fn run(self, side: Side, tcp: tokio::net::TcpStream) {
        let remote = self.remote;
        match side {
            Side::Caller { tls: None } => self.serve(tcp).await,
            Side::Caller { tls: Some(tls) } => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => self.serve(stream).await,
                    Ok(Err(error)) => {
                        tracing::warn!(%remote, %error, "caller tls handshake refused")
                    }
                    Err(_) => tracing::warn!(%remote, "caller tls handshake timed out"),
                }
            }
            Side::Peer { tls, bundle } => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => self.serve_peer(stream, &bundle).await,
                    Ok(Err(error)) => tracing::warn!(%remote, %error, "peer tls handshake refused"),
                    Err(_) => tracing::warn!(%remote, "peer tls handshake timed out"),
                }
            }
        }
    }

    /// A peer node: its city and key come from its verified certificate, and every request
    /// of the connection carries them.
    async fn serve_peer(
        mut self,
        stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        bundle: &TrustBundle,
    ) {
        let remote = self.remote;
        let chain: Vec<_> = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let binding = crate::assertion::ChannelBinding::of(stream.get_ref().1);
        let identity = bundle.identify_peer(&chain).and_then(|city| {
            let public_key = Arc::new(crate::trust::public_key_of(&chain[0])?);
            Ok(PeerIdentity {
                city,
                public_key,
                binding,
            })
        });
        match identity {
            Ok(peer) => {
                tracing::debug!(%remote, peer = %peer.city, "peer connection");
                self.dispatch.peer = Some(peer);
                self.serve(stream).await
            }
            Err(error) => tracing::warn!(%remote, %error, "peer refused"),
        }
    }

    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The seam for layers: `tower::ServiceBuilder::new().layer(..).service(dispatch)`.
        let svc = hyper_util::service::TowerToHyperService::new(self.dispatch);
        let conn = self.builder.serve_connection(TokioIo::new(io), svc);
        if let Err(error) = self.watcher.watch(conn).await {
            crate::stats::connection_ended(
                crate::stats::Side::Listener,
                &self.remote.to_string(),
                &error,
            );
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (the admin and web listeners: scrapers and browsers) with
/// `svc`, over TLS when `tls` is given, until `shutdown`; open requests then get a short
/// grace period. `what` names the listener in logs.
pub async fn serve_auto<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    svc: S,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(%error, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (svc, builder, watcher, tls) = (
            svc.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let ended = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        _ => {
                            tracing::debug!(%remote, listener = what, "tls handshake failed");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%remote, %error, listener = what, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = what,
            "open requests did not finish within the grace period"
        );
    }
}
