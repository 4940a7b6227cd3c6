//! The node's registry of local services, in the node's store so that it survives a restart.
//!
//! [`ServiceRecord`] is the validated domain type; the prost `ServiceRegistration` is only
//! the wire (and storage) form, converted with `TryFrom` so that nothing unvalidated reaches
//! the routing tables.

use std::sync::Arc;

use prost::Message;
use tongban_proto::registry::v1::ServiceRegistration;

use crate::config::validate_org_id;
use crate::store::kv::{Committed, Cond, KeyValue, KvStore, Op, Snapshot, Txn};
use crate::upstream::parse_endpoint_url;

/// Services a provider may not register: they are the node's own.
const RESERVED_PREFIXES: &[&str] = &[
    "tongban.registry.",
    "tongban.consent.",
    "tongban.audit.",
    "tongban.admin.",
    "tongban.federation.",
    "grpc.health.",
    "grpc.reflection.",
];

const MAX_ENDPOINTS: usize = 16;
const MAX_CODES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid registration: {0}")]
    Invalid(crate::error::BadField),
    #[error("service {service} of organisation {organisation} is not registered")]
    NotFound {
        organisation: String,
        service: String,
    },
    #[error("registry storage failed: {0}")]
    Storage(#[from] crate::store::StoreError),
    #[error("registry storage holds an undecodable record: {0}")]
    Corrupt(String),
}

/// A validated registration of one service of one organisation of this city.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub organisation: String,
    pub service: String,
    pub endpoints: Vec<String>,
    pub catalog_codes: Vec<String>,
    pub personal_data: bool,
    pub description: String,
}

/// Checks a full proto service name: dot-separated identifiers, at least a package and a name.
pub fn validate_service_name(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('.').collect();
    let ident_ok = |p: &str| {
        let mut b = p.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    };
    if s.len() > 256 || parts.len() < 2 || !parts.iter().all(|p| ident_ok(p)) {
        return Err(format!(
            "service `{s}` is not a full proto service name (e.g. tongban.crosscity.v1.CrossCityService)"
        ));
    }
    Ok(())
}

/// Checks a catalog code such as `JQ-HRSS-003`.
pub fn validate_catalog_code(c: &str) -> Result<(), String> {
    tongban_proto::metadata::check_catalog_code(c)
}

impl TryFrom<ServiceRegistration> for ServiceRecord {
    type Error = RegistryError;

    fn try_from(r: ServiceRegistration) -> Result<Self, Self::Error> {
        let invalid = |field: &str| {
            let field = format!("registration.{field}");
            move |m: String| RegistryError::Invalid(crate::error::BadField::new(field, m))
        };
        validate_org_id(&r.organisation).map_err(invalid("organisation"))?;
        validate_service_name(&r.service).map_err(invalid("service"))?;
        if RESERVED_PREFIXES.iter().any(|p| r.service.starts_with(p)) {
            return Err(invalid("service")(format!(
                "service `{}` is reserved for the node itself",
                r.service
            )));
        }
        if r.endpoints.is_empty() || r.endpoints.len() > MAX_ENDPOINTS {
            return Err(invalid("endpoints")(format!(
                "a service needs 1 to {MAX_ENDPOINTS} endpoints, got {}",
                r.endpoints.len()
            )));
        }
        for (i, e) in r.endpoints.iter().enumerate() {
            parse_endpoint_url(e).map_err(invalid(&format!("endpoints[{i}]")))?;
        }
        if r.catalog_codes.len() > MAX_CODES {
            return Err(invalid("catalog_codes")(format!(
                "at most {MAX_CODES} catalog codes"
            )));
        }
        for (i, c) in r.catalog_codes.iter().enumerate() {
            validate_catalog_code(c).map_err(invalid(&format!("catalog_codes[{i}]")))?;
        }
        if r.description.chars().count() > 512 {
            return Err(invalid("description")(
                "description is longer than 512 characters".into(),
            ));
        }
        Ok(ServiceRecord {
            organisation: r.organisation,
            service: r.service,
            endpoints: r.endpoints,
            catalog_codes: r.catalog_codes,
            personal_data: r.personal_data,
            description: r.description,
        })
    }
}

impl From<&ServiceRecord> for ServiceRegistration {
    fn from(r: &ServiceRecord) -> Self {
        ServiceRegistration {
            organisation: r.organisation.clone(),
            service: r.service.clone(),
            endpoints: r.endpoints.clone(),
            catalog_codes: r.catalog_codes.clone(),
            personal_data: r.personal_data,
            description: r.description.clone(),
        }
    }
}

/// The registry in the city's shared store (every replica of the city sees one registry).
/// Reads come from a snapshot kept current by a watch; writes are transactions that bump
/// the catalog version with a compare-and-swap, so two replicas registering at once both
/// get a version of their own, and are durable before they are acknowledged.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn KvStore>,
    snap: Snapshot,
}

const SERVICES: &str = "registry.services/";
const VERSION_KEY: &[u8] = b"registry.meta/catalog_version";

fn key(organisation: &str, service: &str) -> Vec<u8> {
    format!("{SERVICES}{organisation}/{service}").into_bytes()
}

fn version_of(kv: Option<&KeyValue>) -> u64 {
    kv.and_then(|kv| <[u8; 8]>::try_from(kv.value.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Registry {
    /// The registry in `store`, read from `snap` (a snapshot of the city's shared state).
    pub fn open(store: Arc<dyn KvStore>, snap: Snapshot) -> Registry {
        Registry { store, snap }
    }

    /// The registry's snapshot: notified when another replica changes it.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// The local catalog version; it only grows, across restarts and replicas too.
    pub fn version(&self) -> Result<u64, RegistryError> {
        Ok(version_of(self.snap.get(VERSION_KEY).as_ref()))
    }

    /// A new catalog version without a registry change (consent revocations are published
    /// with the catalog).
    pub async fn bump_version(&self) -> Result<u64, RegistryError> {
        self.write(None, |_| Ok((Vec::new(), Vec::new()))).await
    }

    /// Reads `target` (when given), then commits `change(target)` with the version bumped;
    /// again from the read when another replica wrote in between. Returns the new version
    /// once this replica's snapshot shows it.
    async fn write(
        &self,
        target: Option<&[u8]>,
        change: impl Fn(Option<&KeyValue>) -> Result<(Vec<Cond>, Vec<Op>), RegistryError>,
    ) -> Result<u64, RegistryError> {
        loop {
            let current = self.store.get(VERSION_KEY).await?;
            let read = match target {
                Some(k) => self.store.get(k).await?,
                None => None,
            };
            let (conds, ops) = change(read.as_ref())?;
            let next = version_of(current.as_ref()) + 1;
            let mut txn = Txn::new().when(Cond::Unchanged(
                VERSION_KEY.to_vec(),
                current.as_ref().map_or(0, |kv| kv.revision),
            ));
            txn.when.extend(conds);
            txn.then.extend(ops);
            txn = txn.put(VERSION_KEY.to_vec(), next.to_be_bytes().to_vec());
            match self.store.commit(txn).await? {
                Committed::Applied(rev) => {
                    self.snap.reach(rev).await;
                    return Ok(next);
                }
                Committed::Conflict => continue,
            }
        }
    }

    /// Registers or replaces a service; returns the new catalog version.
    pub async fn register(&self, rec: &ServiceRecord) -> Result<u64, RegistryError> {
        let value = ServiceRegistration::from(rec).encode_to_vec();
        let k = key(&rec.organisation, &rec.service);
        self.write(None, |_| {
            Ok((Vec::new(), vec![Op::Put(k.clone(), value.clone())]))
        })
        .await
    }

    /// Whether `organisation` has `service` registered.
    pub fn contains(&self, organisation: &str, service: &str) -> Result<bool, RegistryError> {
        Ok(self.snap.get(&key(organisation, service)).is_some())
    }

    /// Withdraws a service; returns the new catalog version.
    pub async fn withdraw(&self, organisation: &str, service: &str) -> Result<u64, RegistryError> {
        let k = key(organisation, service);
        self.write(Some(&k), |existing| {
            let Some(existing) = existing else {
                return Err(RegistryError::NotFound {
                    organisation: organisation.to_string(),
                    service: service.to_string(),
                });
            };
            Ok((
                vec![Cond::Unchanged(k.clone(), existing.revision)],
                vec![Op::Delete(k.clone())],
            ))
        })
        .await
    }

    /// Every registered service, ordered by organisation and service.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        self.snap
            .scan(SERVICES.as_bytes())
            .into_iter()
            .map(|kv| {
                let reg = ServiceRegistration::decode(kv.value.as_slice())
                    .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
                ServiceRecord::try_from(reg)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> ServiceRegistration {
        ServiceRegistration {
            organisation: "hrss".into(),
            service: "tongban.crosscity.v1.CrossCityService".into(),
            endpoints: vec!["http://127.0.0.1:7001".into()],
            catalog_codes: vec!["JQ-03".into()],
            personal_data: true,
            description: String::new(),
        }
    }

    #[test]
    fn registrations_are_validated() {
        assert!(ServiceRecord::try_from(reg()).is_ok());
        let bad: Vec<fn(&mut ServiceRegistration)> = vec![
            |r| r.organisation = "HRSS".into(),
            |r| r.service = "NoPackage".into(),
            |r| r.service = "tongban.registry.v1.Registry".into(),
            |r| r.endpoints.clear(),
            |r| r.endpoints = vec!["https://x:1".into()],
            |r| r.endpoints = vec!["http://x".into()],
            |r| r.catalog_codes = vec!["jq 1".into()],
        ];
        for (i, f) in bad.into_iter().enumerate() {
            let mut r = reg();
            f(&mut r);
            assert!(
                matches!(ServiceRecord::try_from(r), Err(RegistryError::Invalid(_))),
                "case {i}"
            );
        }
    }

    #[tokio::test]
    async fn registry_survives_reopen_and_versions_grow() {
        let dir = tempfile::tempdir().unwrap();
        let rec = ServiceRecord::try_from(reg()).unwrap();
        let open = || async {
            let store = crate::store::LocalStore::open(dir.path()).await.unwrap();
            let shared: Arc<dyn KvStore> = Arc::new(store.shared().unwrap());
            let snap = Snapshot::follow(shared.clone(), b"").await.unwrap();
            Registry::open(shared, snap)
        };
        {
            let r = open().await;
            assert_eq!(r.register(&rec).await.unwrap(), 1);
            assert!(matches!(
                r.withdraw("hrss", "a.B").await,
                Err(RegistryError::NotFound { .. })
            ));
        }
        let r = open().await;
        assert_eq!(r.list().unwrap(), vec![rec.clone()]);
        assert_eq!(r.withdraw("hrss", &rec.service).await.unwrap(), 2);
        assert!(r.list().unwrap().is_empty());
    }
}
