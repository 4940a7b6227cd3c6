//! The federated catalog: an immutable snapshot of the local services (with their endpoint
//! pools) and the last verified catalog of every peer, swapped atomically on every change so
//! that the call path reads it without a lock.
//!
//! This module also produces the node's own signed catalog (what peers receive) and checks
//! the ones peers send.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prost::Message;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tongban_proto::federation::v1::{
    Catalog as WireCatalog, CatalogEntry, RevokedConsent, SignedCatalog,
};

use crate::config::validate_org_id;
use crate::consent::ConsentStore;
use crate::registry::{
    validate_catalog_code, validate_service_name, Registry, RegistryError, ServiceRecord,
};
use crate::trust::{self, NodeIdentity, TrustError};
use crate::upstream::{Endpoint, EndpointSet, Keepalive};

/// A local service with its live endpoint pool.
#[derive(Debug)]
pub struct LocalService {
    pub record: ServiceRecord,
    pub endpoints: Arc<EndpointSet>,
}

/// A service offered by a peer city, as its signed catalog says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerService {
    pub organisation: String,
    pub service: String,
    pub catalog_codes: Vec<String>,
    pub personal_data: bool,
    pub description: String,
}

/// The last verified catalog of a peer.
#[derive(Debug, Clone)]
pub struct PeerCatalog {
    pub city: String,
    pub version: u64,
    pub issued_at_ms: i64,
    pub services: Vec<PeerService>,
    /// Consent ids the peer issued and revoked.
    pub revoked_consents: HashSet<String>,
}

/// One consistent view of everything the call path routes by.
#[derive(Debug)]
pub struct Snapshot {
    pub city: String,
    pub local_version: u64,
    pub local: Vec<Arc<LocalService>>,
    pub peers: BTreeMap<String, Arc<PeerCatalog>>,
    pub signed_local: Arc<SignedCatalog>,
    /// Consent ids this node issued and revoked.
    pub revoked_consents: HashSet<String>,
}

impl Snapshot {
    /// Whether `city` revoked the consent `id` (this node's own revocations included).
    pub fn consent_revoked(&self, city: &str, id: &str) -> bool {
        if city == self.city {
            return self.revoked_consents.contains(id);
        }
        self.peers
            .get(city)
            .is_some_and(|c| c.revoked_consents.contains(id))
    }

    /// Local providers of `service` (one per organisation offering it), only those whose
    /// registration lists `code` when a catalog item is named.
    pub fn local_providers<'a>(
        &'a self,
        service: &'a str,
        code: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<LocalService>> + 'a {
        self.local.iter().filter(move |s| {
            s.record.service == service
                && code.is_none_or(|c| s.record.catalog_codes.iter().any(|x| x == c))
        })
    }

    /// Whether the peer `city` offers `service` (by its last catalog), for the catalog item
    /// `code` when one is named.
    pub fn peer_offers(&self, city: &str, service: &str) -> bool {
        self.peer_offers_item(city, service, None)
    }

    /// Whether a registration of `service` in the peer `city` handles personal data.
    pub fn peer_personal(&self, city: &str, service: &str) -> bool {
        self.peers.get(city).is_some_and(|c| {
            c.services
                .iter()
                .any(|s| s.service == service && s.personal_data)
        })
    }

    /// [`Self::peer_offers`], restricted to registrations listing `code` when given.
    pub fn peer_offers_item(&self, city: &str, service: &str, code: Option<&str>) -> bool {
        self.peers.get(city).is_some_and(|c| {
            c.services.iter().any(|s| {
                s.service == service
                    && code.is_none_or(|code| s.catalog_codes.iter().any(|x| x == code))
            })
        })
    }

    /// Every city (this one included) where some registration, of any service, lists the
    /// catalog item `code`.
    pub fn cities_offering_any(&self, code: &str) -> Vec<&str> {
        let lists = |codes: &[String]| codes.iter().any(|c| c == code);
        let mut out = Vec::new();
        if self.local.iter().any(|s| lists(&s.record.catalog_codes)) {
            out.push(self.city.as_str());
        }
        for (city, c) in &self.peers {
            if c.services.iter().any(|s| lists(&s.catalog_codes)) {
                out.push(city.as_str());
            }
        }
        out
    }

    /// Every city (this one included) whose catalog offers `service` (for `code`).
    pub fn cities_offering(&self, service: &str, code: Option<&str>) -> Vec<&str> {
        let mut out = Vec::new();
        if self.local_providers(service, code).next().is_some() {
            out.push(self.city.as_str());
        }
        for city in self.peers.keys() {
            if self.peer_offers_item(city, service, code) {
                out.push(city.as_str());
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("peer catalog does not decode: {0}")]
    Decode(String),
    #[error("peer catalog is for city `{got}`, expected `{expected}`")]
    WrongCity { expected: String, got: String },
    #[error(transparent)]
    Trust(#[from] TrustError),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Owns the current snapshot and publishes changes.
pub struct Catalog {
    identity: Arc<NodeIdentity>,
    current: ArcSwap<Snapshot>,
    /// Serialises read-modify-write updates (never taken on the call path).
    update: Mutex<()>,
    /// Notified with the new snapshot after every swap (tests, WatchCatalog).
    changes: watch::Sender<Arc<Snapshot>>,
    /// Endpoint pools survive snapshot swaps: same URL, same connection.
    endpoints: Mutex<HashMap<String, Weak<Endpoint>>>,
    /// Keepalive of the provider connections.
    keepalive: Keepalive,
}

impl Catalog {
    pub fn new(
        identity: Arc<NodeIdentity>,
        version: u64,
        records: Vec<ServiceRecord>,
        revoked: Vec<RevokedConsent>,
        keepalive: Keepalive,
    ) -> Self {
        let empty = Arc::new(Snapshot {
            city: identity.city.clone(),
            local_version: 0,
            local: Vec::new(),
            peers: BTreeMap::new(),
            signed_local: Arc::new(SignedCatalog::default()),
            revoked_consents: HashSet::new(),
        });
        let (changes, _) = watch::channel(empty.clone());
        let catalog = Catalog {
            identity,
            current: ArcSwap::new(empty),
            update: Mutex::new(()),
            changes,
            endpoints: Mutex::new(HashMap::new()),
            keepalive,
        };
        catalog.set_local(version, records, revoked);
        catalog
    }

    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.changes.subscribe()
    }

    fn swap(&self, next: Snapshot) {
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.changes.send_replace(next);
    }

    fn endpoint(&self, url: &str) -> Option<Arc<Endpoint>> {
        let mut map = self.endpoints.lock().ok()?;
        if let Some(ep) = map.get(url).and_then(Weak::upgrade) {
            return Some(ep);
        }
        // Registration validated the URL, so this only fails on a corrupt store.
        let ep = Arc::new(Endpoint::provider(url).ok()?.with_keepalive(self.keepalive));
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(url.to_string(), Arc::downgrade(&ep));
        Some(ep)
    }

    /// Installs the local registry content at `version` and re-signs the local catalog.
    pub fn set_local(
        &self,
        version: u64,
        records: Vec<ServiceRecord>,
        revoked: Vec<RevokedConsent>,
    ) {
        let Ok(_g) = self.update.lock() else { return };
        let local: Vec<Arc<LocalService>> = records
            .into_iter()
            .map(|record| {
                let eps = record
                    .endpoints
                    .iter()
                    .filter_map(|u| self.endpoint(u))
                    .collect();
                Arc::new(LocalService {
                    record,
                    endpoints: Arc::new(EndpointSet::new(eps)),
                })
            })
            .collect();
        let wire = WireCatalog {
            city: self.identity.city.clone(),
            version,
            issued_at_ms: now_ms(),
            entries: local
                .iter()
                .map(|s| CatalogEntry {
                    organisation: s.record.organisation.clone(),
                    service: s.record.service.clone(),
                    catalog_codes: s.record.catalog_codes.clone(),
                    personal_data: s.record.personal_data,
                    description: s.record.description.clone(),
                })
                .collect(),
            revoked_consents: revoked,
        };
        let bytes = wire.encode_to_vec();
        let signed = SignedCatalog {
            signature: self.identity.sign(&bytes),
            catalog: bytes,
        };
        let cur = self.current.load();
        self.swap(Snapshot {
            city: cur.city.clone(),
            local_version: version,
            local,
            peers: cur.peers.clone(),
            signed_local: Arc::new(signed),
            revoked_consents: crate::consent::revoked_set(&wire.revoked_consents),
        });
    }

    /// Installs a verified peer catalog.
    pub fn set_peer(&self, catalog: PeerCatalog) {
        let Ok(_g) = self.update.lock() else { return };
        let cur = self.current.load();
        let mut peers = cur.peers.clone();
        peers.insert(catalog.city.clone(), Arc::new(catalog));
        self.swap(Snapshot {
            city: cur.city.clone(),
            local_version: cur.local_version,
            local: cur.local.clone(),
            peers,
            signed_local: cur.signed_local.clone(),
            revoked_consents: cur.revoked_consents.clone(),
        });
    }
}

/// Verifies a signed catalog from `city` against its node certificate (already verified
/// against the trust bundle) and turns it into the domain form. Entries that fail validation
/// are dropped with a warning rather than poisoning the whole catalog.
pub fn verify_peer_catalog(
    city: &str,
    node_cert: &CertificateDer<'_>,
    signed: &SignedCatalog,
) -> Result<PeerCatalog, CatalogError> {
    trust::verify_signature(node_cert, &signed.catalog, &signed.signature)?;
    let wire = WireCatalog::decode(signed.catalog.as_slice())
        .map_err(|e| CatalogError::Decode(e.to_string()))?;
    if wire.city != city {
        return Err(CatalogError::WrongCity {
            expected: city.to_string(),
            got: wire.city,
        });
    }
    let services = wire
        .entries
        .into_iter()
        .filter_map(|e| {
            let check = validate_org_id(&e.organisation)
                .and_then(|()| validate_service_name(&e.service))
                .and_then(|()| {
                    e.catalog_codes
                        .iter()
                        .try_for_each(|c| validate_catalog_code(c))
                });
            match check {
                Ok(()) => Some(PeerService {
                    organisation: e.organisation,
                    service: e.service,
                    catalog_codes: e.catalog_codes,
                    personal_data: e.personal_data,
                    description: e.description,
                }),
                Err(reason) => {
                    tracing::warn!(peer = %city, %reason, "dropping invalid peer catalog entry");
                    None
                }
            }
        })
        .collect();
    Ok(PeerCatalog {
        city: city.to_string(),
        version: wire.version,
        issued_at_ms: wire.issued_at_ms,
        services,
        revoked_consents: crate::consent::revoked_set(&wire.revoked_consents),
    })
}

/// Publishes this node's state (registry and consent revocations) as a new signed catalog.
/// Changes go through one lock, so a newer version is never overtaken by an older one.
pub struct Publisher {
    pub registry: Registry,
    pub consents: ConsentStore,
    pub catalog: Arc<Catalog>,
    lock: tokio::sync::Mutex<()>,
    /// The version installed last (a replica installs what another replica wrote too).
    installed: std::sync::atomic::AtomicU64,
}

impl Publisher {
    pub fn new(registry: Registry, consents: ConsentStore, catalog: Arc<Catalog>) -> Self {
        let installed = registry.version().unwrap_or(0);
        Publisher {
            registry,
            consents,
            catalog,
            lock: tokio::sync::Mutex::new(()),
            installed: std::sync::atomic::AtomicU64::new(installed),
        }
    }

    fn install(&self, version: u64) -> Result<(), RegistryError> {
        let records = self.registry.list()?;
        self.catalog
            .set_local(version, records, self.consents.revocations());
        self.installed
            .fetch_max(version, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Installs what other replicas of the city write (registrations, revocations), as the
    /// shared store's watch brings it; stops when the publisher is dropped.
    pub fn follow_replicas(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        // Registry and consents share one snapshot: one watch for both.
        let mut changes = self.registry.snapshot().changes();
        tokio::spawn(async move {
            loop {
                if changes.changed().await.is_err() {
                    return;
                }
                let Some(p) = weak.upgrade() else { return };
                let _g = p.lock.lock().await;
                let Ok(v) = p.registry.version() else {
                    continue;
                };
                if v > p.installed.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(error) = p.install(v) {
                        tracing::warn!(%error, "cannot install the catalog another replica wrote");
                    } else {
                        tracing::info!(
                            version = v,
                            "catalog version from another replica installed"
                        );
                    }
                }
            }
        });
    }

    /// Registers or replaces a service: the new catalog version, and whether it replaced a
    /// registration.
    pub async fn register(&self, rec: &ServiceRecord) -> Result<(u64, bool), RegistryError> {
        let _g = self.lock.lock().await;
        let replaced = self.registry.contains(&rec.organisation, &rec.service)?;
        let v = self.registry.register(rec).await?;
        self.install(v)?;
        Ok((v, replaced))
    }

    pub async fn withdraw(&self, organisation: &str, service: &str) -> Result<u64, RegistryError> {
        let _g = self.lock.lock().await;
        let v = self.registry.withdraw(organisation, service).await?;
        self.install(v)?;
        Ok(v)
    }

    /// A new version with unchanged services (after a consent revocation).
    pub async fn republish(&self) -> Result<u64, RegistryError> {
        let _g = self.lock.lock().await;
        let v = self.registry.bump_version().await?;
        self.install(v)?;
        Ok(v)
    }
}

impl crate::consent::Republish for Publisher {
    fn republish(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tonic::Status>> + Send + '_>>
    {
        Box::pin(async move {
            Publisher::republish(self)
                .await
                .map_err(tonic::Status::from)
        })
    }
}
