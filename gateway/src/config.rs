//! Node configuration: one TOML file per node, parsed and validated before any port is bound.
//!
//! Relative paths are resolved against the directory of the config file, so a config and the
//! certificates it names can move together. A few environment variables override the file
//! (see [`ENV_OVERRIDES`]). Every error names the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
pub use tongban_telemetry::TraceSettings;

/// Environment variables that override a key of the file, applied after parsing and before
/// validation.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TONGBAN_LISTEN_CALLER", "listen.caller"),
    ("TONGBAN_LISTEN_PEER", "listen.peer"),
    ("TONGBAN_LISTEN_ADMIN", "listen.admin"),
    ("TONGBAN_LISTEN_WEB", "listen.web"),
    ("TONGBAN_DATA_DIR", "storage.data_dir"),
];

/// A config that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("invalid catalog: {0}")]
    Catalog(#[from] tongban_catalog::LoadError),
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    city: String,
    /// This replica's id when the city runs several (env `TONGBAN_REPLICA`).
    #[serde(default)]
    replica: String,
    listen: RawListen,
    storage: RawStorage,
    tls: RawTls,
    caller_tls: Option<RawCallerTls>,
    auth: RawAuth,
    policy: RawPolicy,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    catalog: Option<RawCatalog>,
    telemetry: Option<RawTelemetry>,
    web: Option<RawWeb>,
    #[serde(default)]
    runtime: RawRuntime,
}

/// `[runtime]`: the shape of the node's async runtime.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default)]
    flavor: Option<String>,
    #[serde(default)]
    worker_threads: Option<usize>,
    #[serde(default)]
    lifo_slot: Option<bool>,
}

/// The node's async runtime (`[runtime]`). By default (`flavor = "auto"`) a process that
/// may run on one core only (its CPU affinity or cgroup quota) runs every task on one
/// thread, and otherwise a work-stealing pool of one worker per core: on one core a pool
/// only adds hand-offs between its threads (`bench/ab.sh`, `bench/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeShape {
    /// `flavor = "multi_thread"`: a work-stealing pool of `worker_threads` (none: one per
    /// core).
    MultiThread { worker_threads: Option<usize> },
    /// `flavor = "current_thread"`: every task on the thread that runs the node.
    CurrentThread,
    /// `flavor = "per_core"`: a current-thread runtime per core, the connections of the
    /// caller and peer listeners spread over them (the node's own tasks on the first).
    PerCore,
    /// `flavor = "auto"`: `CurrentThread` on one core, else `MultiThread` with one worker
    /// per core.
    #[default]
    Auto,
}

impl RuntimeShape {
    /// What `Auto` is on a machine where the process may run on `cores` cores.
    pub fn resolve(self, cores: usize) -> RuntimeShape {
        match self {
            RuntimeShape::Auto | RuntimeShape::PerCore if cores <= 1 => RuntimeShape::CurrentThread,
            RuntimeShape::Auto => RuntimeShape::MultiThread {
                worker_threads: None,
            },
            other => other,
        }
    }
}

fn runtime_shape(r: RawRuntime) -> Result<RuntimeShape, ConfigError> {
    if r.lifo_slot == Some(false) {
        if r.flavor.as_deref() != Some("multi_thread") {
            return Err(ConfigError::key(
                "runtime.lifo_slot",
                "applies only to flavor = \"multi_thread\" (the only scheduler with the slot)",
            ));
        }
        if !cfg!(tokio_unstable) {
            return Err(ConfigError::key(
                "runtime.lifo_slot",
                "= false needs a build with RUSTFLAGS=\"--cfg tokio_unstable\" (tokio's switch is unstable)",
            ));
        }
    }
    match (r.flavor.as_deref(), r.worker_threads) {
        (None | Some("auto"), None) => Ok(RuntimeShape::Auto),
        (None | Some("auto") | Some("current_thread") | Some("per_core"), Some(_)) => Err(ConfigError::key(
            "runtime.worker_threads",
            "applies only to flavor = \"multi_thread\"",
        )),
        (Some("multi_thread"), Some(0)) => Err(ConfigError::key(
            "runtime.worker_threads",
            "must be at least 1 (leave it out for one per core)",
        )),
        (Some("multi_thread"), n) => Ok(RuntimeShape::MultiThread { worker_threads: n }),
        (Some("current_thread"), None) => Ok(RuntimeShape::CurrentThread),
        (Some("per_core"), None) => Ok(RuntimeShape::PerCore),
        (Some(other), _) => Err(ConfigError::key(
            "runtime.flavor",
            format!("`{other}`: expected \"auto\", \"multi_thread\", \"current_thread\" or \"per_core\""),
        )),
    }
}

/// `[web]`: who may call the web listener from a browser.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    #[serde(default)]
    allowed_origins: Vec<String>,
}

/// `[telemetry]`: span export over OTLP/gRPC; no export without the section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    endpoint: String,
    #[serde(default = "default_sample_ratio")]
    sample_ratio: f64,
    service_name: Option<String>,
    #[serde(default = "default_queue_spans")]
    queue_spans: usize,
    #[serde(default = "default_export_timeout_ms")]
    export_timeout_ms: u64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_queue_spans() -> usize {
    TraceSettings::DEFAULT_QUEUE_SPANS
}

fn default_export_timeout_ms() -> u64 {
    millis(TraceSettings::DEFAULT_EXPORT_TIMEOUT)
}

/// `[catalog]`: the federation's business catalog; the embedded Jinan–Qingdao one if absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    durability: String,
    handoff: String,
    batch_window_ms: u64,
    segment_bytes: u64,
    checkpoint_every: u64,
    checkpoint_interval_s: u64,
    anchor: String,
    anchor_wait_s: u64,
    retention: RawRetention,
    tsa: Option<RawTsa>,
}

/// `[audit.tsa]`: an RFC 3161 time-stamping authority for checkpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTsa {
    url: String,
    #[serde(default = "default_tsa_timeout_ms")]
    timeout_ms: u64,
}

fn default_tsa_timeout_ms() -> u64 {
    5000
}

/// `[audit.retention]`, in days.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetention {
    exchange_days: u64,
    personal_data_days: u64,
    state_change_days: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        let d = Retention::default();
        RawRetention {
            exchange_days: d.exchange.as_secs() / 86_400,
            personal_data_days: d.personal_data.as_secs() / 86_400,
            state_change_days: d.state_change.as_secs() / 86_400,
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            durability: "sync".into(),
            handoff: "writer".into(),
            batch_window_ms: 10,
            segment_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            checkpoint_interval_s: 10,
            anchor: "wait".into(),
            anchor_wait_s: 60,
            retention: RawRetention::default(),
            tsa: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    caller: String,
    peer: String,
    /// Metrics, status and health for operators, without a token: loopback by default.
    #[serde(default = "default_admin")]
    admin: String,
    /// Browsers (gRPC-Web, CORS); no web listener without it.
    web: Option<String>,
    #[serde(default)]
    caller_plaintext: bool,
}

/// The admin listener's default: loopback, a port chosen by the system (printed at start);
/// a node that Prometheus scrapes names its port.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:0";

fn default_admin() -> String {
    DEFAULT_ADMIN_ADDR.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    issuer: String,
    audience: String,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default = "default_refresh")]
    refresh_interval_s: u64,
}

fn default_leeway() -> u64 {
    30
}

fn default_refresh() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: PathBuf,
    #[serde(default = "default_policy_reload")]
    reload_interval_ms: u64,
}

fn default_policy_reload() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: PathBuf,
    #[serde(default = "default_cache_mib")]
    cache_mib: u64,
    /// Where the city's shared state lives: `sled` (in `data_dir`, the default) or `etcd`.
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    etcd: Option<RawEtcd>,
    /// The pseudonym secret, provisioned (e.g. a mounted Kubernetes Secret) rather than
    /// made in `data_dir` on first start: what the replicas of a city share.
    #[serde(default)]
    secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    /// Default `/tongban/<city>/`.
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default = "default_etcd_timeout_ms")]
    timeout_ms: u64,
    /// TLS to etcd (`https://` endpoints): the CA that issued etcd's certificate.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// This node's client certificate and key, for an etcd that requires one.
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn default_etcd_timeout_ms() -> u64 {
    2000
}

/// `[storage] backend` and `[storage.etcd]`, checked before anything is opened.
fn shared_backend(
    city: &str,
    storage: &RawStorage,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<crate::store::SharedBackend, ConfigError> {
    match (storage.backend.as_deref().unwrap_or("sled"), &storage.etcd) {
        ("sled", None) => Ok(crate::store::SharedBackend::Sled),
        ("sled", Some(_)) => Err(ConfigError::key(
            "storage.etcd",
            "is set but storage.backend is `sled`: set backend = \"etcd\" or remove [storage.etcd]",
        )),
        ("etcd", None) => Err(ConfigError::key(
            "storage.etcd",
            "backend = \"etcd\" needs [storage.etcd] with endpoints",
        )),
        ("etcd", Some(e)) => {
            if !crate::store::ETCD_BUILT_IN {
                return Err(ConfigError::key(
                    "storage.backend",
                    "this build has no etcd backend: build tongban with `--features etcd`",
                ));
            }
            if e.endpoints.is_empty() {
                return Err(ConfigError::key(
                    "storage.etcd.endpoints",
                    "must list at least one endpoint",
                ));
            }
            let tls = etcd_tls(e, resolve)?;
            let scheme = if tls.is_some() { "https://" } else { "http://" };
            for (i, ep) in e.endpoints.iter().enumerate() {
                let rest = ep.strip_prefix(scheme).ok_or_else(|| {
                    ConfigError::key(
                        format!("storage.etcd.endpoints[{i}]"),
                        if tls.is_some() {
                            format!("`{ep}` must be https://host:port (ca_file is set: TLS)")
                        } else if ep.starts_with("https://") {
                            format!("`{ep}` is TLS: set ca_file (the CA that issued etcd's certificate)")
                        } else {
                            format!("`{ep}` must be http://host:port, or https:// with ca_file")
                        },
                    )
                })?;
                validate_host_port(rest)
                    .map_err(|m| ConfigError::key(format!("storage.etcd.endpoints[{i}]"), m))?;
            }
            if !(100..=60_000).contains(&e.timeout_ms) {
                return Err(ConfigError::key(
                    "storage.etcd.timeout_ms",
                    "must be between 100 and 60000",
                ));
            }
            let prefix = e
                .prefix
                .clone()
                .unwrap_or_else(|| format!("/tongban/{city}/"));
            if !prefix.ends_with('/') {
                return Err(ConfigError::key(
                    "storage.etcd.prefix",
                    "must end with `/` (so that one city's keys are not a prefix of another's)",
                ));
            }
            Ok(crate::store::SharedBackend::Etcd {
                endpoints: e.endpoints.clone(),
                prefix,
                timeout: Duration::from_millis(e.timeout_ms),
                tls,
            })
        }
        (other, _) => Err(ConfigError::key(
            "storage.backend",
            format!("`{other}` is not a backend: sled or etcd"),
        )),
    }
}

/// `[storage.etcd] ca_file, cert_file, key_file`: each a readable PEM file.
fn etcd_tls(
    e: &RawEtcd,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<crate::store::EtcdTls>, ConfigError> {
    let pem = |key: &str, p: &Path| {
        let path = resolve(p);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.contains("-----BEGIN ") => Ok(path),
            Ok(_) => Err(ConfigError::key(
                format!("storage.etcd.{key}"),
                format!("{} is not a PEM file", path.display()),
            )),
            Err(err) => Err(ConfigError::key(
                format!("storage.etcd.{key}"),
                format!("cannot read {}: {err}", path.display()),
            )),
        }
    };
    let client = match (&e.cert_file, &e.key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((pem("cert_file", c)?, pem("key_file", k)?)),
        (Some(_), None) => {
            return Err(ConfigError::key(
                "storage.etcd.key_file",
                "cert_file is set: set key_file too",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::key(
                "storage.etcd.cert_file",
                "key_file is set: set cert_file too",
            ))
        }
    };
    match &e.ca_file {
        Some(ca) => Ok(Some(crate::store::EtcdTls {
            ca: pem("ca_file", ca)?,
            client,
        })),
        None if client.is_some() => Err(ConfigError::key(
            "storage.etcd.ca_file",
            "a client certificate is for TLS: set ca_file (the CA that issued etcd's certificate)",
        )),
        None => Ok(None),
    }
}

fn default_cache_mib() -> u64 {
    DEFAULT_STORE_CACHE_BYTES / (1024 * 1024)
}

pub use crate::store::DEFAULT_STORE_CACHE_BYTES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    trust_bundle: PathBuf,
    /// `"jwt"` (default) or `"mac"`: the form of the caller assertions sent to peers.
    #[serde(default)]
    caller_assertion: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    city: String,
    /// One address, or `addresses`: the replicas of the city, tried in turn.
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    addresses: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_message_bytes: u64,
    default_timeout_ms: u64,
    max_timeout_ms: u64,
    connect_timeout_ms: u64,
    max_concurrent_streams_per_connection: u32,
    catalog_retry_ms: u64,
    caller_rate_per_s: u64,
    caller_burst: u64,
    max_metadata_bytes: u64,
    max_streams_per_peer: u64,
    keepalive_interval_ms: u64,
    keepalive_timeout_ms: u64,
    verified_tokens: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        let l = Limits::default();
        RawLimits {
            max_message_bytes: l.max_message_bytes,
            default_timeout_ms: millis(l.default_timeout),
            max_timeout_ms: millis(l.max_timeout),
            connect_timeout_ms: millis(l.connect_timeout),
            max_concurrent_streams_per_connection: l.max_concurrent_streams_per_connection,
            catalog_retry_ms: millis(l.catalog_retry),
            caller_rate_per_s: l.caller_rate_per_s,
            caller_burst: l.caller_burst,
            max_metadata_bytes: l.max_metadata_bytes,
            max_streams_per_peer: l.max_streams_per_peer,
            keepalive_interval_ms: millis(l.keepalive_interval),
            keepalive_timeout_ms: millis(l.keepalive_timeout),
            verified_tokens: l.verified_tokens,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's city id (lowercase ascii).
    pub city: String,
    /// This replica's id (`replica`, lowercase ascii; empty for a city that runs one node):
    /// in every audit record and checkpoint, and what peers hold this log's checkpoints by.
    pub replica: String,
    /// Where city systems call the node (TLS per `caller_tls`, or h2c when the config says
    /// `listen.caller_plaintext = true`).
    pub caller_addr: SocketAddr,
    /// Where peer nodes call this node (mTLS only).
    pub peer_addr: SocketAddr,
    /// Where operators' tools read metrics (`/metrics`), status and health (`listen.admin`;
    /// plaintext, no token: keep it on loopback or an operators' network).
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Bytes of the store's page cache (`storage.cache_mib`): bounds the node's memory.
    pub store_cache_bytes: u64,
    /// Where the city's shared state lives (`storage.backend`, `[storage.etcd]`).
    pub shared_store: crate::store::SharedBackend,
    /// The provisioned pseudonym secret (`storage.secret_file`); none: `data_dir/subject.key`,
    /// made on first start.
    pub secret_file: Option<PathBuf>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub trust_bundle_path: PathBuf,
    /// `[tls] caller_assertion = "mac"`: the caller assertions this node sends its peers are
    /// MACed with a key exported from the TLS connection instead of signed (a providing
    /// node accepts both forms; only for peers that run a node that knows the MAC form).
    pub mac_assertions: bool,
    pub peers: Vec<PeerConfig>,
    pub limits: Limits,
    /// TLS of the caller listener; `None` only with `listen.caller_plaintext = true`.
    pub caller_tls: Option<CallerTls>,
    pub auth: AuthConfig,
    pub policy_file: PathBuf,
    pub policy_reload: Duration,
    pub audit: AuditConfig,
    /// The federation's business catalog (`[catalog] file`, else the embedded one), loaded
    /// and validated with the config so that a bad file stops the node before it binds.
    pub items: Arc<tongban_catalog::Catalog>,
    /// Span export (`[telemetry]`); `None`: spans are not exported (trace ids are still
    /// propagated and audited).
    pub telemetry: Option<TraceSettings>,
    /// The web listener for browsers (`listen.web`, `[web]`); none unless configured.
    pub web: Option<WebConfig>,
    /// The async runtime's shape (`[runtime]`).
    pub runtime: RuntimeShape,
    /// `[runtime] lifo_slot` (default true): the work-stealing pool's LIFO slot, which runs
    /// the task a task just woke next. Off only in a build with `--cfg tokio_unstable`.
    pub runtime_lifo_slot: bool,
}

/// The web listener: gRPC-Web (binary and text) and HTTP/1.1 for browsers, with CORS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub addr: SocketAddr,
    /// Origins (`scheme://host[:port]`) whose pages may call the node; none by default
    /// (same-origin pages only). Never a wildcard.
    pub allowed_origins: Vec<String>,
}

/// The audit log (`[audit]`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `None`: sync (fsync before the response is released); `Some(w)`: batch, synced every w.
    pub batch_window: Option<Duration>,
    /// `[audit] handoff = "leader"`: the first waiting call writes the group commit itself
    /// instead of waking the writer thread (sync durability only; an A/B shape, see
    /// `bench/README.md`).
    pub leader_handoff: bool,
    pub segment_bytes: u64,
    /// Sign a checkpoint every this many records ...
    pub checkpoint_every: u64,
    /// ... or this often, whichever comes first (also how often peers' are fetched).
    pub checkpoint_interval: Duration,
    /// What the node does at start until a peer has confirmed its audit log.
    pub anchor: AnchorPolicy,
    /// How long records are kept before `tongban audit prune` may remove them (archived).
    pub retention: Retention,
    /// An RFC 3161 time-stamping authority for checkpoints (`[audit.tsa]`): its URL (http)
    /// and how long to wait for it.
    pub tsa: Option<(String, Duration)>,
}

/// How long audit records of each class are kept before a prune may remove them (once
/// archived). The defaults are illustrative: the operator sets them from the law that
/// applies to the city.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Exchanges that were about nobody's personal data.
    pub exchange: Duration,
    /// Exchanges about a person (a subject pseudonym in the record).
    pub personal_data: Duration,
    /// Consents, registrations, policy and catalog loads, starts and stops.
    pub state_change: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        Retention {
            exchange: days(3 * 365),
            personal_data: days(5 * 365),
            state_change: days(10 * 365),
        }
    }
}

impl Retention {
    /// How long `r` must be kept.
    pub fn of(&self, r: &tongban_proto::audit::v1::AuditRecord) -> Duration {
        if r.state_change.is_some() {
            self.state_change
        } else if !r.subject_pseudonym.is_empty() {
            self.personal_data
        } else {
            self.exchange
        }
    }
}

/// `audit.anchor`: at start a node asks its peers for the checkpoints they hold of it before
/// it serves; when none answers, this decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorPolicy {
    /// Refuse calls (and report NOT_SERVING) until a peer confirms; stop after this long.
    Wait(Duration),
    /// Serve at once, the anchor marked unchecked (health, status, metrics) until a peer
    /// confirms.
    Serve,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            batch_window: None,
            leader_handoff: false,
            segment_bytes: 64 * 1024 * 1024,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            anchor: AnchorPolicy::Wait(Duration::from_secs(60)),
            retention: Retention::default(),
            tsa: None,
        }
    }
}

/// TLS of the caller listener.
#[derive(Debug, Clone)]
pub struct CallerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, callers must present a client certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

/// Caller authentication settings (`[auth]`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Exactly one of `jwks_file` and `jwks_url` is set.
    pub jwks_file: Option<PathBuf>,
    /// An https:// URL of the identity provider's JWKS.
    pub jwks_url: Option<String>,
    /// PEM roots for `jwks_url` instead of the public web PKI.
    pub jwks_ca_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub city: String,
    /// `host:port` of the peer's peer listener (the first of `addresses`).
    pub address: String,
    /// The other replicas of the city (`addresses` after the first), tried in turn when the
    /// one in use cannot be reached.
    pub alternates: Vec<String>,
}

impl PeerConfig {
    /// Every address of the city, the preferred first.
    pub fn addresses(&self) -> Vec<String> {
        std::iter::once(self.address.clone())
            .chain(self.alternates.iter().cloned())
            .collect()
    }
}

/// Bounds that keep one caller or one peer from exhausting the node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gRPC message (either direction) passed through; larger → RESOURCE_EXHAUSTED.
    pub max_message_bytes: u64,
    /// Deadline applied when the caller sends no `grpc-timeout`.
    pub default_timeout: Duration,
    /// Longest deadline honoured; a longer `grpc-timeout` is cut to this.
    pub max_timeout: Duration,
    /// How long to wait for a TCP (+TLS) connection to a provider or peer.
    pub connect_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS on both listeners.
    pub max_concurrent_streams_per_connection: u32,
    /// Back-off before a lost peer is contacted again.
    pub catalog_retry: Duration,
    /// Sustained calls per second per caller (city/org); token bucket.
    pub caller_rate_per_s: u64,
    /// Burst size of the per-caller token bucket.
    pub caller_burst: u64,
    /// Largest total metadata (header names and values) of one call.
    pub max_metadata_bytes: u64,
    /// Calls from one peer city in flight at this node (streams included until they end).
    pub max_streams_per_peer: u64,
    /// HTTP/2 keepalive PING interval on every connection to a peer node or provider (and
    /// on the listeners): a frozen peer (a hung machine, a cut link) is noticed within
    /// interval + timeout instead of costing every call its whole deadline.
    pub keepalive_interval: Duration,
    /// How long a keepalive PING may go unanswered before the connection is closed and the
    /// peer marked down.
    pub keepalive_timeout: Duration,
    /// Entries of each cache of tokens already verified (callers' JWTs, citizens'
    /// consents): bounds their memory; a token that no longer fits is verified again.
    pub verified_tokens: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            max_concurrent_streams_per_connection: 1024,
            catalog_retry: Duration::from_millis(500),
            caller_rate_per_s: 1000,
            caller_burst: 2000,
            max_metadata_bytes: 8 * 1024,
            max_streams_per_peer: 2048,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            verified_tokens: 10_000,
        }
    }
}

impl NodeConfig {
    /// Reads, parses, applies environment overrides and validates a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base, path, |k| std::env::var(k).ok())
    }

    /// Parses config text. `base` resolves relative paths; `env` looks up overrides.
    pub fn parse(
        text: &str,
        base: &Path,
        path_for_errors: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::Syntax {
                path: path_for_errors.to_path_buf(),
                message: format!("{}{at}", e.message().trim_end()),
            }
        })?;
        if let Some(v) = env("TONGBAN_LISTEN_CALLER") {
            raw.listen.caller = v;
        }
        if let Some(v) = env("TONGBAN_LISTEN_PEER") {
            raw.listen.peer = v;
        }
        if let Some(v) = env("TONGBAN_LISTEN_ADMIN") {
            raw.listen.admin = v;
        }
        if let Some(v) = env("TONGBAN_LISTEN_WEB") {
            raw.listen.web = Some(v);
        }
        if let Some(v) = env("TONGBAN_REPLICA") {
            raw.replica = v;
        }
        if let Some(v) = env("TONGBAN_DATA_DIR") {
            raw.storage.data_dir = PathBuf::from(v);
        }
        Self::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<NodeConfig, ConfigError> {
        validate_city_id(&raw.city).map_err(|m| ConfigError::key("city", m))?;
        if !raw.replica.is_empty() {
            validate_ident(&raw.replica, 32)
                .map_err(|m| ConfigError::key("replica", format!("replica id {m}")))?;
        }
        let caller_addr = parse_addr("listen.caller", &raw.listen.caller)?;
        let peer_addr = parse_addr("listen.peer", &raw.listen.peer)?;
        let admin_addr = parse_addr("listen.admin", &raw.listen.admin)?;
        if caller_addr == peer_addr && caller_addr.port() != 0 {
            return Err(ConfigError::key(
                "listen.peer",
                "must differ from listen.caller",
            ));
        }
        if admin_addr.port() != 0 && (admin_addr == caller_addr || admin_addr == peer_addr) {
            return Err(ConfigError::key(
                "listen.admin",
                "must differ from listen.caller and listen.peer",
            ));
        }
        let telemetry = raw
            .telemetry
            .map(|t| telemetry_settings(t, &raw.city))
            .transpose()?;
        let runtime_lifo_slot = raw.runtime.lifo_slot.unwrap_or(true);
        let runtime = runtime_shape(raw.runtime)?;
        let web = match (&raw.listen.web, raw.web) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "listen.web",
                    "is required when [web] is set",
                ))
            }
            (Some(a), w) => {
                let addr = parse_addr("listen.web", a)?;
                if addr.port() != 0 && [caller_addr, peer_addr, admin_addr].contains(&addr) {
                    return Err(ConfigError::key(
                        "listen.web",
                        "must differ from the other listeners",
                    ));
                }
                let origins = w.map(|w| w.allowed_origins).unwrap_or_default();
                for (i, o) in origins.iter().enumerate() {
                    validate_origin(o)
                        .map_err(|m| ConfigError::key(format!("web.allowed_origins[{i}]"), m))?;
                }
                Some(WebConfig {
                    addr,
                    allowed_origins: origins,
                })
            }
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        if !(1..=4096).contains(&raw.storage.cache_mib) {
            return Err(ConfigError::key(
                "storage.cache_mib",
                "must be between 1 and 4096",
            ));
        }
        if raw.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key("storage.data_dir", "must not be empty"));
        }
        let shared_store = shared_backend(&raw.city, &raw.storage, &resolve)?;
        let mut peers: Vec<PeerConfig> = Vec::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let key = format!("peers[{i}]");
            validate_city_id(&p.city).map_err(|m| ConfigError::key(format!("{key}.city"), m))?;
            if p.city == raw.city {
                return Err(ConfigError::key(
                    format!("{key}.city"),
                    "a node cannot peer with its own city",
                ));
            }
            if peers.iter().any(|q| q.city == p.city) {
                return Err(ConfigError::key(
                    format!("{key}.city"),
                    format!("city `{}` is listed twice", p.city),
                ));
            }
            let addresses = match (p.address, p.addresses) {
                (Some(a), None) => vec![a],
                (None, Some(list)) if !list.is_empty() => list,
                (None, _) => {
                    return Err(ConfigError::key(
                        format!("{key}.address"),
                        "is required (or `addresses`, a list of the city's replicas)",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::key(
                        format!("{key}.addresses"),
                        "give `address` or `addresses`, not both",
                    ))
                }
            };
            for (j, a) in addresses.iter().enumerate() {
                let at = if addresses.len() == 1 {
                    format!("{key}.address")
                } else {
                    format!("{key}.addresses[{j}]")
                };
                validate_host_port(a).map_err(|m| ConfigError::key(at, m))?;
            }
            peers.push(PeerConfig {
                city: p.city,
                address: addresses[0].clone(),
                alternates: addresses[1..].to_vec(),
            });
        }
        let l = raw.limits;
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::key(
                    format!("limits.{key}"),
                    "must be greater than 0",
                ))
            } else {
                Ok(v)
            }
        };
        let ms = |key: &str, v: u64| positive(key, v).map(Duration::from_millis);
        let limits = Limits {
            max_message_bytes: positive("max_message_bytes", l.max_message_bytes)?,
            default_timeout: ms("default_timeout_ms", l.default_timeout_ms)?,
            max_timeout: ms("max_timeout_ms", l.max_timeout_ms)?,
            connect_timeout: ms("connect_timeout_ms", l.connect_timeout_ms)?,
            max_concurrent_streams_per_connection: u32::try_from(positive(
                "max_concurrent_streams_per_connection",
                u64::from(l.max_concurrent_streams_per_connection),
            )?)
            .unwrap_or(u32::MAX),
            catalog_retry: ms("catalog_retry_ms", l.catalog_retry_ms)?,
            caller_rate_per_s: positive("caller_rate_per_s", l.caller_rate_per_s)?,
            caller_burst: positive("caller_burst", l.caller_burst)?,
            max_metadata_bytes: positive("max_metadata_bytes", l.max_metadata_bytes)?,
            max_streams_per_peer: positive("max_streams_per_peer", l.max_streams_per_peer)?,
            keepalive_interval: ms("keepalive_interval_ms", l.keepalive_interval_ms)?,
            keepalive_timeout: ms("keepalive_timeout_ms", l.keepalive_timeout_ms)?,
            verified_tokens: positive("verified_tokens", l.verified_tokens)?,
        };
        if limits.max_metadata_bytes > 60 * 1024 {
            return Err(ConfigError::key(
                "limits.max_metadata_bytes",
                "must be at most 61440 (the listeners' header limit)",
            ));
        }
        let caller_tls = match (raw.caller_tls, raw.listen.caller_plaintext) {
            (Some(_), true) => {
                return Err(ConfigError::key(
                    "listen.caller_plaintext",
                    "cannot be true together with [caller_tls]",
                ))
            }
            (None, false) => {
                return Err(ConfigError::key(
                    "caller_tls",
                    "is required unless listen.caller_plaintext = true says so explicitly",
                ))
            }
            (Some(t), false) => Some(CallerTls {
                cert: resolve(&t.cert),
                key: resolve(&t.key),
                client_ca: t.client_ca.as_deref().map(resolve),
            }),
            (None, true) => None,
        };
        if raw.auth.issuer.trim().is_empty() {
            return Err(ConfigError::key("auth.issuer", "must not be empty"));
        }
        if raw.auth.audience.trim().is_empty() {
            return Err(ConfigError::key("auth.audience", "must not be empty"));
        }
        if raw.auth.leeway_s > 300 {
            return Err(ConfigError::key("auth.leeway_s", "must be at most 300"));
        }
        if raw.auth.refresh_interval_s < 10 {
            return Err(ConfigError::key(
                "auth.refresh_interval_s",
                "must be at least 10",
            ));
        }
        match (&raw.auth.jwks_file, &raw.auth.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "auth.jwks_url",
                    "set either auth.jwks_file or auth.jwks_url, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "auth.jwks_file",
                    "one of auth.jwks_file or auth.jwks_url is required",
                ))
            }
            (None, Some(u)) if !u.starts_with("https://") => {
                return Err(ConfigError::key("auth.jwks_url", "must be an https:// url"))
            }
            _ => {}
        }
        let auth = AuthConfig {
            jwks_file: raw.auth.jwks_file.as_deref().map(resolve),
            jwks_url: raw.auth.jwks_url,
            jwks_ca_file: raw.auth.jwks_ca_file.as_deref().map(resolve),
            issuer: raw.auth.issuer,
            audience: raw.auth.audience,
            leeway: Duration::from_secs(raw.auth.leeway_s),
            refresh_interval: Duration::from_secs(raw.auth.refresh_interval_s),
        };
        let a = &raw.audit;
        let batch_window = match a.durability.as_str() {
            "sync" => None,
            "batch" if (1..=1000).contains(&a.batch_window_ms) => {
                Some(Duration::from_millis(a.batch_window_ms))
            }
            "batch" => {
                return Err(ConfigError::key(
                    "audit.batch_window_ms",
                    "must be 1 to 1000 (it bounds what a machine crash can lose)",
                ))
            }
            other => {
                return Err(ConfigError::key(
                    "audit.durability",
                    format!("`{other}` is not \"sync\" or \"batch\""),
                ))
            }
        };
        let leader_handoff = match (a.handoff.as_str(), batch_window) {
            ("writer", _) => false,
            ("leader", None) => true,
            ("leader", Some(_)) => {
                return Err(ConfigError::key(
                    "audit.handoff",
                    "\"leader\" needs durability = \"sync\" (a batch window needs the writer thread's timer)",
                ))
            }
            (other, _) => {
                return Err(ConfigError::key(
                    "audit.handoff",
                    format!("`{other}` is not \"writer\" or \"leader\""),
                ))
            }
        };
        if a.segment_bytes < 4096 {
            return Err(ConfigError::key(
                "audit.segment_bytes",
                "must be at least 4096",
            ));
        }
        let audit = AuditConfig {
            batch_window,
            leader_handoff,
            segment_bytes: a.segment_bytes,
            checkpoint_every: positive("checkpoint_every", a.checkpoint_every).map_err(|_| {
                ConfigError::key("audit.checkpoint_every", "must be greater than 0")
            })?,
            checkpoint_interval: Duration::from_secs(
                positive("checkpoint_interval_s", a.checkpoint_interval_s).map_err(|_| {
                    ConfigError::key("audit.checkpoint_interval_s", "must be greater than 0")
                })?,
            ),
            anchor: match a.anchor.as_str() {
                "wait" => AnchorPolicy::Wait(Duration::from_secs(
                    positive("anchor_wait_s", a.anchor_wait_s).map_err(|_| {
                        ConfigError::key("audit.anchor_wait_s", "must be greater than 0")
                    })?,
                )),
                "serve" => AnchorPolicy::Serve,
                other => {
                    return Err(ConfigError::key(
                        "audit.anchor",
                        format!("must be \"wait\" or \"serve\", not {other:?}"),
                    ))
                }
            },
            tsa: match &a.tsa {
                None => None,
                Some(t) if !t.url.starts_with("http://") => {
                    return Err(ConfigError::key(
                        "audit.tsa.url",
                        "must be an http:// URL of an RFC 3161 time-stamping authority",
                    ))
                }
                Some(t) => Some((
                    t.url.clone(),
                    Duration::from_millis(positive("timeout_ms", t.timeout_ms).map_err(|_| {
                        ConfigError::key("audit.tsa.timeout_ms", "must be greater than 0")
                    })?),
                )),
            },
            retention: {
                let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
                Retention {
                    exchange: days(a.retention.exchange_days),
                    personal_data: days(a.retention.personal_data_days),
                    state_change: days(a.retention.state_change_days),
                }
            },
        };
        if raw.policy.reload_interval_ms < 100 {
            return Err(ConfigError::key(
                "policy.reload_interval_ms",
                "must be at least 100",
            ));
        }
        if limits.max_message_bytes > u64::from(u32::MAX) {
            return Err(ConfigError::key(
                "limits.max_message_bytes",
                "must fit a gRPC length prefix (at most 4294967295)",
            ));
        }
        if limits.default_timeout > limits.max_timeout {
            return Err(ConfigError::key(
                "limits.default_timeout_ms",
                "must not exceed limits.max_timeout_ms",
            ));
        }
        let mac_assertions = match raw.tls.caller_assertion.as_deref() {
            None | Some("jwt") => false,
            Some("mac") => true,
            Some(other) => {
                return Err(ConfigError::key(
                    "tls.caller_assertion",
                    format!("`{other}` is not \"jwt\" or \"mac\""),
                ))
            }
        };
        Ok(NodeConfig {
            city: raw.city,
            replica: raw.replica,
            caller_addr,
            peer_addr,
            admin_addr,
            data_dir: resolve(&raw.storage.data_dir),
            store_cache_bytes: raw.storage.cache_mib * 1024 * 1024,
            shared_store,
            secret_file: raw.storage.secret_file.as_deref().map(&resolve),
            cert_path: resolve(&raw.tls.cert),
            key_path: resolve(&raw.tls.key),
            trust_bundle_path: resolve(&raw.tls.trust_bundle),
            mac_assertions,
            peers,
            limits,
            caller_tls,
            auth,
            policy_file: resolve(&raw.policy.file),
            policy_reload: Duration::from_millis(raw.policy.reload_interval_ms),
            audit,
            items: Arc::new(tongban_catalog::Catalog::load_or_embedded(
                raw.catalog.map(|c| resolve(&c.file)).as_deref(),
            )?),
            telemetry,
            web,
            runtime,
            runtime_lifo_slot,
        })
    }
}

/// A browser origin: `http(s)://host[:port]`, nothing more (no path, no wildcard).
fn validate_origin(o: &str) -> Result<(), String> {
    if o.contains('*') {
        return Err(format!(
            "`{o}`: no wildcard; list each origin a portal is served from"
        ));
    }
    let uri: http::Uri = o
        .parse()
        .map_err(|_| format!("`{o}` is not an origin (e.g. https://portal.jinan.gov.cn)"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/") && !o.ends_with('/');
    if !scheme_ok || uri.host().is_none() || !bare {
        return Err(format!(
            "`{o}` is not an origin: scheme://host[:port], no path (e.g. https://portal.jinan.gov.cn)"
        ));
    }
    Ok(())
}

fn telemetry_settings(t: RawTelemetry, city: &str) -> Result<TraceSettings, ConfigError> {
    let uri: http::Uri = t.endpoint.parse().map_err(|_| {
        ConfigError::key(
            "telemetry.endpoint",
            format!("`{}` is not a URL (expected http://host:4317)", t.endpoint),
        )
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ConfigError::key(
            "telemetry.endpoint",
            format!(
                "`{}` must be an http:// or https:// URL of an OTLP/gRPC collector",
                t.endpoint
            ),
        ));
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err(ConfigError::key(
            "telemetry.sample_ratio",
            "must be between 0.0 and 1.0",
        ));
    }
    if !(1..=1_000_000).contains(&t.queue_spans) {
        return Err(ConfigError::key(
            "telemetry.queue_spans",
            "must be between 1 and 1000000",
        ));
    }
    if !(100..=60_000).contains(&t.export_timeout_ms) {
        return Err(ConfigError::key(
            "telemetry.export_timeout_ms",
            "must be between 100 and 60000",
        ));
    }
    let service_name = t.service_name.unwrap_or_else(|| format!("tongban-{city}"));
    if service_name.trim().is_empty() {
        return Err(ConfigError::key(
            "telemetry.service_name",
            "must not be empty",
        ));
    }
    Ok(TraceSettings {
        endpoint: t.endpoint,
        sample_ratio: t.sample_ratio,
        service_name,
        queue_spans: t.queue_spans,
        export_timeout: Duration::from_millis(t.export_timeout_ms),
    })
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ConfigError::key(
            key,
            format!("`{v}` is not a socket address (expected ip:port, e.g. 127.0.0.1:7000)"),
        )
    })
}

fn validate_host_port(v: &str) -> Result<(), String> {
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(format!("`{v}` is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("`{v}` has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{v}` has no valid port")),
    }
}

/// A city id is lowercase ascii letters, digits and '-', 1 to 32 characters, starting with a
/// letter: it appears in certificate names, metadata and file names.
pub fn validate_city_id(v: &str) -> Result<(), String> {
    validate_ident(v, 32).map_err(|m| format!("city id {m}"))
}

/// Organisation ids follow the same rule as city ids (64 characters at most).
pub fn validate_org_id(v: &str) -> Result<(), String> {
    validate_ident(v, 64).map_err(|m| format!("organisation id {m}"))
}

fn validate_ident(v: &str, max: usize) -> Result<(), String> {
    tongban_proto::metadata::check_lowercase_id(v, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
city = "jinan"
[listen]
caller = "127.0.0.1:7000"
peer = "127.0.0.1:7100"
caller_plaintext = true
[storage]
data_dir = "data"
[tls]
cert = "certs/jinan/node.pem"
key = "certs/jinan/node.key"
trust_bundle = "certs/trust-bundle.toml"
[auth]
jwks_file = "certs/jinan/jwks.json"
issuer = "https://idp.jinan.tongban"
audience = "tongban:jinan"
[policy]
file = "policy-jinan.toml"
[[peers]]
city = "qingdao"
address = "127.0.0.1:8100"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(
            text,
            Path::new("/etc/tongban"),
            Path::new("node.toml"),
            |_| None,
        )
    }

    #[test]
    fn good_config_parses_with_defaults_and_resolved_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.city, "jinan");
        assert_eq!(c.data_dir, PathBuf::from("/etc/tongban/data"));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.limits.max_message_bytes, 4 * 1024 * 1024);
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn the_runtime_shape_is_read_and_checked() {
        assert_eq!(parse(GOOD).unwrap().runtime, RuntimeShape::Auto);
        let with = |body: &str| parse(&format!("{GOOD}\n[runtime]\n{body}\n"));
        assert_eq!(
            with("flavor = \"current_thread\"").unwrap().runtime,
            RuntimeShape::CurrentThread
        );
        assert_eq!(
            with("flavor = \"multi_thread\"\nworker_threads = 3")
                .unwrap()
                .runtime,
            RuntimeShape::MultiThread {
                worker_threads: Some(3)
            }
        );
        for (body, key) in [
            (
                "flavor = \"multi_thread\"\nworker_threads = 0",
                "runtime.worker_threads",
            ),
            ("worker_threads = 2", "runtime.worker_threads"),
            (
                "flavor = \"current_thread\"\nworker_threads = 2",
                "runtime.worker_threads",
            ),
            ("flavor = \"fibers\"", "runtime.flavor"),
            ("lifo_slot = false", "runtime.lifo_slot"),
            (
                "flavor = \"per_core\"\nworker_threads = 2",
                "runtime.worker_threads",
            ),
        ] {
            assert_eq!(key_of(with(body).unwrap_err()), key, "{body}");
        }
        // Auto: one thread on one core, a pool of one worker per core on more.
        assert_eq!(RuntimeShape::Auto.resolve(1), RuntimeShape::CurrentThread);
        assert_eq!(
            RuntimeShape::Auto.resolve(4),
            RuntimeShape::MultiThread {
                worker_threads: None
            }
        );
        assert_eq!(
            RuntimeShape::CurrentThread.resolve(4),
            RuntimeShape::CurrentThread
        );
        assert_eq!(
            with("flavor = \"per_core\"").unwrap().runtime,
            RuntimeShape::PerCore
        );
        assert_eq!(RuntimeShape::PerCore.resolve(4), RuntimeShape::PerCore);
        assert_eq!(
            RuntimeShape::PerCore.resolve(1),
            RuntimeShape::CurrentThread
        );
    }

    #[test]
    fn a_peer_city_lists_one_address_or_its_replicas() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.peers[0].addresses(), vec!["127.0.0.1:8100".to_string()]);
        let list = GOOD.replacen(
            "address = \"127.0.0.1:8100\"",
            "addresses = [\"127.0.0.1:8100\", \"127.0.0.1:8200\"]",
            1,
        );
        let c = parse(&list).unwrap();
        assert_eq!(c.peers[0].address, "127.0.0.1:8100");
        assert_eq!(c.peers[0].alternates, vec!["127.0.0.1:8200".to_string()]);
        let both = GOOD.replacen(
            "address = \"127.0.0.1:8100\"",
            "address = \"127.0.0.1:8100\"\naddresses = [\"127.0.0.1:8200\"]",
            1,
        );
        assert_eq!(key_of(parse(&both).unwrap_err()), "peers[0].addresses");
        let neither = GOOD.replacen("address = \"127.0.0.1:8100\"", "", 1);
        assert_eq!(key_of(parse(&neither).unwrap_err()), "peers[0].address");
        let bad = GOOD.replacen(
            "address = \"127.0.0.1:8100\"",
            "addresses = [\"127.0.0.1:8100\", \"nowhere\"]",
            1,
        );
        assert_eq!(key_of(parse(&bad).unwrap_err()), "peers[0].addresses[1]");
    }

    #[test]
    fn the_shared_store_is_sled_unless_etcd_is_configured() {
        use crate::store::SharedBackend;
        assert_eq!(parse(GOOD).unwrap().shared_store, SharedBackend::Sled);
        let with = |storage: &str| {
            GOOD.replacen(
                "[storage]\ndata_dir = \"data\"",
                &format!("[storage]\ndata_dir = \"data\"\n{storage}"),
                1,
            )
        };
        let cases = [
            ("backend = \"etcd\"", "storage.etcd"),
            ("backend = \"redis\"", "storage.backend"),
            (
                "[storage.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]",
                "storage.etcd",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(key_of(parse(&with(text)).unwrap_err()), key, "{text}");
        }
        let etcd = |rest: &str| {
            with(&format!(
                "backend = \"etcd\"\n[storage.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n{rest}"
            ))
        };
        if crate::store::ETCD_BUILT_IN {
            let SharedBackend::Etcd {
                endpoints,
                prefix,
                timeout,
                tls,
            } = parse(&etcd("")).unwrap().shared_store
            else {
                panic!("not etcd")
            };
            assert_eq!(endpoints, vec!["http://127.0.0.1:2379".to_string()]);
            assert_eq!(prefix, "/tongban/jinan/");
            assert_eq!(timeout, Duration::from_secs(2));
            assert_eq!(tls, None);
            assert_eq!(
                key_of(parse(&etcd("prefix = \"/tongban/jinan\"")).unwrap_err()),
                "storage.etcd.prefix"
            );
            // TLS: https endpoints with the CA's file, and a client certificate with its key.
            let dir = tempfile::tempdir().unwrap();
            let pem = dir.path().join("ca.pem");
            std::fs::write(
                &pem,
                "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
            )
            .unwrap();
            let text = dir.path().join("text.txt");
            std::fs::write(&text, "not a certificate").unwrap();
            let tls_with = |endpoint: &str, rest: &str| {
                with(&format!(
                    "backend = \"etcd\"\n[storage.etcd]\nendpoints = [\"{endpoint}\"]\n{rest}"
                ))
            };
            let p = pem.display().to_string();
            let both = format!("ca_file = \"{p}\"\ncert_file = \"{p}\"\nkey_file = \"{p}\"");
            let SharedBackend::Etcd { tls, .. } = parse(&tls_with("https://127.0.0.1:2379", &both))
                .unwrap()
                .shared_store
            else {
                panic!("not etcd")
            };
            assert_eq!(
                tls,
                Some(crate::store::EtcdTls {
                    ca: pem.clone(),
                    client: Some((pem.clone(), pem.clone())),
                })
            );
            for (endpoint, rest, key) in [
                (
                    "http://127.0.0.1:2379",
                    format!("ca_file = \"{p}\""),
                    "storage.etcd.endpoints[0]",
                ),
                (
                    "https://127.0.0.1:2379",
                    format!("ca_file = \"{p}\"\ncert_file = \"{p}\""),
                    "storage.etcd.key_file",
                ),
                (
                    "https://127.0.0.1:2379",
                    format!("cert_file = \"{p}\"\nkey_file = \"{p}\""),
                    "storage.etcd.ca_file",
                ),
                (
                    "https://127.0.0.1:2379",
                    "ca_file = \"/nowhere/ca.pem\"".to_string(),
                    "storage.etcd.ca_file",
                ),
                (
                    "https://127.0.0.1:2379",
                    format!("ca_file = \"{}\"", text.display()),
                    "storage.etcd.ca_file",
                ),
            ] {
                let e = parse(&tls_with(endpoint, &rest)).unwrap_err();
                assert_eq!(key_of(e), key, "{endpoint} {rest}");
            }
            let https = with(
                "backend = \"etcd\"\n[storage.etcd]\nendpoints = [\"https://127.0.0.1:2379\"]",
            );
            assert_eq!(
                key_of(parse(&https).unwrap_err()),
                "storage.etcd.endpoints[0]"
            );
        } else {
            assert_eq!(key_of(parse(&etcd("")).unwrap_err()), "storage.backend");
        }
    }

    #[test]
    fn web_listener_and_origins() {
        assert!(
            parse(GOOD).unwrap().web.is_none(),
            "no web listener by default"
        );
        let with = |origins: &str| {
            GOOD.replacen(
                "caller_plaintext = true",
                "caller_plaintext = true\nweb = \"127.0.0.1:7080\"",
                1,
            ) + &format!("\n[web]\nallowed_origins = [{origins}]\n")
        };
        let w = parse(&with(
            "\"http://127.0.0.1:8080\", \"https://portal.jinan.gov.cn\"",
        ))
        .unwrap()
        .web
        .unwrap();
        assert_eq!(w.allowed_origins.len(), 2);
        for bad in [
            "\"*\"",
            "\"https://*.gov.cn\"",
            "\"portal.jinan\"",
            "\"https://a.cn/portal\"",
            "\"https://a.cn/\"",
            "\"ftp://a.cn\"",
        ] {
            assert_eq!(
                key_of(parse(&with(bad)).unwrap_err()),
                "web.allowed_origins[0]",
                "{bad}"
            );
        }
        let orphan = format!("{GOOD}\n[web]\nallowed_origins = []\n");
        assert_eq!(key_of(parse(&orphan).unwrap_err()), "listen.web");
    }

    #[test]
    fn telemetry_and_admin_listener() {
        let c = parse(GOOD).unwrap();
        assert!(c.telemetry.is_none(), "no export without [telemetry]");
        assert_eq!(c.admin_addr, DEFAULT_ADMIN_ADDR.parse().unwrap());
        assert!(c.admin_addr.ip().is_loopback());
        let with = format!(
            "{GOOD}\n[telemetry]\nendpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 0.25\n"
        );
        let t = parse(&with).unwrap().telemetry.unwrap();
        assert_eq!(t.service_name, "tongban-jinan");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.queue_spans, TraceSettings::DEFAULT_QUEUE_SPANS);
        let bad = [
            ("endpoint = \"127.0.0.1:4317\"", "telemetry.endpoint"),
            ("endpoint = \"grpc://collector:4317\"", "telemetry.endpoint"),
            (
                "endpoint = \"http://c:4317\"\nsample_ratio = 1.5",
                "telemetry.sample_ratio",
            ),
            (
                "endpoint = \"http://c:4317\"\nqueue_spans = 0",
                "telemetry.queue_spans",
            ),
            (
                "endpoint = \"http://c:4317\"\nexport_timeout_ms = 10",
                "telemetry.export_timeout_ms",
            ),
            (
                "endpoint = \"http://c:4317\"\nservice_name = \" \"",
                "telemetry.service_name",
            ),
        ];
        for (section, key) in bad {
            let text = format!("{GOOD}\n[telemetry]\n{section}\n");
            assert_eq!(key_of(parse(&text).unwrap_err()), key, "case {section}");
        }
        let clash = GOOD.replacen(
            "caller_plaintext = true",
            "caller_plaintext = true\nadmin = \"127.0.0.1:7000\"",
            1,
        );
        assert_eq!(key_of(parse(&clash).unwrap_err()), "listen.admin");
        let nowhere = GOOD.replacen(
            "caller_plaintext = true",
            "caller_plaintext = true\nadmin = \"loopback\"",
            1,
        );
        assert_eq!(key_of(parse(&nowhere).unwrap_err()), "listen.admin");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("city = \"jinan\"", "city = \"Jinan\"", "city"),
            (
                "caller = \"127.0.0.1:7000\"",
                "caller = \"nowhere\"",
                "listen.caller",
            ),
            (
                "address = \"127.0.0.1:8100\"",
                "address = \"127.0.0.1\"",
                "peers[0].address",
            ),
            ("city = \"qingdao\"", "city = \"jinan\"", "peers[0].city"),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_eq!(key_of(parse(&text).unwrap_err()), key, "case {to}");
        }
        let zero = format!("{GOOD}\n[limits]\nmax_message_bytes = 0\n");
        assert_eq!(
            key_of(parse(&zero).unwrap_err()),
            "limits.max_message_bytes"
        );
        for (audit, key) in [
            ("anchor = \"maybe\"", "audit.anchor"),
            ("anchor_wait_s = 0", "audit.anchor_wait_s"),
            ("handoff = \"thread\"", "audit.handoff"),
            (
                "durability = \"batch\"\nhandoff = \"leader\"",
                "audit.handoff",
            ),
        ] {
            let text = format!("{GOOD}\n[audit]\n{audit}\n");
            assert_eq!(key_of(parse(&text).unwrap_err()), key, "{audit}");
        }
        assert!(!parse(GOOD).unwrap().audit.leader_handoff);
        let leader = parse(&format!("{GOOD}\n[audit]\nhandoff = \"leader\"\n")).unwrap();
        assert!(leader.audit.leader_handoff);
        let serve = parse(&format!("{GOOD}\n[audit]\nanchor = \"serve\"\n")).unwrap();
        assert_eq!(serve.audit.anchor, AnchorPolicy::Serve);
        assert_eq!(
            parse(GOOD).unwrap().audit.anchor,
            AnchorPolicy::Wait(Duration::from_secs(60))
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_syntax_errors_naming_the_key() {
        let text = format!("{GOOD}\n[limits]\nmax_mesage_bytes = 1\n");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("max_mesage_bytes"), "{msg}");
        let text = GOOD.replace("city = \"jinan\"\n", "");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("city"), "{msg}");
    }

    #[test]
    fn the_deploy_examples_parse() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for city in ["jinan", "qingdao"] {
            let c = NodeConfig::load(&deploy.join(format!("{city}.toml"))).unwrap();
            assert_eq!(c.city, city);
            assert_eq!(c.peers.len(), 1);
            // Traces on, and a fixed admin port for Prometheus, in the examples.
            assert!(c.telemetry.is_some());
            assert_ne!(c.admin_addr.port(), 0);
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = NodeConfig::parse(GOOD, Path::new("/x"), Path::new("n.toml"), |k| {
            (k == "TONGBAN_LISTEN_CALLER").then(|| "127.0.0.1:9999".to_string())
        })
        .unwrap();
        assert_eq!(c.caller_addr.port(), 9999);
    }
}
