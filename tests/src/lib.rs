#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Helpers for the integration tests: a federation on loopback (every listener bound on
//! `127.0.0.1:0` and handed over), clients pointed at a node, and raw gRPC calls for
//! services that have no stub here.

pub mod balancer;
pub mod process;

use std::time::Duration;

use tempfile::TempDir;
use tongban_devkit::local::{loopback_limits, LocalFederation};
use tongban_gateway::config::Limits;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::{
    ApplicationStatus, GetStatusRequest, SubmitRequest, SubmitResponse,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub use tongban_devkit::local::CROSSCITY_SERVICE;

/// How long a test waits for the federation to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// A running federation and the directory it lives in (removed on drop).
pub struct Fed {
    pub fed: LocalFederation,
    pub dir: TempDir,
}

impl Fed {
    /// Starts `cities` with the loopback limits, registers each city's provider as `hrss`
    /// and waits until every node sees every peer's service.
    pub async fn start(cities: &[&str]) -> Fed {
        Self::start_with(cities, loopback_limits()).await
    }

    pub async fn start_with(cities: &[&str], limits: Limits) -> Fed {
        let dir = tempfile::tempdir().expect("tempdir");
        let fed = Box::pin(LocalFederation::start(dir.path(), cities, limits))
            .await
            .expect("federation starts");
        for c in cities {
            fed.register_crosscity(c, "hrss", &["JQ-03", "JQ-07"], false)
                .await
                .expect("register provider");
        }
        assert!(
            fed.wait_until_federated(CONVERGE, |_, p| !p.services.is_empty())
                .await,
            "federation did not converge"
        );
        Fed { fed, dir }
    }

    pub async fn channel(&self, city: &str) -> Channel {
        self.fed.channel(city).await.expect("channel to node")
    }

    pub async fn crosscity(&self, city: &str) -> CrossCityServiceClient<Channel> {
        CrossCityServiceClient::new(self.channel(city).await)
    }

    /// Calls received by `city`'s provider so far.
    pub fn provider_calls(&self, city: &str) -> u64 {
        self.fed.city(city).expect("city").provider.provider.calls()
    }

    /// Submits an application from `from`'s node to `to` (None: no target header).
    pub async fn submit(
        &self,
        from: &str,
        to: Option<&str>,
        code: &str,
    ) -> Result<SubmitResponse, Status> {
        self.submit_within(from, to, code, Duration::from_secs(5))
            .await
    }

    /// [`Self::submit`] with a deadline of `timeout`.
    pub async fn submit_within(
        &self,
        from: &str,
        to: Option<&str>,
        code: &str,
        timeout: Duration,
    ) -> Result<SubmitResponse, Status> {
        let msg = SubmitRequest {
            catalog_code: code.to_string(),
            fields: Default::default(),
            attachment: Vec::new(),
        };
        self.crosscity(from)
            .await
            .submit(self.req(from, msg, to, timeout))
            .await
            .map(|r| r.into_inner())
    }

    /// Streams an application's states through `from`'s node from `to`.
    pub async fn watch(
        &self,
        from: &str,
        to: &str,
        id: &str,
    ) -> Result<Vec<ApplicationStatus>, Status> {
        let msg = GetStatusRequest {
            application_id: id.to_string(),
        };
        let mut stream = self
            .crosscity(from)
            .await
            .watch_status(self.req(from, msg, Some(to), Duration::from_secs(5)))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(s) = stream.message().await? {
            out.push(s);
        }
        Ok(out)
    }

    pub async fn shutdown(self) {
        self.fed.shutdown().await;
    }

    /// Whether `city`'s node has its catalog stream with `peer` up.
    pub fn peer_up(&self, city: &str, peer: &str) -> bool {
        self.fed
            .city(city)
            .ok()
            .and_then(|c| c.node())
            .is_some_and(|n| n.peer_up(peer))
    }

    /// The audit of `city`'s running node.
    pub fn auditor(&self, city: &str) -> std::sync::Arc<tongban_gateway::audit::Auditor> {
        self.fed
            .city(city)
            .expect("city")
            .node()
            .expect("node running")
            .auditor()
            .clone()
    }

    /// Registers `endpoint` as the cross-city service of `org` of `city` (as that
    /// organisation, through the Registry API).
    pub async fn register(&self, city: &str, org: &str, endpoint: &str) {
        self.register_with_codes(city, org, endpoint, &[]).await;
    }

    /// [`Self::register`], listing catalog items (calls naming one are routed to it).
    pub async fn register_with_codes(&self, city: &str, org: &str, endpoint: &str, codes: &[&str]) {
        use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};
        self.fed
            .registry(city, org)
            .await
            .expect("registry client")
            .register_service(RegisterServiceRequest {
                registration: Some(ServiceRegistration {
                    organisation: org.to_string(),
                    service: CROSSCITY_SERVICE.to_string(),
                    endpoints: vec![endpoint.to_string()],
                    catalog_codes: codes.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                }),
            })
            .await
            .expect("registration");
    }

    /// A request from a system of `from`'s `hrss`, authenticated with its city's JWT, for
    /// case handling, to `to` (None: no target header).
    pub fn req<T>(&self, from: &str, msg: T, to: Option<&str>, timeout: Duration) -> Request<T> {
        let mut r = targeted(msg, to, timeout);
        authorize(&mut r, &self.fed.token(from, "hrss").expect("token"));
        r.metadata_mut().insert(
            "x-tongban-purpose",
            MetadataValue::from_static("case-handling"),
        );
        r
    }
}

/// A JQ-03 submission to `to`, by the holder of `token`, for case handling (deadline 5 s).
pub fn case_handling_submit(to: &str, token: &str) -> Request<SubmitRequest> {
    let mut req = targeted(
        SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        },
        Some(to),
        Duration::from_secs(5),
    );
    authorize(&mut req, token);
    req.metadata_mut().insert(
        "x-tongban-purpose",
        MetadataValue::from_static("case-handling"),
    );
    req
}

/// Whether tonic failed a call that never left the client: hyper handed the request back
/// because its connection closed (a GOAWAY from a draining node) before sending it. gRPC
/// clients with transparent retry (grpc-go, grpc-java, C-core) send such a call again by
/// themselves; tonic reports it as CANCELLED "operation was canceled", and a caller may send
/// it again with no risk of doing it twice.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_canceled();
        }
        source = e.source();
    }
    false
}

/// The `x-tongban-request-id` a node answered with.
pub fn request_id_of<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-tongban-request-id")
        .expect("x-tongban-request-id")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// Adds `authorization: Bearer <token>`.
pub fn authorize<T>(r: &mut Request<T>, token: &str) {
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"),
    );
}

/// A request with `x-tongban-target-city` (when given) and a deadline.
pub fn targeted<T>(msg: T, to: Option<&str>, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(to) = to {
        r.metadata_mut().insert(
            "x-tongban-target-city",
            MetadataValue::try_from(to).expect("ascii city"),
        );
    }
    r.set_timeout(timeout);
    r
}

/// A unary call to any path with an empty message, for services without a stub here.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    req: Request<()>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

/// The Python of the test environment: `TONGBAN_PYTHON`, or `target/pyenv` as made by
/// `tests/setup-python.sh` (which `tests/run.sh` runs). Fails with instructions otherwise.
/// Runs the Python script `tests/python/<script>` with `args` (off the async workers) and
/// returns what it printed as JSON; fails the test, with its output, if it fails.
pub async fn run_python_json(script: &str, args: Vec<String>) -> serde_json::Value {
    let python = python();
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .args(args)
            .output()
    })
    .await
    .expect("python task")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python {script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("json from python")
}

/// The proto root, for Python clients that generate their stubs.
pub fn proto_root() -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../proto")
        .display()
        .to_string()
}

pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TONGBAN_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let venv =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "no python test environment: run `bash tests/setup-python.sh` (tests/run.sh does) or set TONGBAN_PYTHON"
    );
    venv
}

/// A provider whose Submit holds until released (or 30 s), reporting the `grpc-timeout` it
/// was handed: for deadlines and concurrency limits.
pub struct SlowProvider {
    pub url: String,
    /// The `grpc-timeout` of every Submit that reached it, as it arrived.
    pub seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    release: tokio::sync::watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct Slow {
    seen: tokio::sync::mpsc::UnboundedSender<String>,
    release: tokio::sync::watch::Receiver<bool>,
}

#[tonic::async_trait]
impl tongban_proto::crosscity::v1::cross_city_service_server::CrossCityService for Slow {
    async fn submit(
        &self,
        r: Request<SubmitRequest>,
    ) -> Result<tonic::Response<SubmitResponse>, Status> {
        let t = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let _ = self.seen.send(t);
        let mut release = self.release.clone();
        let _ = tokio::time::timeout(Duration::from_secs(30), release.wait_for(|r| *r)).await;
        Err(Status::internal("slow provider released"))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<tonic::Response<ApplicationStatus>, Status> {
        Err(Status::unimplemented("slow provider"))
    }
    type WatchStatusStream = tokio_stream::Empty<Result<ApplicationStatus, Status>>;
    async fn watch_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<tonic::Response<Self::WatchStatusStream>, Status> {
        Err(Status::unimplemented("slow provider"))
    }
}

impl SlowProvider {
    pub async fn start() -> SlowProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc =
            tongban_proto::crosscity::v1::cross_city_service_server::CrossCityServiceServer::new(
                Slow {
                    seen: tx,
                    release: release_rx,
                },
            );
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        SlowProvider {
            url,
            seen,
            release,
            stop: Some(stop),
            task,
        }
    }

    /// Lets every held call finish.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    pub async fn stop(mut self) {
        self.release();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// The `tongban` binary of this workspace (built by `cargo nextest run --workspace`), or
/// `TONGBAN_BIN`.
pub fn tongban_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TONGBAN_BIN") {
        return std::path::PathBuf::from(p);
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("tongban");
    assert!(
        bin.exists(),
        "no tongban binary at {} (cargo build -p tongban-gateway, or set TONGBAN_BIN)",
        bin.display()
    );
    bin
}

/// A TCP relay in front of a listener that can be frozen: while frozen it accepts
/// connections (as the kernel of a SIGSTOPped process does) but moves no byte either way,
/// on old or new connections — a black hole, as a hung machine or a cut link looks. Thawed,
/// everything flows again.
pub struct FreezableRelay {
    pub addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableRelay {
    pub async fn start(target: std::net::SocketAddr) -> FreezableRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let watch = watch.clone();
                tokio::spawn(async move {
                    let mut w = watch.clone();
                    if w.wait_for(|f| !*f).await.is_err() {
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(relay_half(ri, wo, watch.clone()), relay_half(ro, wi, watch));
                });
            }
        });
        FreezableRelay { addr, frozen, task }
    }

    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn relay_half(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Frozen while waiting: stop reading (what was not read stays unread).
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Bytes read just before a freeze are held until the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A log of `n` records in `dir`, each appended and acknowledged in turn.
pub async fn make_log(
    dir: &std::path::Path,
    n: u64,
    opts: tongban_gateway::audit::log::LogOptions,
) {
    use tongban_proto::audit::v1::AuditRecord;
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    let log = tongban_gateway::audit::log::AuditLog::open(dir, opts, tx).unwrap();
    for i in 1..=n {
        let a = log
            .append(AuditRecord {
                request_id: format!("req-{i}"),
                service: "tongban.crosscity.v1.CrossCityService".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(a.seq, i);
    }
}

/// Asserts that a command succeeded, showing its stderr otherwise.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies a directory tree (a data directory "backup", an archive to tamper with).
pub fn copy_tree(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Runs the audit verifier written from docs/audit-format.md alone
/// (`tests/python/audit_verify.py`); its JSON, whatever it concluded (its exit status must
/// agree with its `ok`).
pub fn audit_verifier(args: &[&str]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/audit_verify.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verifier output ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.success(), v["ok"] == true, "{v}");
    v
}
