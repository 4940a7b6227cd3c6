//! The sled implementation of [`Store`]: one sled database per node (`data_dir/state`), a
//! sled tree per keyspace. sled's file lock is what keeps two nodes (and so two audit
//! writers) off one data dir.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Entries, Entry, Keyspace, Store, StoreError};

fn io(e: ::sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A sled database as the node's store.
#[derive(Clone)]
pub struct SledStore {
    db: ::sled::Db,
    /// The shared store over this database: one per database (it serialises the commits).
    shared: Arc<std::sync::OnceLock<super::sled_kv::SledKv>>,
}

/// How long opening waits for a previous instance on the same data dir to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

impl SledStore {
    /// Opens (or creates) the store at `path`. A previous instance that is still closing gets
    /// a bounded wait; a store held by a running node is [`StoreError::Locked`] after it.
    pub async fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(path, super::DEFAULT_STORE_CACHE_BYTES).await
    }

    /// [`Self::open`] with a page cache of `cache_bytes` (sled's default, 1 GiB, would let
    /// the node's memory grow with its store).
    pub async fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        open_db(path, cache_bytes).await.map(SledStore::new)
    }

    fn new(db: ::sled::Db) -> SledStore {
        SledStore {
            db,
            shared: Arc::default(),
        }
    }

    /// The shared store (registry, consents) kept in this database: the backend of a node
    /// that runs alone.
    pub fn shared(&self) -> Result<super::sled_kv::SledKv, StoreError> {
        if let Some(kv) = self.shared.get() {
            return Ok(kv.clone());
        }
        let kv = super::sled_kv::SledKv::open(self.db.clone())?;
        Ok(self.shared.get_or_init(|| kv).clone())
    }

    /// Opens the store at `path` without waiting (offline tools; the node must be stopped).
    pub fn open_now(path: &Path) -> Result<SledStore, StoreError> {
        ::sled::Config::new()
            .path(path)
            .cache_capacity(super::DEFAULT_STORE_CACHE_BYTES)
            .open()
            .map(SledStore::new)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))
    }
}

impl Store for SledStore {
    fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        let tree = self.db.open_tree(name).map_err(io)?;
        Ok(Arc::new(SledKeyspace { tree }))
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(async move { flush(&self.db).await.map_err(io) })
    }
}

/// Opens (or creates) a sled database at `path` with a page cache of `cache_bytes`. A
/// previous instance that is still closing gets a bounded wait; one that keeps it is
/// [`StoreError::Locked`] after it. Providers open their stores with it too.
pub async fn open_db(path: &Path, cache_bytes: u64) -> Result<::sled::Db, StoreError> {
    let started = tokio::time::Instant::now();
    let mut announced = false;
    loop {
        match ::sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(::sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= RELEASE_WAIT {
                    return Err(StoreError::Locked {
                        path: path.display().to_string(),
                    });
                }
                if !announced {
                    tracing::warn!(store = %path.display(), "the store is locked, waiting for the previous instance to close it");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", path.display()))),
        }
    }
}

/// Flushes `db` to disk. Not `Db::flush_async`: concurrent `flush_async` futures of sled 0.34
/// can wait forever (spacejam/sled#1241, #1308); a blocking flush on the blocking pool cannot.
pub async fn flush(db: &::sled::Db) -> ::sled::Result<()> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(r) => r.map(|_| ()),
        Err(e) => Err(::sled::Error::Io(std::io::Error::other(format!(
            "flush task failed: {e}"
        )))),
    }
}

struct SledKeyspace {
    tree: ::sled::Tree,
}

fn entry(kv: ::sled::Result<(::sled::IVec, ::sled::IVec)>) -> Result<Entry, StoreError> {
    kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)
}

impl Keyspace for SledKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(io)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key, value).map(|_| ()).map_err(io)
    }

    fn remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.tree.remove(key).map(|v| v.is_some()).map_err(io)
    }

    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        self.tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map(|r| r.is_ok())
            .map_err(io)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_> {
        Box::new(self.tree.scan_prefix(prefix).map(entry))
    }

    fn last(&self) -> Result<Option<Entry>, StoreError> {
        self.tree
            .last()
            .map(|o| o.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .map_err(io)
    }

    fn len(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyspaces_behave() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("s")).await.unwrap();
        let ks = store.keyspace("t").unwrap();
        ks.insert(b"a/1", b"x").unwrap();
        ks.insert(b"a/2", b"y").unwrap();
        ks.insert(b"b/1", b"z").unwrap();
        assert_eq!(ks.get(b"a/1").unwrap().as_deref(), Some(&b"x"[..]));
        let a: Vec<Entry> = ks.scan_prefix(b"a/").collect::<Result<_, _>>().unwrap();
        assert_eq!(a.len(), 2);
        assert!(!ks.insert_new(b"a/1", b"q").unwrap());
        assert!(ks.insert_new(b"c", b"q").unwrap());
        assert_eq!(ks.last().unwrap().unwrap().0, b"c".to_vec());
        assert!(ks.remove(b"c").unwrap());
        assert!(!ks.remove(b"c").unwrap());
        assert_eq!(ks.len(), 3);
        store.flush().await.unwrap();
        // A second open of a held store is refused (after the bounded wait in `open`).
        assert!(SledStore::open_now(&dir.path().join("s")).is_err());
    }
}
