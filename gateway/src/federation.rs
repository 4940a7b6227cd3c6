//! Node-to-node federation: the `tongban.federation.v1.Federation` server (peer listener
//! only) and, for every configured peer, a task that handshakes, watches the peer's signed
//! catalog and keeps it current — reconnecting with back-off when the peer goes away, so a
//! peer that comes back is picked up without a restart.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tongban_proto::audit::v1::ChangeKind;

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tongban_proto::audit::v1::SignedCheckpoint;
use tongban_proto::federation::v1::federation_client::FederationClient;
use tongban_proto::federation::v1::federation_server::Federation;
use tongban_proto::federation::v1::{
    GetAuditRecordsRequest, GetAuditRecordsResponse, GetCatalogRequest, GetCheckpointRequest,
    HandshakeRequest, HandshakeResponse, SignedCatalog,
};

use crate::audit::Auditor;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

use crate::catalog::{verify_peer_catalog, Catalog, CatalogError};
use crate::trust::{NodeIdentity, PeerIdentity, TrustBundle, TrustError};
use crate::upstream::{Endpoint, EndpointChannel};

/// Version of the node-to-node protocol spoken here.
pub const PROTOCOL_VERSION: &str = "tongban-federation/1";

/// Health-check service name of a peer: `tongban.peer.<city>`.
pub fn peer_health_name(city: &str) -> String {
    format!("tongban.peer.{city}")
}

/// A configured peer city and the channels to its node.
pub struct Peer {
    pub city: String,
    /// The data plane's connection: every forwarded call.
    pub endpoint: Arc<Endpoint>,
    /// The control connection (handshake, catalog watch, checkpoints), apart from the data
    /// plane so that no load or abandoned call on one disturbs the other.
    pub control: Arc<Endpoint>,
    up: AtomicBool,
    /// Raw ed25519 key of the peer's node certificate, learnt (and verified) in the
    /// handshake: it verifies the consents that city issues.
    node_key: arc_swap::ArcSwapOption<Vec<u8>>,
}

impl Peer {
    pub fn new(city: String, endpoint: Arc<Endpoint>, control: Arc<Endpoint>) -> Self {
        Peer {
            city,
            endpoint,
            control,
            up: AtomicBool::new(false),
            node_key: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The peer node's public key, once a handshake succeeded.
    pub fn node_key(&self) -> Option<Arc<Vec<u8>>> {
        self.node_key.load_full()
    }

    /// Whether the catalog stream with this peer is established.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks the peer down; `stopping`: it ended its catalog stream itself (info, not warn).
    /// Whether it was up.
    async fn set_down(&self, stopping: bool, health: &HealthReporter) -> bool {
        if stopping && self.is_up() {
            tracing::info!(peer = %self.city, "peer stopped (it ended the catalog stream)");
            self.up.store(false, Ordering::Relaxed);
            health
                .set_service_status(
                    peer_health_name(&self.city),
                    tonic_health::ServingStatus::NotServing,
                )
                .await;
            return true;
        }
        self.set_up(false, health).await
    }

    /// Marks the peer up or down; whether that changed its state.
    async fn set_up(&self, up: bool, health: &HealthReporter) -> bool {
        let was = self.up.swap(up, Ordering::Relaxed);
        let status = if up {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health
            .set_service_status(peer_health_name(&self.city), status)
            .await;
        if was != up {
            if up {
                tracing::info!(peer = %self.city, "peer connected");
            } else {
                tracing::warn!(peer = %self.city, "peer lost");
            }
        }
        was != up
    }
}

/// The Federation API served to peer nodes.
pub struct FederationApi {
    pub identity: Arc<NodeIdentity>,
    pub bundle: TrustBundle,
    pub catalog: Arc<Catalog>,
    pub auditor: Arc<Auditor>,
    pub shutdown: watch::Receiver<bool>,
    /// For a citizen's access log: this node's pseudonyms, and the replay cache of the
    /// assertions that ask for it.
    pub pseudonyms: Arc<crate::subject::Pseudonymizer>,
    pub replay: crate::assertion::ReplayCache,
}

/// Why the Federation API refused a peer's request.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation api is for peer nodes over mtls only")]
    NotAPeer,
    #[error("handshake claims city `{claimed}` but the certificate is of `{city}`")]
    WrongCity { claimed: String, city: String },
    #[error("{0}")]
    Certificate(String),
    #[error("no audit checkpoint yet (the log is empty)")]
    NoCheckpoint,
    #[error("this node holds no checkpoint of `{0}` yet")]
    NoHeldCheckpoint(String),
}

impl crate::error::ApiError for FederationError {
    fn code(&self) -> tonic::Code {
        match self {
            FederationError::NotAPeer
            | FederationError::WrongCity { .. }
            | FederationError::Certificate(_) => tonic::Code::PermissionDenied,
            FederationError::NoCheckpoint | FederationError::NoHeldCheckpoint(_) => {
                tonic::Code::NotFound
            }
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            FederationError::NotAPeer => "NOT_A_PEER",
            FederationError::WrongCity { .. } => "PEER_WRONG_CITY",
            FederationError::Certificate(_) => "PEER_CERTIFICATE",
            FederationError::NoCheckpoint | FederationError::NoHeldCheckpoint(_) => "NO_CHECKPOINT",
        }
    }
}

crate::into_status!(FederationError);

fn peer_of<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    req.extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| FederationError::NotAPeer.into())
}

type CatalogStream = Pin<Box<dyn Stream<Item = Result<SignedCatalog, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for FederationApi {
    async fn handshake(
        &self,
        req: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let peer = peer_of(&req)?;
        let msg = req.into_inner();
        if msg.city != peer.city {
            return Err(FederationError::WrongCity {
                claimed: msg.city,
                city: peer.city,
            }
            .into());
        }
        let cert = CertificateDer::from(msg.node_certificate);
        self.bundle
            .verify_node_cert(&peer.city, &[cert])
            .map_err(|e| FederationError::Certificate(e.to_string()))?;
        tracing::info!(peer = %peer.city, "handshake from peer");
        Ok(Response::new(HandshakeResponse {
            city: self.identity.city.clone(),
            node_certificate: self.identity.cert_der(),
            protocol_version: PROTOCOL_VERSION.to_string(),
            catalog_version: self.catalog.snapshot().local_version,
        }))
    }

    async fn get_catalog(
        &self,
        req: Request<GetCatalogRequest>,
    ) -> Result<Response<SignedCatalog>, Status> {
        peer_of(&req)?;
        Ok(Response::new(
            (*self.catalog.snapshot().signed_local).clone(),
        ))
    }

    async fn get_checkpoint(
        &self,
        req: Request<GetCheckpointRequest>,
    ) -> Result<Response<SignedCheckpoint>, Status> {
        peer_of(&req)?;
        // Sign the current head if it moved, so the peer always gets an up-to-date one.
        let _ = self.auditor.checkpoint_now();
        self.auditor
            .latest_checkpoint()
            .map(Response::new)
            .ok_or_else(|| FederationError::NoCheckpoint.into())
    }

    async fn prove_consistency(
        &self,
        req: Request<tongban_proto::audit::v1::ConsistencyRequest>,
    ) -> Result<Response<tongban_proto::audit::v1::ConsistencyProof>, Status> {
        peer_of(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.auditor.prove_consistency(r.from_seq, r.to_seq).await?,
        ))
    }

    async fn get_held_checkpoint(
        &self,
        req: Request<GetCheckpointRequest>,
    ) -> Result<Response<SignedCheckpoint>, Status> {
        let peer = peer_of(&req)?;
        let replica = &req.get_ref().replica;
        self.auditor
            .peer_checkpoint_of(&peer.city, replica)
            .map(Response::new)
            .ok_or_else(|| FederationError::NoHeldCheckpoint(peer.city).into())
    }

    /// A peer reads this node's records of the exchanges it took part in (and only those).
    async fn get_audit_records(
        &self,
        req: Request<GetAuditRecordsRequest>,
    ) -> Result<Response<GetAuditRecordsResponse>, Status> {
        let peer = peer_of(&req)?;
        let rid = req.into_inner().request_id;
        let records = self
            .auditor
            .records_for_request(&rid)
            .await
            .into_iter()
            .filter(|r| r.peer_city == peer.city)
            .collect();
        Ok(Response::new(GetAuditRecordsResponse { records }))
    }

    async fn subject_access_log(
        &self,
        req: Request<tongban_proto::federation::v1::SubjectAccessLogRequest>,
    ) -> Result<Response<tongban_proto::audit::v1::AccessLogResponse>, Status> {
        use crate::audit::api::{subject_binding, SUBJECT_ACCESS_LOG};
        let peer = peer_of(&req)?;
        let token = req
            .metadata()
            .get(crate::assertion::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = req.into_inner();
        crate::subject::validate_resident_id(&r.subject)
            .map_err(|m| crate::error::BadField::new("subject", m))?;
        let expected = crate::assertion::Expected {
            peer_city: &peer.city,
            own_city: &self.identity.city,
            request_id: &r.request_id,
            service: SUBJECT_ACCESS_LOG.0,
            method: SUBJECT_ACCESS_LOG.1,
        };
        let unauthenticated =
            |why: String| Status::unauthenticated(format!("subject access log: {why}"));
        let claims = crate::assertion::verify(
            token.as_deref(),
            &peer.public_key,
            peer.binding.as_ref(),
            &expected,
        )
        .and_then(|c| crate::assertion::check_binding(&c, peer.binding.as_ref()).map(|()| c))
        .map_err(|e| unauthenticated(e.to_string()))?;
        let citizen = claims.roles.iter().any(|x| x == crate::auth::CITIZEN_ROLE);
        if !(claims.own && citizen && claims.subj.as_deref() == Some(&subject_binding(&r.subject)))
        {
            return Err(Status::permission_denied(format!(
                "{}: a citizen's access log is given only for the citizen the home node signed in",
                self.identity.city
            )));
        }
        self.replay
            .check_and_remember(&claims.jti, claims.exp)
            .map_err(|e| unauthenticated(e.to_string()))?;
        let limit = r.limit.clamp(1, 1000) as usize;
        let (accesses, coverage) = crate::audit::api::accesses_of(
            &self.auditor,
            &self.pseudonyms,
            &r.subject,
            limit,
            r.with_proofs,
        )
        .await;
        Ok(Response::new(tongban_proto::audit::v1::AccessLogResponse {
            accesses,
            unreachable: Vec::new(),
            coverage: Some(coverage.to_proto()),
        }))
    }

    type WatchCatalogStream = CatalogStream;

    async fn watch_catalog(
        &self,
        req: Request<GetCatalogRequest>,
    ) -> Result<Response<CatalogStream>, Status> {
        let peer = peer_of(&req)?;
        let mut changes = self.catalog.subscribe();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let snap = changes.borrow_and_update().clone();
                if last != Some(snap.local_version) {
                    last = Some(snap.local_version);
                    if tx.send(Ok((*snap.signed_local).clone())).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = shutdown.changed() => break,
                    _ = tx.closed() => break,
                }
            }
            tracing::debug!(peer = %peer.city, "catalog watch ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Rpc(#[from] Status),
    #[error("handshake timed out")]
    Timeout,
    #[error("peer answered as city `{0}`")]
    WrongCity(String),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Everything the sync task of one peer needs.
pub struct PeerSync {
    pub peer: Arc<Peer>,
    pub identity: Arc<NodeIdentity>,
    pub bundle: TrustBundle,
    pub catalog: Arc<Catalog>,
    pub health: HealthReporter,
    pub auditor: Arc<Auditor>,
    pub connect_timeout: std::time::Duration,
    pub retry: std::time::Duration,
    /// How often the peer's audit checkpoint is fetched.
    pub checkpoint_interval: std::time::Duration,
}

impl PeerSync {
    /// Keeps the peer's catalog current until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.peer.set_up(false, &self.health).await;
        loop {
            let result = tokio::select! {
                r = self.sync_once() => r,
                _ = shutdown.changed() => return,
            };
            if *shutdown.borrow() {
                return;
            }
            // A clean end of the stream is the peer stopping; an error is the peer lost.
            if self.peer.set_down(result.is_ok(), &self.health).await {
                self.record_link(ChangeKind::PeerLinkDown).await;
            }
            match result {
                Ok(()) => tracing::info!(peer = %self.peer.city, "peer ended the catalog stream"),
                Err(error) => {
                    tracing::debug!(peer = %self.peer.city, %error, "catalog sync with peer failed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {},
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Records the link to the peer coming up or going down (its availability is measured
    /// from these); a log that cannot be written is reported, not waited for.
    async fn record_link(&self, kind: ChangeKind) {
        let change =
            crate::audit::change::Change::new(&self.identity.city, kind, &self.peer.city).by_node();
        if let Err(error) = self.auditor.record_change(change).await {
            tracing::warn!(peer = %self.peer.city, %error, "peer link change not recorded");
        }
    }

    async fn sync_once(&self) -> Result<(), SyncError> {
        let city = &self.peer.city;
        let channel = EndpointChannel::new(self.peer.control.clone(), self.connect_timeout);
        let mut client = FederationClient::new(channel);
        let hello = HandshakeRequest {
            city: self.identity.city.clone(),
            node_certificate: self.identity.cert_der(),
            protocol_version: PROTOCOL_VERSION.to_string(),
        };
        let answer = tokio::time::timeout(self.connect_timeout * 2, client.handshake(hello))
            .await
            .map_err(|_| SyncError::Timeout)??
            .into_inner();
        if &answer.city != city {
            return Err(SyncError::WrongCity(answer.city));
        }
        let cert = CertificateDer::from(answer.node_certificate);
        self.bundle
            .verify_node_cert(city, std::slice::from_ref(&cert))?;
        self.peer
            .node_key
            .store(Some(Arc::new(crate::trust::public_key_of(&cert)?)));
        self.check_anchor(&mut client).await;
        let mut stream = client
            .watch_catalog(GetCatalogRequest {})
            .await?
            .into_inner();
        let mut checkpoints = tokio::time::interval(self.checkpoint_interval);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(signed) = msg? else { return Ok(()) };
                    let catalog = verify_peer_catalog(city, &cert, &signed)?;
                    tracing::info!(
                        peer = %city,
                        version = catalog.version,
                        services = catalog.services.len(),
                        "peer catalog updated"
                    );
                    // Up before its catalog is visible: a call routed by that catalog must not
                    // find the peer still marked down.
                    // The link's coming up is on record before anything is routed by it (so
                    // that a catalog seen implies its link-up record).
                    if !self.peer.is_up() {
                        self.record_link(ChangeKind::PeerLinkUp).await;
                        self.peer.set_up(true, &self.health).await;
                    }
                    self.catalog.set_peer(catalog);
                }
                _ = checkpoints.tick() => self.fetch_checkpoint(&mut client, &cert).await,
            }
        }
    }

    /// Checks this node's log against the newest checkpoint of it that the peer holds; a
    /// contradiction stops this node from serving (see [`Auditor::contradict`]).
    async fn check_anchor(&self, client: &mut FederationClient<EndpointChannel>) {
        let city = &self.peer.city;
        let held = tokio::time::timeout(
            self.connect_timeout * 2,
            client.get_held_checkpoint(GetCheckpointRequest {
                replica: self.auditor.replica().to_string(),
            }),
        )
        .await;
        match held {
            Ok(Ok(signed)) => match self.auditor.check_anchor(city, &signed.into_inner()) {
                Ok(()) => {
                    tracing::debug!(peer = %city, "audit log agrees with the checkpoint the peer holds of it");
                    self.auditor
                        .set_anchor(crate::audit::Anchor::Confirmed(city.clone()));
                }
                Err(reason) => self.auditor.contradict(reason),
            },
            // The peer holds no checkpoint of this node: it never saw its log, so it has
            // nothing to contradict (a new federation, or a new peer).
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                self.auditor
                    .set_anchor(crate::audit::Anchor::Confirmed(format!(
                        "{city} (which held no checkpoint of it)"
                    )));
            }
            Ok(Err(s)) => {
                tracing::warn!(peer = %city, error = %s, "cannot fetch the checkpoint the peer holds of this node")
            }
            Err(_) => {
                tracing::warn!(peer = %city, "timed out fetching the checkpoint the peer holds of this node")
            }
        }
    }

    /// Keeps the peer's latest signed audit checkpoint; a contradiction is reported loudly.
    async fn fetch_checkpoint(
        &self,
        client: &mut FederationClient<EndpointChannel>,
        cert: &CertificateDer<'static>,
    ) {
        let fetched = tokio::time::timeout(
            self.connect_timeout * 2,
            client.get_checkpoint(GetCheckpointRequest::default()),
        )
        .await;
        match fetched {
            Ok(Ok(signed)) => {
                let city = &self.peer.city;
                let signed = signed.into_inner();
                // A newer checkpoint must extend the one held: the peer proves it.
                let proof = match self.auditor.consistency_needed(city, &signed) {
                    None => None,
                    Some((from_seq, to_seq)) => {
                        let asked = tokio::time::timeout(
                            self.connect_timeout * 2,
                            client.prove_consistency(
                                tongban_proto::audit::v1::ConsistencyRequest { from_seq, to_seq },
                            ),
                        )
                        .await;
                        match asked {
                            Ok(Ok(p)) => Some(p.into_inner().hashes),
                            Ok(Err(s)) => {
                                tracing::warn!(peer = %city, error = %s, "the peer gave no consistency proof for its new checkpoint");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %city, "consistency proof timed out");
                                return;
                            }
                        }
                    }
                };
                if let Err(error) = self
                    .auditor
                    .store_peer_checkpoint(city, cert, &signed, proof.as_deref())
                    .await
                {
                    tracing::error!(peer = %city, %error, "peer audit checkpoint refused");
                }
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {}
            Ok(Err(s)) => {
                tracing::debug!(peer = %self.peer.city, error = %s, "checkpoint fetch failed")
            }
            Err(_) => tracing::debug!(peer = %self.peer.city, "checkpoint fetch timed out"),
        }
    }
}
