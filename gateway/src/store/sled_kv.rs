//! sled as the shared store of a node that runs alone (the embedded default). One tree holds
//! the keys, each value prefixed with the revision that wrote it; another holds the revision
//! counter. Commits are serialised in this process (sled's file lock keeps other processes
//! off the data dir) and flushed before they return. Watches are served from the recent
//! changes kept in memory; older history is [`StoreError::Compacted`], as with etcd.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{broadcast, Mutex};

use super::kv::{Committed, Cond, Event, KeyValue, KvStore, Op, Range, Revision, Txn, Watch};
use super::StoreError;

/// Changes kept for watches that resume from a recent revision.
const HISTORY: usize = 4096;

const REV_KEY: &[u8] = b"revision";

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The shared store on sled.
#[derive(Clone)]
pub struct SledKv {
    db: ::sled::Db,
    tree: ::sled::Tree,
    meta: ::sled::Tree,
    inner: Arc<Mutex<History>>,
    /// Each commit's changes, together.
    tx: broadcast::Sender<Arc<Vec<Event>>>,
}

struct History {
    /// The latest revision.
    revision: Revision,
    /// Watches may resume from any revision ≥ this.
    oldest: Revision,
    events: VecDeque<Event>,
}

fn decode(key: &[u8], raw: &[u8]) -> Result<KeyValue, StoreError> {
    let (rev, value) = raw.split_at_checked(8).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "value of {} carries no revision",
            String::from_utf8_lossy(key)
        ))
    })?;
    let revision = i64::from_be_bytes(rev.try_into().unwrap_or_default());
    Ok(KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        revision,
    })
}

fn encode(revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value);
    v
}

impl SledKv {
    /// The shared store in `db` (trees `shared` and `shared.meta`). The keyspaces of the
    /// earlier layout (one tree per keyspace) are copied in once, under `<keyspace>/`.
    pub fn open(db: ::sled::Db) -> Result<SledKv, StoreError> {
        let tree = db.open_tree("shared").map_err(io)?;
        let meta = db.open_tree("shared.meta").map_err(io)?;
        let revision = meta
            .get(REV_KEY)
            .map_err(io)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes)
            .unwrap_or(0);
        let (tx, _) = broadcast::channel(HISTORY);
        let kv = SledKv {
            tree,
            meta,
            inner: Arc::new(Mutex::new(History {
                revision,
                oldest: revision,
                events: VecDeque::new(),
            })),
            tx,
            db,
        };
        kv.migrate()?;
        Ok(kv)
    }

    /// Copies the per-keyspace trees of the earlier layout in, once.
    fn migrate(&self) -> Result<(), StoreError> {
        const OLD: [&str; 4] = [
            "registry.services",
            "registry.meta",
            "consent.records",
            "consent.revoked",
        ];
        if !self.tree.is_empty() || self.meta.get(b"migrated").map_err(io)?.is_some() {
            return Ok(());
        }
        let names = self.db.tree_names();
        let mut batch = ::sled::Batch::default();
        let mut n = 0usize;
        for name in OLD {
            if !names.iter().any(|t| t.as_ref() == name.as_bytes()) {
                continue;
            }
            let old = self.db.open_tree(name).map_err(io)?;
            for kv in old.iter() {
                let (k, v) = kv.map_err(io)?;
                let mut key = format!("{name}/").into_bytes();
                key.extend_from_slice(&k);
                batch.insert(key, encode(1, &v));
                n += 1;
            }
        }
        self.tree.apply_batch(batch).map_err(io)?;
        if n > 0 {
            self.meta.insert(REV_KEY, &1i64.to_be_bytes()).map_err(io)?;
            tracing::info!(
                entries = n,
                "shared state copied into the shared store's layout"
            );
        }
        self.meta.insert(b"migrated", &[1]).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn check(&self, c: &Cond) -> Result<bool, StoreError> {
        Ok(match c {
            Cond::Absent(k) => self.tree.get(k).map_err(io)?.is_none(),
            Cond::Equals(k, v) => match self.tree.get(k).map_err(io)? {
                Some(raw) => decode(k, &raw)?.value == *v,
                None => false,
            },
            Cond::Unchanged(k, rev) => match self.tree.get(k).map_err(io)? {
                Some(raw) => decode(k, &raw)?.revision == *rev,
                None => *rev == 0,
            },
        })
    }
}

#[async_trait::async_trait]
impl KvStore for SledKv {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.tree.get(key).map_err(io)? {
            Some(raw) => decode(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    async fn range(&self, prefix: &[u8]) -> Result<Range, StoreError> {
        // Under the commit lock: the entries and the revision agree.
        let h = self.inner.lock().await;
        let entries = self
            .tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Range {
            entries,
            revision: h.revision,
        })
    }

    async fn commit(&self, txn: Txn) -> Result<Committed, StoreError> {
        let mut h = self.inner.lock().await;
        for c in &txn.when {
            if !self.check(c)? {
                return Ok(Committed::Conflict);
            }
        }
        let revision = h.revision + 1;
        let mut batch = ::sled::Batch::default();
        let mut events = Vec::with_capacity(txn.then.len());
        for op in &txn.then {
            match op {
                Op::Put(k, v) => {
                    batch.insert(k.as_slice(), encode(revision, v));
                    events.push(Event::Put(KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        revision,
                    }));
                }
                Op::Delete(k) => {
                    if self.tree.contains_key(k).map_err(io)? {
                        events.push(Event::Delete {
                            key: k.clone(),
                            revision,
                        });
                    }
                    batch.remove(k.as_slice());
                }
            }
        }
        // The writes and the counter in one sled transaction over both trees.
        use ::sled::Transactional;
        (&self.tree, &self.meta)
            .transaction(|(t, m)| {
                t.apply_batch(&batch)?;
                m.insert(REV_KEY, &revision.to_be_bytes())?;
                Ok::<(), ::sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| io(format!("{e:?}")))?;
        super::sled::flush(&self.db).await.map_err(io)?;
        h.revision = revision;
        for e in &events {
            if h.events.len() == HISTORY {
                if let Some(old) = h.events.pop_front() {
                    h.oldest = old.revision();
                }
            }
            h.events.push_back(e.clone());
        }
        if !events.is_empty() {
            let _ = self.tx.send(Arc::new(events));
        }
        Ok(Committed::Applied(revision))
    }

    async fn watch(&self, prefix: &[u8], after: Revision) -> Result<Watch, StoreError> {
        let h = self.inner.lock().await;
        if after < h.oldest {
            return Err(StoreError::Compacted { revision: h.oldest });
        }
        let prefix = prefix.to_vec();
        let past: Vec<Event> = h
            .events
            .iter()
            .filter(|e| e.revision() > after && e.key().starts_with(&prefix))
            .cloned()
            .collect();
        // Later changes come live: subscribed under the commit lock, so none is missed.
        let last = h.revision;
        let rx = self.tx.subscribe();
        drop(h);
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
            let out = match r {
                Ok(batch) => {
                    let mine: Vec<Event> = batch
                        .iter()
                        .filter(|e| e.revision() > last && e.key().starts_with(&prefix))
                        .cloned()
                        .collect();
                    (!mine.is_empty()).then_some(Ok(mine))
                }
                // Fell behind: the watcher reads the prefix again.
                Err(_) => Some(Err(StoreError::Compacted { revision: last })),
            };
            std::future::ready(out)
        });
        Ok(Box::pin(
            futures_util::stream::iter(super::kv::by_revision(past).into_iter().map(Ok))
                .chain(live),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let store: Arc<dyn KvStore> = Arc::new(SledKv::open(db).unwrap());
        super::super::conformance::run(store, "conformance/").await;
    }

    #[tokio::test]
    async fn revisions_survive_a_restart_and_old_keyspaces_are_copied_in() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let db = ::sled::Config::new().path(dir.path()).open().unwrap();
            db.open_tree("registry.meta")
                .unwrap()
                .insert(b"catalog_version", &7u64.to_be_bytes())
                .unwrap();
            let kv = SledKv::open(db).unwrap();
            let old = kv
                .get(b"registry.meta/catalog_version")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(old.value, 7u64.to_be_bytes());
            match kv.commit(Txn::new().put("k", "v")).await.unwrap() {
                Committed::Applied(r) => r,
                c => panic!("{c:?}"),
            }
        };
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        let kv = SledKv::open(db).unwrap();
        assert_eq!(kv.range(b"").await.unwrap().revision, rev);
        let Committed::Applied(next) = kv.commit(Txn::new().put("k", "w")).await.unwrap() else {
            panic!("not applied")
        };
        assert!(next > rev);
        // History from before the restart is gone: a watch from there must read again.
        assert!(matches!(
            kv.watch(b"", rev - 1).await,
            Err(StoreError::Compacted { .. })
        ));
    }
}
