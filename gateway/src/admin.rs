//! The admin listener (`listen.admin`, loopback by default): what operators' tools read
//! without a caller token — Prometheus metrics at `GET /metrics`, and over gRPC (h2c) the
//! node's status (`tongban.admin.v1.Admin/Status`, used by `tongban status --config`) and
//! health (`grpc.health.v1.Health`). Nothing here carries personal data; access is by
//! network, like any exporter: keep it on loopback or an operators' network.
//!
//! The node's health follows its audit log: a node that cannot write its audit must not
//! take calls ([`watch_health`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::ServiceExt as _;

use crate::audit::Auditor;
use crate::catalog::Catalog;
use crate::federation::Peer;
use tongban_telemetry::metrics::{CityLabels, PeerLabels, CONTENT_TYPE};
use tongban_telemetry::NodeMetrics;

/// How often the audit log's writability is probed.
pub const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the admin listener reads.
#[derive(Clone)]
pub struct Admin {
    pub city: String,
    pub metrics: Arc<NodeMetrics>,
    pub catalog: Arc<Catalog>,
    pub peers: BTreeMap<String, Arc<Peer>>,
    /// Admin/Status and Health.
    pub routes: Routes,
}

impl Admin {
    /// The metrics text, with the gauges that are read rather than counted brought up to
    /// date first (peer links, catalog versions).
    fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        let snap = self.catalog.snapshot();
        self.metrics
            .catalog_version
            .get_or_create(&CityLabels {
                city: self.city.clone(),
            })
            .set(i64::try_from(snap.local_version).unwrap_or(i64::MAX));
        for (city, peer) in &self.peers {
            let labels = PeerLabels { peer: city.clone() };
            self.metrics
                .peer_up
                .get_or_create(&labels)
                .set(i64::from(peer.is_up()));
            let version = snap.peers.get(city).map_or(0, |c| c.version);
            self.metrics
                .catalog_version
                .get_or_create(&CityLabels { city: city.clone() })
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
        self.metrics.encode()
    }

    async fn handle(self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == "/metrics" {
            if req.method() != http::Method::GET {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET /metrics\n");
            }
            return match self.metrics_text() {
                Ok(text) => Response::builder()
                    .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(Body::new(Full::new(Bytes::from(text))))
                    .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "")),
                Err(_) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            };
        }
        if path.starts_with("/tongban.admin.v1.Admin/")
            || path.starts_with("/grpc.health.v1.Health/")
        {
            return match self.routes.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
        }
        plain(
            StatusCode::NOT_FOUND,
            "the admin listener serves GET /metrics, tongban.admin.v1.Admin and grpc.health.v1.Health\n",
        )
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves the admin listener (HTTP/1.1 for scrapers, h2c for gRPC) until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: watch::Receiver<bool>) {
    let svc = tower::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req).await) }
    });
    crate::server::serve_auto(listener, None, svc, "admin", shutdown).await;
}

/// The health service name that is SERVING once a peer has confirmed the node's audit log
/// since it started (or the node has no peers).
pub const ANCHOR_HEALTH: &str = "tongban.audit.anchor";

/// Keeps the node's overall health (`""` in grpc.health.v1) SERVING only while its audit log
/// can be written and no peer has contradicted it: the log's writability is probed every
/// [`HEALTH_PROBE_EVERY`] (a failed append also marks it unwritable at once), so a full or
/// read-only disk turns the node NOT_SERVING, and freeing it turns it back.
pub async fn watch_health(
    auditor: Arc<Auditor>,
    metrics: Arc<NodeMetrics>,
    health: HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut contradiction = auditor.watch_contradiction();
    let mut anchor = auditor.watch_anchor();
    let mut serving = true;
    let mut anchored: Option<bool> = None;
    let mut writable = true;
    let mut probe_due = true;
    loop {
        // The disk is probed on the timer; a change of the anchor or a contradiction is
        // reported at once, with the last probe's answer.
        if probe_due {
            let a = auditor.clone();
            let probed = tokio::task::spawn_blocking(move || a.probe_writable())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            writable = match probed {
                Ok(()) => {
                    metrics.audit.writable.set(1);
                    true
                }
                Err(error) => {
                    if metrics.audit.writable.get() == 1 || serving {
                        tracing::error!(%error, "audit log cannot be written; the node reports NOT_SERVING");
                    }
                    metrics.audit.writable.set(0);
                    false
                }
            };
        }
        contradiction.borrow_and_update();
        // Confirmed by a peer since the start (or no peers): `tongban.audit.anchor`.
        let confirmed = anchor.borrow_and_update().confirmed();
        metrics.audit.anchor_confirmed.set(i64::from(confirmed));
        if anchored != Some(confirmed) {
            let status = if confirmed {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(ANCHOR_HEALTH, status).await;
            anchored = Some(confirmed);
        }
        let now = writable && auditor.refusal().is_none();
        if now != serving {
            let status = if now {
                tracing::info!("audit log writable again; the node reports SERVING");
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            serving = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_PROBE_EVERY) => probe_due = true,
            _ = contradiction.changed() => probe_due = false,
            _ = anchor.changed() => probe_due = false,
            _ = shutdown.changed() => return,
        }
    }
}
