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

pub use secret::{FileSecrets, SecretSource};

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
