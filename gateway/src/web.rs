//! The web listener (`listen.web`): citizens' portals call the node from a browser.
//!
//! Browsers cannot speak gRPC (they expose neither HTTP/2 framing nor trailers), so this
//! listener takes **gRPC-Web**, binary (`application/grpc-web+proto`) and text
//! (`application/grpc-web-text`, base64), over HTTP/1.1 or HTTP/2, and translates it
//! (`tonic-web`) into the same calls the caller listener serves. It is a listener of its
//! own rather than a mode of the caller listener because the caller listener is HTTP/2 only
//! and may require client certificates, which browsers do not have; keeping browsers apart
//! also keeps CORS off the system-to-system path.
//!
//! What a browser may reach is narrower than what a city system may: the Consent API, the
//! citizen's access log (`Audit/AccessLog`), the registry's listings, and the services of
//! the federation through the transparent proxy (the cross-city services). The other
//! control-plane methods (registration, audit queries, status) answer PERMISSION_DENIED
//! here. Callers authenticate exactly as on the caller listener (a JWT of the city's
//! identity provider; a citizen's token has role `citizen` and `sub` = the resident id).
//!
//! CORS: only the origins listed in `web.allowed_origins` (none by default) get
//! `access-control-allow-origin`; preflights are answered; credentials (cookies) are never
//! allowed, so a wildcard never meets them (the page sends its token in `authorization`).

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response};
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::proxy::Proxy;

/// Control-plane paths a browser may call; every other control path is refused.
pub const WEB_CONTROL: &[&str] = &[
    "/tongban.consent.v1.Consent/",
    "/tongban.audit.v1.Audit/AccessLog",
    "/tongban.registry.v1.Registry/ListServices",
    "/tongban.registry.v1.Registry/ListCatalogItems",
];

/// Request headers a portal's page may send.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "traceparent",
    "tracestate",
    "x-tongban-target-city",
    "x-tongban-target-org",
    "x-tongban-purpose",
    "x-tongban-subject",
    "x-tongban-consent",
    "x-tongban-catalog-code",
    "x-tongban-request-id",
];

/// Response headers a portal's page may read.
const EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-tongban-request-id",
];

/// The CORS policy of the web listener: the configured origins, POST and preflight only,
/// no credentials.
pub fn cors(allowed_origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let names = |list: &[&str]| -> Vec<HeaderName> {
        list.iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    };
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(names(ALLOWED_HEADERS))
        .expose_headers(names(EXPOSED_HEADERS))
        .allow_credentials(false)
        .max_age(Duration::from_secs(600))
}

/// The dispatch of the web listener's (translated) calls.
#[derive(Clone)]
pub struct WebDispatch {
    pub routes: Routes,
    pub proxy: Arc<Proxy>,
}

impl WebDispatch {
    async fn call(self, mut req: Request<Body>) -> Response<Body> {
        // The authentication layer of the web listener: the principal, made once.
        self.proxy.trust.auth.authenticate_request(&mut req).await;
        let path = req.uri().path();
        if WEB_CONTROL.iter().any(|p| path.starts_with(p)) {
            return match self.routes.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
        }
        if crate::server::CALLER_CONTROL
            .iter()
            .any(|p| path.starts_with(p))
        {
            let status = tonic::Status::permission_denied(format!(
                "{path} is not offered on the web listener (browsers reach consents, their access log, the registry's listings and the federation's services)"
            ));
            return crate::grpc::status_response(status, "");
        }
        self.proxy.from_caller(req).await
    }
}

impl tower::Service<Request<Body>> for WebDispatch {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let d = self.clone();
        Box::pin(async move { Ok(WebDispatch::call(d, req).await) })
    }
}
