//! The node's registry of local services, in the node's store so that it survives a restart.
//!
//! [`ServiceRecord`] is the validated domain type; the prost `ServiceRegistration` is only
//! the wire (and storage) form, converted with `TryFrom` so that nothing unvalidated reaches
//! the routing tables.

use std::sync::Arc;

use prost::Message;
use tongban_proto::registry::v1::ServiceRegistration;

use crate::config::validate_org_id;
use crate::store::{Keyspace, Store};
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

/// The registry in the node's store. Writes are flushed before they are acknowledged.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    services: Arc<dyn Keyspace>,
    meta: Arc<dyn Keyspace>,
}

const VERSION_KEY: &[u8] = b"catalog_version";

fn key(organisation: &str, service: &str) -> Vec<u8> {
    format!("{organisation}/{service}").into_bytes()
}

impl Registry {
    pub fn open(store: Arc<dyn Store>) -> Result<Registry, RegistryError> {
        Ok(Registry {
            services: store.keyspace("registry.services")?,
            meta: store.keyspace("registry.meta")?,
            store,
        })
    }

    /// The local catalog version; it only grows, across restarts too.
    pub fn version(&self) -> Result<u64, RegistryError> {
        Ok(self
            .meta
            .get(VERSION_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// A new catalog version without a registry change (consent revocations are published
    /// with the catalog).
    pub async fn bump_version(&self) -> Result<u64, RegistryError> {
        let v = self.bump()?;
        self.store.flush().await?;
        Ok(v)
    }

    fn bump(&self) -> Result<u64, RegistryError> {
        let next = self.version()? + 1;
        self.meta.insert(VERSION_KEY, &next.to_be_bytes())?;
        Ok(next)
    }

    /// Registers or replaces a service; returns the new catalog version.
    pub async fn register(&self, rec: &ServiceRecord) -> Result<u64, RegistryError> {
        let value = ServiceRegistration::from(rec).encode_to_vec();
        self.services
            .insert(&key(&rec.organisation, &rec.service), &value)?;
        let v = self.bump()?;
        self.store.flush().await?;
        Ok(v)
    }

    /// Whether `organisation` has `service` registered.
    pub fn contains(&self, organisation: &str, service: &str) -> Result<bool, RegistryError> {
        Ok(self.services.get(&key(organisation, service))?.is_some())
    }

    /// Withdraws a service; returns the new catalog version.
    pub async fn withdraw(&self, organisation: &str, service: &str) -> Result<u64, RegistryError> {
        if !self.services.remove(&key(organisation, service))? {
            return Err(RegistryError::NotFound {
                organisation: organisation.to_string(),
                service: service.to_string(),
            });
        }
        let v = self.bump()?;
        self.store.flush().await?;
        Ok(v)
    }

    /// Every registered service, ordered by organisation and service.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, RegistryError> {
        self.services
            .scan_prefix(b"")
            .map(|kv| {
                let (_, v) = kv?;
                let reg = ServiceRegistration::decode(v.as_slice())
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
            let store = crate::store::sled::SledStore::open(dir.path())
                .await
                .unwrap();
            Registry::open(Arc::new(store)).unwrap()
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
