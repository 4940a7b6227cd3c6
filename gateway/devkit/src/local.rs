//! A whole federation on loopback in one process: fresh certificates, one node and one
//! cross-city provider per city, every listener bound on `127.0.0.1:0` before anything
//! starts. The demo runs on it, and so do the integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probe::Provider;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tongban_gateway::consent::PORTAL_ROLE;
use tongban_gateway::registry_api::ADMIN_ROLE;
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::{GrantRequest, RevokeRequest};
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::certs::{self, Generated};
use crate::idp::{self, DevIdp};
use tongban_gateway::config::{AuthConfig, Limits, NodeConfig, PeerConfig};
use tongban_gateway::node::{Listeners, PreparedNode, RunningNode};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Adds `authorization: Bearer <token>` to every call of a client.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer, LocalError> {
        tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .map(Bearer)
            .map_err(|_| LocalError::Other("token is not ascii".into()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Full name of the reference provider's service.
pub const CROSSCITY_SERVICE: &str = "tongban.crosscity.v1.CrossCityService";

/// A server task on loopback and the switch that stops it.
pub struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    /// Spawns `serve(shutdown)`; [`Served::stop`] resolves `shutdown` and waits for the end.
    pub fn spawn<F, E>(what: &'static str, serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Served
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, rx) = oneshot::channel::<()>();
        let fut = serve(rx);
        let task = tokio::spawn(async move {
            if let Err(error) = fut.await {
                tracing::error!(%error, "{what} stopped with an error");
            }
        });
        Served {
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` with `handle` (the dev sign-in and the portal's
/// files) until stopped.
pub fn serve_http<F, Fut>(what: &'static str, listener: TcpListener, handle: F) -> Served
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    Served::spawn(what, move |stopped| async move {
        // The node's own HTTP/1.1 + HTTP/2 serving loop, stopped by `stopped`.
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let svc = tower::service_fn(move |req| {
            let fut = handle(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        tokio::spawn(async move {
            let _ = stopped.await;
            let _ = stop.send(true);
        });
        tongban_gateway::server::serve_auto(listener, None, svc, what, shutdown).await;
        Ok::<(), std::convert::Infallible>(())
    })
}

/// A probe provider running on loopback.
pub struct RunningProvider {
    pub provider: Provider,
    pub addr: SocketAddr,
    served: Served,
}

impl RunningProvider {
    /// Starts a probe provider of `city` on a fresh loopback port.
    pub async fn start(city: &str) -> std::io::Result<RunningProvider> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let provider = Provider::new(city);
        let p = provider.clone();
        let served = Served::spawn("provider", |rx| {
            p.serve(listener, async {
                let _ = rx.await;
            })
        });
        Ok(RunningProvider {
            provider,
            addr,
            served,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

/// One city of a local federation.
pub struct LocalCity {
    pub city: String,
    pub config: NodeConfig,
    pub node: Option<RunningNode>,
    pub provider: RunningProvider,
}

impl LocalCity {
    /// The running node (panics in tests only if the test stopped it and forgot).
    pub fn node(&self) -> Option<&RunningNode> {
        self.node.as_ref()
    }

    /// URL of the node's caller listener, for clients.
    pub fn caller_url(&self) -> String {
        format!("http://{}", self.config.caller_addr)
    }
}

/// A federation of cities on loopback.
pub struct LocalFederation {
    pub root: PathBuf,
    pub certs: Generated,
    pub cities: Vec<LocalCity>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Certs(#[from] certs::CertsError),
    #[error(transparent)]
    Node(#[from] tongban_gateway::node::NodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no city `{0}` in this federation")]
    NoCity(String),
    #[error("{0}")]
    Other(String),
    #[error("registry call failed: {0}")]
    Registry(#[from] tonic::Status),
    #[error("cannot connect to a node: {0}")]
    Connect(#[from] tonic::transport::Error),
}

impl LocalFederation {
    /// Generates certificates under `root` and starts one node and one provider per city,
    /// each node peering with every other.
    pub async fn start(
        root: &Path,
        cities: &[&str],
        limits: Limits,
    ) -> Result<LocalFederation, LocalError> {
        Self::start_with_keys(
            root,
            cities,
            limits,
            tongban_gateway::trust::NodeKeyType::Ed25519,
        )
        .await
    }

    /// [`Self::start`] with node certificates of `kind`.
    pub async fn start_with_keys(
        root: &Path,
        cities: &[&str],
        limits: Limits,
        kind: tongban_gateway::trust::NodeKeyType,
    ) -> Result<LocalFederation, LocalError> {
        Self::start_inner(root, cities, limits, kind, &[]).await
    }

    /// [`Self::start`], letting pages of `origins` (a portal) call the nodes' web
    /// listeners from a browser.
    pub async fn start_for_browsers(
        root: &Path,
        cities: &[&str],
        limits: Limits,
        origins: &[String],
    ) -> Result<LocalFederation, LocalError> {
        Self::start_inner(
            root,
            cities,
            limits,
            tongban_gateway::trust::NodeKeyType::Ed25519,
            origins,
        )
        .await
    }

    async fn start_inner(
        root: &Path,
        cities: &[&str],
        limits: Limits,
        kind: tongban_gateway::trust::NodeKeyType,
        origins: &[String],
    ) -> Result<LocalFederation, LocalError> {
        let names: Vec<String> = cities.iter().map(|c| c.to_string()).collect();
        let certs = certs::init_with(&root.join("certs"), &names, false, kind)?;
        let mut bound = Vec::new();
        for _ in cities {
            let caller = TcpListener::bind("127.0.0.1:0").await?;
            let peer = TcpListener::bind("127.0.0.1:0").await?;
            let admin = TcpListener::bind("127.0.0.1:0").await?;
            let web = TcpListener::bind("127.0.0.1:0").await?;
            bound.push(Listeners {
                caller,
                peer,
                admin,
                web: Some(web),
            });
        }
        let mut peer_addrs = Vec::new();
        for l in &bound {
            peer_addrs.push(l.peer.local_addr()?);
        }
        let mut out = Vec::new();
        for (i, listeners) in bound.into_iter().enumerate() {
            let city = names[i].clone();
            let peers = names
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, c)| PeerConfig {
                    city: c.clone(),
                    address: peer_addrs[j].to_string(),
                    alternates: Vec::new(),
                })
                .collect();
            let mut config = node_config(
                &certs,
                &city,
                root,
                (listeners.caller.local_addr()?, listeners.peer.local_addr()?),
                peers,
                limits.clone(),
            )?;
            if let Some(web) = config.web.as_mut() {
                web.allowed_origins = origins.to_vec();
            }
            let provider = RunningProvider::start(&city).await?;
            let node = PreparedNode::prepare(config.clone())
                .await?
                .start(listeners)
                .await?;
            out.push(LocalCity {
                city,
                config,
                node: Some(node),
                provider,
            });
        }
        Ok(LocalFederation {
            root: root.to_path_buf(),
            certs,
            cities: out,
        })
    }

    pub fn city(&self, city: &str) -> Result<&LocalCity, LocalError> {
        self.cities
            .iter()
            .find(|c| c.city == city)
            .ok_or_else(|| LocalError::NoCity(city.to_string()))
    }

    fn city_mut(&mut self, city: &str) -> Result<&mut LocalCity, LocalError> {
        self.cities
            .iter_mut()
            .find(|c| c.city == city)
            .ok_or_else(|| LocalError::NoCity(city.to_string()))
    }

    /// The dev identity provider of `city`.
    pub fn idp(&self, city: &str) -> Result<DevIdp, LocalError> {
        let files = self
            .certs
            .city(city)
            .ok_or_else(|| LocalError::NoCity(city.to_string()))?;
        DevIdp::load(city, &idp::kid(city, 1), &files.idp_key)
            .map_err(|e| LocalError::Other(e.to_string()))
    }

    /// A bearer token of `org` of `city`, valid for an hour.
    pub fn token(&self, city: &str, org: &str) -> Result<String, LocalError> {
        dev_token(&self.certs, city, org)
    }

    /// A Registry client of `city`'s node acting as `org` of that city.
    pub async fn registry(
        &self,
        city: &str,
        org: &str,
    ) -> Result<RegistryClient<InterceptedService<Channel, Bearer>>, LocalError> {
        let bearer = Bearer::new(&self.token(city, org)?)?;
        Ok(RegistryClient::with_interceptor(
            self.channel(city).await?,
            bearer,
        ))
    }

    /// A Registry client of `city`'s node with the `registry-admin` role.
    pub async fn admin_registry(
        &self,
        city: &str,
    ) -> Result<RegistryClient<InterceptedService<Channel, Bearer>>, LocalError> {
        let token = dev_token_with_roles(&self.certs, city, "ops", &[ADMIN_ROLE])?;
        Ok(RegistryClient::with_interceptor(
            self.channel(city).await?,
            Bearer::new(&token)?,
        ))
    }

    /// A channel to `city`'s caller listener.
    pub async fn channel(&self, city: &str) -> Result<Channel, LocalError> {
        let url = self.city(city)?.caller_url();
        Ok(Channel::from_shared(url)
            .map_err(|e| LocalError::Other(e.to_string()))?
            .connect()
            .await?)
    }

    /// Registers the city's reference provider as `organisation` through the Registry API;
    /// with `personal_data`, every call needs the subject's consent.
    pub async fn register_crosscity(
        &self,
        city: &str,
        organisation: &str,
        catalog_codes: &[&str],
        personal_data: bool,
    ) -> Result<u64, LocalError> {
        let endpoint = self.city(city)?.provider.url();
        let mut client = self.registry(city, organisation).await?;
        let resp = client
            .register_service(RegisterServiceRequest {
                registration: Some(ServiceRegistration {
                    organisation: organisation.to_string(),
                    service: CROSSCITY_SERVICE.to_string(),
                    endpoints: vec![endpoint],
                    catalog_codes: catalog_codes.iter().map(|c| c.to_string()).collect(),
                    personal_data,
                    description: format!("cross-city services of {city}"),
                }),
            })
            .await?;
        Ok(resp.into_inner().catalog_version)
    }

    /// Grants a consent on `home`'s node through its Consent API, as that city's consent
    /// portal (`home/portal`, role `consent-portal`), for the catalog `items` (none: the
    /// whole service, for calls that name no item). Returns (consent id, token).
    pub async fn grant_consent(
        &self,
        home: &str,
        subject: &str,
        grantee: &str,
        target_city: &str,
        purpose: &str,
        items: &[&str],
    ) -> Result<(String, String), LocalError> {
        self.grant_consent_for(
            CROSSCITY_SERVICE,
            home,
            subject,
            grantee,
            (target_city, purpose),
            items,
        )
        .await
    }

    /// [`Self::grant_consent`] for `service`; `scope` is (target city, purpose).
    pub async fn grant_consent_for(
        &self,
        service: &str,
        home: &str,
        subject: &str,
        grantee: &str,
        (target_city, purpose): (&str, &str),
        items: &[&str],
    ) -> Result<(String, String), LocalError> {
        let mut client = ConsentClient::new(self.channel(home).await?);
        let mut req = tonic::Request::new(GrantRequest {
            subject: subject.to_string(),
            grantee: grantee.to_string(),
            target_city: target_city.to_string(),
            service: service.to_string(),
            purpose: purpose.to_string(),
            expires_at_ms: now_ms() + 24 * 3600 * 1000,
            items: items.iter().map(|i| i.to_string()).collect(),
        });
        self.as_portal(home, &mut req)?;
        let r = client.grant(req).await?.into_inner();
        let id = r.consent.map(|c| c.id).unwrap_or_default();
        Ok((id, r.token))
    }

    /// Revokes a consent on `home`'s node, as its consent portal.
    pub async fn revoke_consent(
        &self,
        home: &str,
        subject: &str,
        id: &str,
    ) -> Result<(), LocalError> {
        let mut client = ConsentClient::new(self.channel(home).await?);
        let mut req = tonic::Request::new(RevokeRequest {
            subject: subject.to_string(),
            id: id.to_string(),
        });
        self.as_portal(home, &mut req)?;
        client.revoke(req).await?;
        Ok(())
    }

    fn as_portal<T>(&self, city: &str, req: &mut tonic::Request<T>) -> Result<(), LocalError> {
        let token = dev_token_with_roles(&self.certs, city, "portal", &[PORTAL_ROLE])?;
        let v = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| LocalError::Other(e.to_string()))?;
        req.metadata_mut().insert("authorization", v);
        Ok(())
    }

    /// Waits until every node holds a catalog from every peer in which `pred` holds.
    pub async fn wait_until_federated(
        &self,
        timeout: Duration,
        pred: impl Fn(&str, &tongban_gateway::catalog::PeerCatalog) -> bool + Copy,
    ) -> bool {
        for c in &self.cities {
            let Some(node) = &c.node else { continue };
            let others: Vec<String> = self
                .cities
                .iter()
                .filter(|o| o.city != c.city && o.node.is_some())
                .map(|o| o.city.clone())
                .collect();
            let ok = node
                .wait_for_catalog(timeout, |s| {
                    others
                        .iter()
                        .all(|o| s.peers.get(o).is_some_and(|p| pred(o, p)))
                })
                .await;
            if !ok {
                return false;
            }
        }
        true
    }

    /// Stops `city`'s node (its provider keeps running).
    pub async fn stop_node(&mut self, city: &str) -> Result<(), LocalError> {
        if let Some(node) = self.city_mut(city)?.node.take() {
            node.shutdown().await;
        }
        Ok(())
    }

    /// Starts `city`'s node again on the same addresses and data directory.
    pub async fn restart_node(&mut self, city: &str) -> Result<(), LocalError> {
        let c = self.city_mut(city)?;
        let prepared = PreparedNode::prepare(c.config.clone()).await?;
        let listeners = Listeners::bind(&c.config).await?;
        c.node = Some(prepared.start(listeners).await?);
        Ok(())
    }

    /// Stops every node and provider.
    pub async fn shutdown(self) {
        // Signal every node first, so none reports its peers as lost while they all stop.
        for c in &self.cities {
            if let Some(n) = &c.node {
                n.begin_shutdown();
            }
        }
        for c in self.cities {
            if let Some(n) = c.node {
                n.shutdown().await;
            }
            c.provider.stop().await;
        }
    }
}

/// The config of `city`'s node on loopback, with data under `root/<city>`, its dev identity
/// provider's JWKS, and the [`open_policy`] of the federation written to
/// `root/<city>/policy.toml`.
pub fn node_config(
    certs: &Generated,
    city: &str,
    root: &Path,
    (caller_addr, peer_addr): (SocketAddr, SocketAddr),
    peers: Vec<PeerConfig>,
    limits: Limits,
) -> Result<NodeConfig, LocalError> {
    let files = certs
        .city(city)
        .ok_or_else(|| LocalError::NoCity(city.to_string()))?;
    let dir = root.join(city);
    std::fs::create_dir_all(&dir)?;
    let mut cities: Vec<String> = certs.cities.iter().map(|c| c.city.clone()).collect();
    cities.sort();
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, open_policy(&cities))?;
    Ok(NodeConfig {
        city: city.to_string(),
        replica: String::new(),
        caller_addr,
        peer_addr,
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.join("data"),
        store_cache_bytes: tongban_gateway::config::DEFAULT_STORE_CACHE_BYTES,
        shared_store: tongban_gateway::store::SharedBackend::Sled,
        secret_file: None,
        cert_path: files.node_cert.clone(),
        key_path: files.node_key.clone(),
        trust_bundle_path: certs.trust_bundle.clone(),
        // Both cities run this node: the MAC form, as the deploy configs choose.
        mac_assertions: true,
        peers,
        limits,
        caller_tls: None,
        auth: AuthConfig {
            jwks_file: Some(files.jwks.clone()),
            jwks_url: None,
            jwks_ca_file: None,
            issuer: idp::issuer(city),
            audience: idp::audience(city),
            leeway: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
        },
        policy_file,
        policy_reload: Duration::from_secs(1),
        audit: tongban_gateway::config::AuditConfig::default(),
        items: std::sync::Arc::new(
            tongban_catalog::Catalog::embedded().map_err(|e| LocalError::Other(e.to_string()))?,
        ),
        telemetry: None,
        // Browsers (portals) on loopback; pages of other origins only when allowed.
        web: Some(tongban_gateway::config::WebConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            allowed_origins: Vec::new(),
        }),
        runtime: tongban_gateway::config::RuntimeShape::Auto,
        runtime_lifo_slot: true,
    })
}

/// A bearer token of `org` of `city` from the dev identity provider in `certs`.
pub fn dev_token(certs: &Generated, city: &str, org: &str) -> Result<String, LocalError> {
    dev_token_with_roles(certs, city, org, &[])
}

/// A bearer token of `org` of `city` with `roles`.
pub fn dev_token_with_roles(
    certs: &Generated,
    city: &str,
    org: &str,
    roles: &[&str],
) -> Result<String, LocalError> {
    let files = certs
        .city(city)
        .ok_or_else(|| LocalError::NoCity(city.to_string()))?;
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let sub = format!("{org}-system");
    DevIdp::load(city, &idp::kid(city, 1), &files.idp_key)
        .and_then(|i| i.issue(org, &roles, Duration::from_secs(3600), &sub))
        .map_err(|e| LocalError::Other(e.to_string()))
}

/// The policy every local node starts with: any organisation of any city of the federation
/// may call any Tongban service for case handling or medical treatment.
pub fn open_policy(cities: &[String]) -> String {
    let callers: Vec<String> = cities.iter().map(|c| format!("\"{c}/*\"")).collect();
    format!(
        "# local federation: federation callers, tongban services, two purposes\n\
         [[rules]]\n\
         name = \"federation callers for case handling and treatment\"\n\
         effect = \"allow\"\n\
         callers = [{}]\n\
         services = [\"tongban.*\"]\n\
         purposes = [\"case-handling\", \"medical-treatment\"]\n",
        callers.join(", ")
    )
}

/// Short limits for loopback: a lost peer is retried quickly.
pub fn loopback_limits() -> Limits {
    Limits {
        catalog_retry: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}
