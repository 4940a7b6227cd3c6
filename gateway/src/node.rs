//! Wiring of one node: load what the config names (before any port is bound), bind, start the
//! listeners and the peer sync tasks, and shut everything down on request.

use crate::audit::change::Change;
use crate::config::AnchorPolicy;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tongban_proto::audit::v1::ChangeKind;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tongban_proto::federation::v1::federation_server::FederationServer;
use tongban_proto::registry::v1::registry_server::RegistryServer;
use tonic::service::Routes;

use crate::assertion::{self, ReplayCache};
use crate::audit::api::AuditApi;
use crate::audit::log::{Durability, Handoff, LogOptions};
use crate::audit::Auditor;
use crate::auth::{AuthSettings, Authenticator, JwksSource};
use crate::catalog::{Catalog, Publisher, Snapshot};
use crate::config::NodeConfig;
use crate::consent::{ConsentApi, ConsentStore};
use crate::federation::{FederationApi, Peer, PeerSync};
use crate::jwks_fetch::JwksUrl;
use crate::policy::PolicyStore;
use crate::proxy::Proxy;
use crate::proxy::TrustChecks;
use crate::ratelimit::RateLimiter;
use crate::registry::{Registry, RegistryError};
use crate::registry_api::RegistryApi;
use crate::server::{self, Side};
use crate::store::LocalStore;
use crate::subject::Pseudonymizer;
use crate::trust::{NodeIdentity, TrustBundle, TrustError};
use crate::upstream::{Endpoint, Keepalive};
use tongban_proto::admin::v1::admin_server::AdminServer;
use tongban_proto::audit::v1::audit_server::AuditServer;
use tongban_proto::consent::v1::consent_server::ConsentServer;
use tongban_telemetry::NodeMetrics;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot open the store in {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("audit.tsa.url: {0}")]
    Tsa(String),
    #[error("peer `{0}` is not in the trust bundle")]
    UnknownPeer(String),
    #[error("auth.jwks_file: {0}")]
    Jwks(#[from] crate::auth::JwksError),
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    SubjectKey(#[from] crate::subject::SubjectKeyError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::log::AuditError),
}

impl NodeError {
    /// sysexits: 64 for anything the config names wrongly, 74 for i/o, 70 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::Trust(_)
            | NodeError::UnknownPeer(_)
            | NodeError::Jwks(_)
            | NodeError::Policy(_)
            | NodeError::Tsa(_) => 64,
            NodeError::Store { .. } | NodeError::Bind { .. } | NodeError::SubjectKey(_) => 74,
            NodeError::Registry(_) | NodeError::Reflection(_) => 70,
            // A log that does not verify: the node refuses to write on top of it.
            NodeError::Audit(crate::audit::log::AuditError::Corrupt { .. }) => 65,
            NodeError::Audit(_) => 74,
        }
    }
}

/// The listening sockets of a node.
pub struct Listeners {
    pub caller: TcpListener,
    pub peer: TcpListener,
    pub admin: TcpListener,
    /// The web listener (`listen.web`), when configured.
    pub web: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &NodeConfig) -> Result<Listeners, NodeError> {
        let bind = |key, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { key, addr, source })
        };
        Ok(Listeners {
            caller: bind("listen.caller", config.caller_addr).await?,
            peer: bind("listen.peer", config.peer_addr).await?,
            admin: bind("listen.admin", config.admin_addr).await?,
            web: match &config.web {
                Some(w) => Some(bind("listen.web", w.addr).await?),
                None => None,
            },
        })
    }
}

/// A node whose config, certificates and store are loaded, not yet listening.
pub struct PreparedNode {
    config: NodeConfig,
    /// The city's shared store and this node's snapshot of it.
    shared: (
        Arc<dyn crate::store::kv::KvStore>,
        crate::store::kv::Snapshot,
    ),
    bundle: TrustBundle,
    identity: Arc<NodeIdentity>,
    registry: Registry,
    consents: ConsentStore,
    checks: TrustChecks,
    caller_tls: Option<Arc<rustls::ServerConfig>>,
    auditor: Arc<Auditor>,
    metrics: Arc<NodeMetrics>,
    spread: server::Spread,
}

impl PreparedNode {
    /// Spreads the connections of the caller and peer listeners over `runtimes` (one
    /// current-thread runtime per core: `[runtime] flavor = "per_core"`).
    pub fn with_connection_runtimes(mut self, runtimes: Vec<tokio::runtime::Handle>) -> Self {
        self.spread = server::Spread::new(runtimes);
        self
    }

    /// Loads the trust bundle and node identity and opens the store. Nothing is bound yet,
    /// so a bad certificate or data dir is reported before any port is taken.
    pub async fn prepare(config: NodeConfig) -> Result<PreparedNode, NodeError> {
        let bundle = TrustBundle::load(&config.trust_bundle_path)?;
        if !bundle.contains(&config.city) {
            return Err(TrustError::Invalid {
                what: "trust bundle",
                message: format!("does not list this node's city `{}`", config.city),
            }
            .into());
        }
        for p in &config.peers {
            if !bundle.contains(&p.city) {
                return Err(NodeError::UnknownPeer(p.city.clone()));
            }
        }
        let identity = Arc::new(NodeIdentity::load(
            &config.city,
            &config.cert_path,
            &config.key_path,
            &bundle,
        )?);
        let store = config.data_dir.join("state");
        let db = open_store(&store, config.store_cache_bytes).await?;
        let shared = crate::store::open_shared(&config.shared_store, &db)
            .await
            .map_err(|source| NodeError::Store {
                path: store.display().to_string(),
                source,
            })?;
        // One snapshot of the city's shared state (registry and consents together, so that
        // a catalog installed from it never pairs a version with older revocations).
        let snapshot = crate::store::kv::Snapshot::follow(shared.clone(), b"")
            .await
            .map_err(|source| NodeError::Store {
                path: store.display().to_string(),
                source,
            })?;
        let registry = Registry::open(shared.clone(), snapshot.clone());
        let caller_tls = match &config.caller_tls {
            Some(t) => Some(NodeIdentity::caller_server_config(
                &t.cert,
                &t.key,
                t.client_ca.as_deref(),
            )?),
            None => None,
        };
        let source = match (&config.auth.jwks_file, &config.auth.jwks_url) {
            (Some(f), _) => JwksSource::File(f.clone()),
            (None, Some(u)) => JwksSource::Url(
                JwksUrl::new(u, config.auth.jwks_ca_file.as_deref())
                    .map_err(|e| crate::auth::JwksError::Fetch(e.to_string()))?,
            ),
            (None, None) => {
                return Err(crate::auth::JwksError::Invalid("no jwks source".into()).into())
            }
        };
        let pseudonyms = Arc::new(match &config.secret_file {
            Some(file) => Pseudonymizer::from_source(&crate::store::ProvisionedSecret::new(file))?,
            None => Pseudonymizer::open(&config.data_dir)?,
        });
        let auth = Authenticator::new(
            AuthSettings {
                city: config.city.clone(),
                source,
                issuer: config.auth.issuer.clone(),
                audience: config.auth.audience.clone(),
                leeway: config.auth.leeway,
                refresh_interval: config.auth.refresh_interval,
                cache_entries: usize::try_from(config.limits.verified_tokens).unwrap_or(usize::MAX),
            },
            pseudonyms.clone(),
        )
        .await?;
        let checks = TrustChecks {
            auth: Arc::new(auth),
            policy: Arc::new(PolicyStore::open(&config.policy_file)?),
            signer: assertion::Signer::with_form(
                identity.key_pkcs8(),
                if config.mac_assertions {
                    assertion::Form::Mac
                } else {
                    assertion::Form::Jwt
                },
            ),
            replay: ReplayCache::new(),
            pseudonyms,
            rate: RateLimiter::new(config.limits.caller_rate_per_s, config.limits.caller_burst),
            own_key: Arc::new(crate::trust::public_key_of(&identity.chain[0])?),
            consents: crate::verified::VerifiedCache::new(
                usize::try_from(config.limits.verified_tokens).unwrap_or(usize::MAX),
            ),
        };
        let snapshot_for_replicas = snapshot.clone();
        let consents = ConsentStore::open(shared.clone(), snapshot);
        let metrics = Arc::new(NodeMetrics::new());
        checks
            .policy
            .count_reloads_in(metrics.policy_reloads.clone());
        checks
            .auth
            .count_refreshes_in(metrics.jwks_refreshes.clone());
        let opts = LogOptions {
            durability: match config.audit.batch_window {
                None => Durability::Sync,
                Some(w) => Durability::Batch(w),
            },
            handoff: if config.audit.leader_handoff {
                Handoff::Leader
            } else {
                Handoff::Writer
            },
            segment_bytes: config.audit.segment_bytes,
            metrics: metrics.audit.clone(),
        };
        let auditor = Auditor::open(&config.data_dir.join("audit"), &db, opts, identity.clone())?;
        auditor.set_replica(&config.replica);
        // The checkpoints held of peers are shared state: every replica checks a peer
        // against the newest any of them received.
        auditor
            .share_peer_checkpoints(shared.clone(), snapshot_for_replicas.clone())
            .await
            .map_err(|source| NodeError::Store {
                path: store.display().to_string(),
                source,
            })?;
        Ok(PreparedNode {
            shared: (shared, snapshot_for_replicas),
            config,
            bundle,
            identity,
            registry,
            consents,
            checks,
            caller_tls,
            auditor,
            metrics,
            spread: server::Spread::default(),
        })
    }

    /// Starts serving on `listeners`.
    pub async fn start(self, listeners: Listeners) -> Result<RunningNode, NodeError> {
        // Boxed: starting holds every part of the node at once (a large future).
        Box::pin(self.start_boxed(listeners)).await
    }

    async fn start_boxed(self, listeners: Listeners) -> Result<RunningNode, NodeError> {
        let PreparedNode {
            shared,
            config,
            bundle,
            identity,
            registry,
            consents,
            checks,
            caller_tls,
            auditor,
            metrics,
            spread,
        } = self;
        let runtime = match (
            spread.runtimes(),
            tokio::runtime::Handle::current().runtime_flavor(),
        ) {
            (n, _) if n > 1 => format!("per_core({n})"),
            (_, tokio::runtime::RuntimeFlavor::CurrentThread) => "current_thread".to_string(),
            _ if !config.runtime_lifo_slot => "multi_thread(no_lifo_slot)".to_string(),
            _ => "multi_thread".to_string(),
        };
        let caller_addr = local_addr(&listeners.caller, "listen.caller", config.caller_addr)?;
        let peer_addr = local_addr(&listeners.peer, "listen.peer", config.peer_addr)?;
        let admin_addr = local_addr(&listeners.admin, "listen.admin", config.admin_addr)?;
        let web_addr = match (&listeners.web, &config.web) {
            (Some(l), Some(w)) => Some(local_addr(l, "listen.web", w.addr)?),
            _ => None,
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        // This replica in the city's directory (for the Audit API's fan-out), reachable at
        // its caller listener on a concrete address (over TLS when it has TLS: the replicas
        // share the caller certificate and pin it).
        let replicas = crate::replicas::Replicas::new(shared.0, shared.1, &config.replica);
        let scheme = if caller_tls.is_some() {
            "https"
        } else {
            "http"
        };
        if !caller_addr.ip().is_unspecified() {
            replicas
                .announce(&format!("{scheme}://{caller_addr}"))
                .await;
        } else if !config.replica.is_empty() {
            tracing::warn!(replica = %config.replica, "replica not announced: its caller listener has no concrete address (listen on the replica's own address for the audit fan-out)");
        }
        let replica_tls = match &config.caller_tls {
            Some(t) => Some(NodeIdentity::replica_client_config(&t.cert, &t.key)?),
            None => None,
        };

        let catalog = Arc::new(Catalog::new(
            identity.clone(),
            registry.version()?,
            registry.list()?,
            consents.revocations(),
            Keepalive::of(&config.limits),
        ));
        let publisher = Arc::new(Publisher::new(registry, consents.clone(), catalog.clone()));
        publisher.follow_replicas();
        let mut peers = BTreeMap::new();
        for p in &config.peers {
            let tls = identity.peer_client_config(&bundle, &p.city)?;
            let name = bundle.node_name_of(&p.city)?;
            let connection = || {
                Endpoint::peer(&p.city, &p.addresses(), tls.clone(), name.clone())
                    .map(|e| Arc::new(e.with_keepalive(Keepalive::of(&config.limits))))
                    .map_err(|e| NodeError::UnknownPeer(format!("{}: {e}", p.city)))
            };
            let peer = Peer::new(p.city.clone(), connection()?, connection()?);
            peers.insert(p.city.clone(), Arc::new(peer));
        }

        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(tongban_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .map_err(|e| NodeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .map_err(|e| NodeError::Reflection(e.to_string()))?;

        let status = crate::status_api::StatusApi {
            city: config.city.clone(),
            started_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            operators_only: true,
            audit_writable: metrics.audit.writable.clone(),
            catalog: catalog.clone(),
            peers: peers.clone(),
            auditor: auditor.clone(),
        };
        let admin = crate::admin::Admin {
            city: config.city.clone(),
            metrics: metrics.clone(),
            catalog: catalog.clone(),
            peers: peers.clone(),
            routes: Routes::new(AdminServer::new(crate::status_api::StatusApi {
                operators_only: false,
                ..status.clone()
            }))
            .add_service(health_svc.clone())
            .prepare(),
        };
        let consent_api = ConsentApi {
            city: config.city.clone(),
            store: consents,
            pseudonyms: checks.pseudonyms.clone(),
            items: config.items.clone(),
            key: identity.jwt_signer(),
            publisher: publisher.clone(),
            auditor: auditor.clone(),
        };
        let caller_routes = Routes::new(RegistryServer::new(RegistryApi {
            city: config.city.clone(),
            publisher,
            peers: peers.clone(),
            items: config.items.clone(),
            auditor: auditor.clone(),
        }))
        .add_service(ConsentServer::new(consent_api))
        .add_service(AuditServer::new(AuditApi {
            city: config.city.clone(),
            signer: Arc::new(assertion::Signer::new(identity.key_pkcs8())),
            auditor: auditor.clone(),
            pseudonyms: checks.pseudonyms.clone(),
            peers: peers
                .iter()
                .map(|(c, p)| (c.clone(), p.control.clone()))
                .collect(),
            connect_timeout: config.limits.connect_timeout,
            replicas: replicas.clone(),
            replica_tls,
        }))
        .add_service(AdminServer::new(status.clone()))
        .add_service(health_svc.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
        let peer_routes = Routes::new(FederationServer::new(FederationApi {
            identity: identity.clone(),
            bundle: bundle.clone(),
            catalog: catalog.clone(),
            auditor: auditor.clone(),
            shutdown: shutdown.clone(),
            pseudonyms: checks.pseudonyms.clone(),
            replay: checks.replay.clone(),
        }))
        .add_service(health_svc)
        .prepare();

        // Anchored before serving: the peers' checkpoints of this log are checked as each
        // peer connects (federation); until one has, `audit.anchor` decides.
        auditor.require_anchor(matches!(config.audit.anchor, AnchorPolicy::Wait(_)));
        if config.peers.is_empty() {
            auditor.set_anchor(crate::audit::Anchor::Alone);
        }
        let anchor_status = if auditor.anchor().confirmed() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health
            .set_service_status(crate::admin::ANCHOR_HEALTH, anchor_status)
            .await;
        // What the node starts with is in its chain before it serves: itself, the catalog
        // of items and the policy, with their versions and digests.
        let policy_now = checks.policy.current();
        for change in [
            Change::new(&config.city, ChangeKind::NodeStarted, &config.city)
                .by_node()
                .version(env!("CARGO_PKG_VERSION"))
                .detail(format!(
                    "peers {}",
                    config
                        .peers
                        .iter()
                        .map(|p| p.city.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            Change::new(
                &config.city,
                ChangeKind::CatalogLoaded,
                &config.items.source,
            )
            .by_node()
            .version(&config.items.version)
            .digest(config.items.digest.clone())
            .detail(format!("federation {}", config.items.federation)),
            Change::new(
                &config.city,
                ChangeKind::PolicyLoaded,
                checks.policy.path().display().to_string(),
            )
            .by_node()
            .digest(policy_now.digest())
            .detail(format!("{} rules", policy_now.rules().len())),
        ] {
            auditor
                .record_change(change)
                .await
                .map_err(|e| NodeError::Audit(e.0))?;
        }
        let mut tasks = Vec::new();
        if let AnchorPolicy::Wait(wait) = config.audit.anchor {
            tasks.push(tokio::spawn(anchor_deadline(
                auditor.clone(),
                wait,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(record_policy_loads(
            auditor.clone(),
            checks.policy.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(record_key_rotations(
            auditor.clone(),
            checks.auth.clone(),
            shutdown.clone(),
        )));
        if let Some(repair) = auditor.repaired() {
            tracing::warn!(
                seq = repair.torn.seq,
                bytes = %format!("{}..{}", repair.torn.start, repair.torn.end),
                quarantine = %repair.quarantine.display(),
                "audit log: a torn final frame left by a crash was cut at start"
            );
        }
        tasks.push(tokio::spawn(crate::admin::watch_health(
            auditor.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::admin::serve(
            listeners.admin,
            admin,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(
            checks
                .policy
                .clone()
                .watch(config.policy_reload, shutdown.clone()),
        ));
        tasks.push(tokio::spawn(refresh_jwks(
            checks.auth.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(purge_replays(
            checks.replay.clone(),
            shutdown.clone(),
        )));
        let policy = checks.policy.clone();
        let auth = checks.auth.clone();
        let tsa = match &config.audit.tsa {
            None => None,
            Some((url, timeout)) => {
                Some(crate::audit::tsa::Tsa::new(url, *timeout).map_err(NodeError::Tsa)?)
            }
        };
        tasks.push(tokio::spawn(crate::audit::run_checkpoints(
            auditor.clone(),
            config.audit.checkpoint_every,
            config.audit.checkpoint_interval,
            tsa,
            shutdown.clone(),
        )));
        let proxy = Arc::new(Proxy {
            city: config.city.clone(),
            auditor: auditor.clone(),
            catalog: catalog.clone(),
            items: config.items.clone(),
            peers: peers.clone(),
            limits: config.limits.clone(),
            trust: checks,
            metrics: metrics.clone(),
            peer_streams: bundle
                .cities()
                .filter(|c| *c != config.city)
                .map(|c| {
                    let n =
                        usize::try_from(config.limits.max_streams_per_peer).unwrap_or(usize::MAX);
                    (c.to_string(), Arc::new(tokio::sync::Semaphore::new(n)))
                })
                .collect(),
        });
        let peer_side = Side::Peer {
            tls: tokio_rustls::TlsAcceptor::from(identity.peer_server_config(&bundle)?),
            bundle: bundle.clone(),
        };

        if let (Some(listener), Some(web)) = (listeners.web, &config.web) {
            // Browsers: the caller listener's certificate without client certificates, and
            // HTTP/1.1 beside h2.
            let tls = match &config.caller_tls {
                Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                    NodeIdentity::web_server_config(&t.cert, &t.key)?,
                )),
                None => None,
            };
            let svc = tower::ServiceBuilder::new()
                .layer(crate::web::cors(&web.allowed_origins))
                .layer(tonic_web::GrpcWebLayer::new())
                .service(crate::web::WebDispatch {
                    routes: caller_routes.clone(),
                    proxy: proxy.clone(),
                });
            tasks.push(tokio::spawn(server::serve_auto(
                listener,
                tls,
                svc,
                "web",
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(server::serve(
            listeners.caller,
            Side::Caller {
                tls: caller_tls.map(tokio_rustls::TlsAcceptor::from),
            },
            caller_routes,
            proxy.clone(),
            config.limits.clone(),
            spread.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(server::serve(
            listeners.peer,
            peer_side,
            peer_routes,
            proxy,
            config.limits.clone(),
            spread,
            shutdown.clone(),
        )));
        for peer in peers.values() {
            let sync = PeerSync {
                peer: peer.clone(),
                identity: identity.clone(),
                bundle: bundle.clone(),
                catalog: catalog.clone(),
                health: health.clone(),
                auditor: auditor.clone(),
                connect_timeout: config.limits.connect_timeout,
                retry: config.limits.catalog_retry,
                checkpoint_interval: config.audit.checkpoint_interval,
            };
            tasks.push(tokio::spawn(sync.run(shutdown.clone())));
        }
        tracing::info!(
            city = %config.city,
            caller = %caller_addr,
            peer = %peer_addr,
            admin = %admin_addr,
            web = %web_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            peers = peers.len(),
            runtime = %runtime,
            caller_assertion = %if config.mac_assertions { "mac" } else { "jwt" },
            "node started"
        );
        Ok(RunningNode {
            city: config.city,
            caller_addr,
            peer_addr,
            admin_addr,
            web_addr,
            shutdown: shutdown_tx,
            tasks,
            catalog,
            peers,
            policy,
            auth,
            auditor,
            replicas,
        })
    }
}

/// Reloads the caller JWKS every `auth.refresh_interval_s`.
async fn refresh_jwks(auth: Arc<Authenticator>, mut shutdown: watch::Receiver<bool>) {
    let every = auth.settings().refresh_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = shutdown.changed() => return,
        }
        if let Err(error) = auth.refresh().await {
            tracing::warn!(%error, "periodic jwks refresh failed; keeping the current keys");
        }
    }
}

/// With `audit.anchor = "wait"`: gives up when no peer has confirmed the audit log within
/// `wait` (the node stops: `tongban node` exits 69).
async fn anchor_deadline(
    auditor: Arc<Auditor>,
    wait: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut anchor = auditor.watch_anchor();
    let confirmed = tokio::time::timeout(wait, anchor.wait_for(|a| a.confirmed()));
    tokio::select! {
        r = confirmed => if matches!(r, Ok(Ok(_))) { return },
        _ = shutdown.changed() => return,
    }
    let why = format!(
        "no peer confirmed this node's audit log within {} s of its start (audit.anchor = \"wait\", audit.anchor_wait_s): start a peer, or set audit.anchor = \"serve\" to serve with the anchor unchecked",
        wait.as_secs()
    );
    tracing::error!(reason = %why, "giving up waiting for the audit anchor");
    auditor.set_anchor(crate::audit::Anchor::GaveUp(why));
}

/// Records every policy the node installs after its start (the file changed, or a reload).
async fn record_policy_loads(
    auditor: Arc<Auditor>,
    policy: Arc<PolicyStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut loads = policy.subscribe();
    let city = auditor.city.clone();
    loop {
        tokio::select! {
            r = loads.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let now = policy.current();
        let change = Change::new(
            &city,
            ChangeKind::PolicyLoaded,
            policy.path().display().to_string(),
        )
        .by_node()
        .version(*loads.borrow_and_update())
        .digest(now.digest())
        .detail(format!("{} rules", now.rules().len()));
        if let Err(error) = auditor.record_change(change).await {
            tracing::error!(%error, "the policy reload could not be recorded");
        }
    }
}

/// Records every change of the keys that verify callers' tokens.
async fn record_key_rotations(
    auditor: Arc<Auditor>,
    auth: Arc<Authenticator>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rotations = auth.subscribe_rotations();
    let city = auditor.city.clone();
    let source = match &auth.settings().source {
        JwksSource::File(p) => p.display().to_string(),
        JwksSource::Url(u) => u.url.to_string(),
    };
    loop {
        tokio::select! {
            r = rotations.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        rotations.borrow_and_update();
        let ids = auth.key_ids().join(",");
        let change = Change::new(&city, ChangeKind::KeysRotated, &source)
            .by_node()
            .content(ids.as_bytes())
            .detail(format!("key ids {ids}"));
        if let Err(error) = auditor.record_change(change).await {
            tracing::error!(%error, "the key rotation could not be recorded");
        }
    }
}

/// Forgets expired caller-assertion ids (often: the cache is in memory).
async fn purge_replays(replay: ReplayCache, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {},
            _ = shutdown.changed() => return,
        }
        replay.purge();
    }
}

/// Opens the node's store; a previous instance still closing it gets a bounded wait.
async fn open_store(path: &std::path::Path, cache_bytes: u64) -> Result<LocalStore, NodeError> {
    LocalStore::open_with_cache(path, cache_bytes)
        .await
        .map_err(|source| NodeError::Store {
            path: path.display().to_string(),
            source,
        })
}

fn local_addr(
    l: &TcpListener,
    key: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, NodeError> {
    l.local_addr()
        .map_err(|source| NodeError::Bind { key, addr, source })
}

/// A running node.
pub struct RunningNode {
    pub city: String,
    pub caller_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Metrics, status and health for operators.
    pub admin_addr: SocketAddr,
    /// gRPC-Web for browsers, when configured.
    pub web_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    catalog: Arc<Catalog>,
    peers: BTreeMap<String, Arc<Peer>>,
    policy: Arc<PolicyStore>,
    auth: Arc<Authenticator>,
    auditor: Arc<Auditor>,
    replicas: crate::replicas::Replicas,
}

impl RunningNode {
    /// This node's audit.
    pub fn auditor(&self) -> &Arc<Auditor> {
        &self.auditor
    }

    /// Changes every time a new policy is installed (by the file watcher or a reload).
    pub fn policy_changes(&self) -> watch::Receiver<u64> {
        self.policy.subscribe()
    }

    /// Re-reads the policy file now (an operator's file edit is also picked up by itself).
    pub fn reload_policy(&self) -> Result<usize, crate::policy::PolicyError> {
        self.policy.reload()
    }

    /// Re-reads the caller JWKS now.
    pub async fn refresh_jwks(&self) -> Result<usize, crate::auth::JwksError> {
        self.auth.refresh().await
    }

    /// Starts a node from a config: prepare, bind, start.
    pub async fn launch(config: NodeConfig) -> Result<RunningNode, NodeError> {
        let prepared = PreparedNode::prepare(config).await?;
        let listeners = Listeners::bind(&prepared.config).await?;
        prepared.start(listeners).await
    }

    /// The current catalog snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.catalog.snapshot()
    }

    /// Whether the catalog stream with peer `city` is up.
    pub fn peer_up(&self, city: &str) -> bool {
        self.peers.get(city).is_some_and(|p| p.is_up())
    }

    /// Waits until the catalog satisfies `pred`, or `timeout` passes (false then). Driven by
    /// catalog change notifications, not polling.
    pub async fn wait_for_catalog(
        &self,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> bool {
        let mut rx = self.catalog.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if pred(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Asks the node to stop without waiting for it (see [`Self::shutdown`]).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops accepting, lets open calls finish (bounded), and waits for every task.
    pub async fn shutdown(self) {
        // Out of the city's directory first: the other replicas stop asking this one.
        self.replicas.withdraw().await;
        self.begin_shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
        // The stop is the chain's last record, and the last checkpoint covers it.
        let stopped = Change::new(&self.city, ChangeKind::NodeStopped, &self.city).by_node();
        if let Err(error) = self.auditor.record_change(stopped).await {
            tracing::error!(%error, "the stop could not be recorded");
        }
        if let Err(error) = self.auditor.checkpoint_now() {
            tracing::error!(%error, "the final audit checkpoint failed");
        }
        tracing::info!(city = %self.city, "node stopped");
    }
}
