//! Step 4/7: sending a checked call upstream (a provider endpoint, or the peer node over the
//! mTLS channel) within its deadline, and streaming the answer back with its audit record
//! made durable before the final status is released.

use std::sync::Arc;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tonic::body::Body;
use tonic::Status;
use tracing::Instrument as _;

use super::call::Call;
use super::headers::set_unique;
use super::stage::Upstream;
use super::{home, Proxy, ProxyError, Ready};
use crate::audit::exchange::{self, Exchange};
use crate::audit::receipt;
use crate::grpc::{self, format_timeout, OnEnd, RequestGuard, ResponseGuard, REQUEST_ID};
use crate::upstream::{Conn, Endpoint, SendError};

/// A call whose upstream answered with headers.
pub(super) struct Sent {
    call: Call,
    response: Response<Incoming>,
    label: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Proxy {
    /// Connects (within the connect timeout and the deadline) and sends the request; the body
    /// streams on through a guard that enforces the message size limit.
    pub(super) async fn send<B: super::CallBody>(
        &self,
        ready: Ready,
        body: B,
        ex: &mut Exchange,
    ) -> Result<Sent, ProxyError> {
        let Ready {
            call,
            mut parts,
            upstream,
            permit,
            mut assertion,
        } = ready;
        // The hop upstream is a span of its own; the next hop continues the trace from it.
        let span = ex.step(|| match &upstream {
            Upstream::Provider(_) => tracing::debug_span!("provider_call", otel.kind = "client"),
            Upstream::Peer(p) => {
                tracing::debug_span!("forward_to_peer", otel.kind = "client", tongban.peer = %p.city)
            }
        });
        let mut sealed: Option<[u8; 32]> = None;
        let hop =
            async {
                let (endpoint, conn) = self.connect(&upstream, &call).await?;
                let label = endpoint.label().to_string();
                if call.remaining().is_zero() {
                    return Err(ProxyError::Deadline(format!(
                        "deadline exceeded before reaching {label}"
                    )));
                }
                prepare(&mut parts, &call, endpoint.uri_for(&call.path));
                tongban_telemetry::trace::inject(
                    &tracing::Span::current(),
                    ex.sampled(),
                    ex.trace_id(),
                    &mut parts.headers,
                );
                let (guarded, violation) =
                    RequestGuard::new(body, self.limits.max_message_bytes, ex.request.clone());
                let req = Request::from_parts(parts, grpc::boxed(guarded));
                // The peer's caller assertion names the connection it goes on (again on a new
                // connection when the request comes back unsent).
                let signer = &self.trust.signer;
                let sealed = &mut sealed;
                let send = endpoint.send(conn, req, self.limits.connect_timeout, |req, conn| {
                    match assertion.as_deref_mut() {
                        Some(claims) => {
                            home::seal(signer, claims, conn.binding.as_ref(), req.headers_mut())
                                .map(|digest| *sealed = Some(digest))
                        }
                        None => Ok(()),
                    }
                });
                send_within(send, violation, call.deadline, &label)
                    .await
                    .map(|r| (r, label))
            };
        let sent = hop.instrument(span).await;
        // The digest of the assertion that went (on the last connection tried).
        if let Some(digest) = sealed {
            ex.assertion(digest);
        }
        let (response, label) = sent?;
        if response.status() != http::StatusCode::OK {
            return Err(ProxyError::UpstreamHttp {
                upstream: label,
                status: response.status(),
            });
        }
        Ok(Sent {
            call,
            response,
            label,
            permit,
        })
    }

    /// A live connection to the upstream, opened within the connect timeout and the deadline.
    async fn connect(
        &self,
        upstream: &Upstream,
        call: &Call,
    ) -> Result<(Arc<Endpoint>, Conn), ProxyError> {
        let budget = self.limits.connect_timeout.min(call.remaining());
        match upstream {
            Upstream::Provider(svc) => svc.endpoints.pick(budget).await.map_err(|e| {
                ProxyError::Unavailable(format!(
                    "provider of `{}` is unreachable: {e}",
                    call.service
                ))
            }),
            Upstream::Peer(peer) => peer
                .endpoint
                .ready_conn(budget)
                .await
                .map(|c| (peer.endpoint.clone(), c))
                .map_err(|e| {
                    ProxyError::Unavailable(format!(
                        "peer city `{}` is unreachable: {e}",
                        peer.city
                    ))
                }),
        }
    }

    /// The upstream's answer on its way back: a trailers-only answer is audited now; a
    /// streamed one when its trailers arrive, before they are released.
    pub(super) async fn respond(&self, sent: Sent, ex: Exchange) -> Response<Body> {
        let Sent {
            call,
            response,
            label,
            permit,
        } = sent;
        let (mut parts, body) = response.into_parts();
        set_unique(&mut parts.headers, REQUEST_ID, &call.request_id);
        tracing::debug!(
            request_id = %call.request_id,
            service = %call.service,
            method = %call.method,
            elapsed_us = call.started.elapsed().as_micros() as u64,
            "call forwarded"
        );
        if let Some((code, message)) = grpc::status_of(&parts.headers) {
            let end = grpc::End {
                code,
                message,
                trailers: parts.headers.clone(),
                response: grpc::Tally::default(),
            };
            return match complete(ex, end).await {
                Ok(extra) => {
                    parts.headers.extend(extra);
                    Response::from_parts(parts, hold(Body::empty(), permit))
                }
                Err(status) => grpc::status_response(status, &call.request_id),
            };
        }
        let guarded = ResponseGuard::new(
            body,
            self.limits.max_message_bytes,
            call.deadline,
            label,
            call.request_id.clone(),
        )
        .on_end(on_end(ex));
        Response::from_parts(parts, hold(grpc::boxed(guarded), permit))
    }
}

/// Sends the request and waits for the response headers until the deadline; an oversized
/// request message seen meanwhile is the answer instead.
async fn send_within(
    send: impl std::future::Future<Output = Result<Response<Incoming>, SendError>>,
    mut violation: tokio::sync::oneshot::Receiver<Status>,
    deadline: tokio::time::Instant,
    label: &str,
) -> Result<Response<Incoming>, ProxyError> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, send) => match r {
            Err(_) => Err(ProxyError::Deadline(format!("deadline exceeded waiting for {label}"))),
            Ok(Err(e)) => match violation.try_recv() {
                Ok(status) => Err(ProxyError::Passthrough(status)),
                Err(_) => Err(ProxyError::Unavailable(format!("{label} failed: {e}"))),
            },
            Ok(Ok(resp)) => Ok(resp),
        },
        Ok(status) = &mut violation => Err(ProxyError::Passthrough(status)),
    }
}

/// The request as it leaves: the upstream's URI, the remaining deadline, the request id.
fn prepare(parts: &mut Parts, call: &Call, uri: http::Uri) {
    parts.uri = uri;
    set_unique(
        &mut parts.headers,
        "grpc-timeout",
        &format_timeout(call.remaining()),
    );
    set_unique(&mut parts.headers, REQUEST_ID, &call.request_id);
}

/// Makes the exchange's record durable; the provider side's receipt goes into the trailers.
pub(super) async fn complete(ex: Exchange, end: grpc::End) -> Result<http::HeaderMap, Status> {
    let receipt = exchange::complete(ex, end).await?;
    let mut extra = http::HeaderMap::new();
    if let Some(r) = receipt {
        set_unique(&mut extra, receipt::TRAILER, &r);
    }
    Ok(extra)
}

/// The response guard's hook that completes `ex` when the response ends (in the call's span:
/// the response is streamed outside of it).
fn on_end(ex: Exchange) -> OnEnd {
    let span = ex.span().clone();
    Box::new(move |end| Box::pin(complete(ex, end).instrument(span)))
}

/// A response body holding a peer's concurrency slot (if any) until it is dropped.
fn hold(body: Body, permit: Option<OwnedSemaphorePermit>) -> Body {
    match permit {
        None => body,
        Some(permit) => grpc::boxed(HoldPermit {
            body,
            permit: Some(permit),
        }),
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds a concurrency slot until it is dropped.
    struct HoldPermit {
        #[pin]
        body: Body,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl http_body::Body for HoldPermit {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
