//! The probe provider: an in-memory `tongban.crosscity.v1` service with no rules, the
//! backend of the proxy's own tests and of the benchmark (it costs next to nothing per call,
//! so what is measured is the node). It answers unary and server-streaming calls and echoes
//! the origin city the node reports. Departments run `tongban_crosscity` (v2) instead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio_stream::Stream;
use tongban_proto::crosscity::v1::cross_city_service_server::{
    CrossCityService, CrossCityServiceServer,
};
use tongban_proto::crosscity::v1::{
    ApplicationStatus, GetStatusRequest, SubmitRequest, SubmitResponse,
};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The states an application walks through, in order.
pub const STATES: &[&str] = &["received", "reviewing", "approved"];

#[derive(Debug, Clone)]
struct Application {
    catalog_code: String,
    origin_city: String,
    state: usize,
    updated_at_ms: i64,
}

/// The provider of one city.
#[derive(Debug, Clone)]
pub struct Provider {
    city: String,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    apps: Mutex<HashMap<String, Application>>,
    seq: AtomicU64,
    calls: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn origin(meta: &MetadataMap) -> String {
    meta.get(tongban_proto::metadata::ORIGIN_CITY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn valid_code(c: &str) -> bool {
    c.starts_with("JQ-")
        && c.len() <= 32
        && c.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

impl Provider {
    pub fn new(city: impl Into<String>) -> Self {
        Provider {
            city: city.into(),
            inner: Arc::default(),
        }
    }

    /// How many calls reached this provider (tests use it to prove a refused call did not).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    fn status(&self, id: &str, app: &Application) -> ApplicationStatus {
        ApplicationStatus {
            application_id: id.to_string(),
            catalog_code: app.catalog_code.clone(),
            state: STATES[app.state].to_string(),
            provider_city: self.city.clone(),
            updated_at_ms: app.updated_at_ms,
            origin_city: app.origin_city.clone(),
        }
    }

    fn get(&self, id: &str) -> Result<Application, Status> {
        let apps = self
            .inner
            .apps
            .lock()
            .map_err(|_| Status::internal("application store poisoned"))?;
        apps.get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("application `{id}` not found")))
    }

    /// Serves this provider on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        use tongban_proto::h2;
        h2::server()
            .add_service(CrossCityServiceServer::new(self))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<ApplicationStatus, Status>> + Send>>;

#[tonic::async_trait]
impl CrossCityService for Provider {
    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let origin_city = origin(req.metadata());
        let r = req.into_inner();
        if !valid_code(&r.catalog_code) {
            return Err(Status::invalid_argument(format!(
                "catalog_code `{}` is not a cross-city catalog code (JQ-…)",
                r.catalog_code
            )));
        }
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{n:06}", self.city);
        let app = Application {
            catalog_code: r.catalog_code,
            origin_city: origin_city.clone(),
            state: 0,
            updated_at_ms: now_ms(),
        };
        self.inner
            .apps
            .lock()
            .map_err(|_| Status::internal("application store poisoned"))?
            .insert(id.clone(), app);
        tracing::debug!(application = %id, "application received");
        Ok(Response::new(SubmitResponse {
            application_id: id,
            provider_city: self.city.clone(),
            state: STATES[0].to_string(),
            origin_city,
        }))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<ApplicationStatus>, Status> {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let id = req.into_inner().application_id;
        let app = self.get(&id)?;
        Ok(Response::new(self.status(&id, &app)))
    }

    type WatchStatusStream = StatusStream;

    /// Streams the application's remaining states through to the final one (the reference
    /// provider decides at once; a real back office would take days).
    async fn watch_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let id = req.into_inner().application_id;
        let mut app = self.get(&id)?;
        let mut out = Vec::new();
        loop {
            out.push(Ok(self.status(&id, &app)));
            if app.state + 1 == STATES.len() {
                break;
            }
            app.state += 1;
            app.updated_at_ms = now_ms();
        }
        if let Ok(mut apps) = self.inner.apps.lock() {
            apps.insert(id, app);
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }
}
