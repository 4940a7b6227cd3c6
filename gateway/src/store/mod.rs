//! The node's durable state behind small traits — the seam where a replicated store (etcd)
//! will join. A [`Store`] opens named [`Keyspace`]s of bytes and makes writes durable; the
//! registry, consents and revocations, and the replay cache are built on them, and the
//! pseudonym secret comes from a [`SecretSource`]. sled is the implementation ([`sled`]);
//! no sled type is used outside this module. (The audit index is a flat file of its own,
//! next to the log: `audit::index`.)

pub mod conformance;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod faulty;
pub mod kv;
pub mod secret;
pub mod sled;
pub mod sled_kv;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use secret::{FileSecrets, ProvisionedSecret, SecretSource};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} is locked by another process (is a node already running on it?)")]
    Locked { path: String },
    #[error("store i/o: {0}")]
    Io(String),
    #[error("store holds undecodable data: {0}")]
    Corrupt(String),
    /// The store cannot be reached (etcd down or partitioned away); names the backend.
    #[error("{0}")]
    Unavailable(String),
    /// A watch asked for history the store no longer holds.
    #[error("store history before revision {revision} is compacted")]
    Compacted { revision: i64 },
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries in key order.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + Send + 'a>;

/// One named keyspace of a store: ordered keys, byte values.
pub trait Keyspace: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Whether the key was there.
    fn remove(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// Inserts only if the key is absent (atomically); false when it was there.
    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError>;
    /// The entries whose key starts with `prefix` (all of them for an empty prefix).
    fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_>;
    /// The entry with the greatest key.
    fn last(&self) -> Result<Option<Entry>, StoreError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The durable state of one node.
pub trait Store: Send + Sync {
    /// The keyspace `name`, created when absent.
    fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>;
}

/// The store's page cache (sled's default of 1 GiB grows the node's memory with its store).
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Which shared store a node uses (`[storage] backend`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SharedBackend {
    /// The node's own sled database: one node per city (the default).
    #[default]
    Sled,
    /// An etcd cluster shared by the replicas of the city.
    Etcd {
        endpoints: Vec<String>,
        /// Every key of the city under it (`/tongban/<city>/` by default).
        prefix: String,
        timeout: std::time::Duration,
        /// TLS to etcd (`https://` endpoints).
        tls: Option<EtcdTls>,
    },
}

/// TLS to etcd: the CA that issued etcd's certificate and, for an etcd that requires one,
/// this node's client certificate and key (PEM files, read when connecting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The replica's own store, for what stays per replica (its audit checkpoints), and the
/// shared store of a city that runs one node: sled, in `data_dir`.
pub type LocalStore = sled::SledStore;

/// Whether this build has the etcd backend (the `etcd` feature).
pub const ETCD_BUILT_IN: bool = cfg!(feature = "etcd");

/// Opens the shared store the config names; `local` is the node's own database.
pub async fn open_shared(
    backend: &SharedBackend,
    local: &LocalStore,
) -> Result<Arc<dyn kv::KvStore>, StoreError> {
    match backend {
        SharedBackend::Sled => Ok(Arc::new(local.shared()?)),
        #[cfg(feature = "etcd")]
        SharedBackend::Etcd {
            endpoints,
            prefix,
            timeout,
            tls,
        } => Ok(Arc::new(
            etcd::EtcdKv::connect(&etcd::EtcdConfig {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                timeout: *timeout,
                tls: tls.clone(),
            })
            .await?,
        )),
        #[cfg(not(feature = "etcd"))]
        SharedBackend::Etcd { .. } => Err(StoreError::Unavailable(
            "this build has no etcd backend: build tongban with `--features etcd`".into(),
        )),
    }
}
