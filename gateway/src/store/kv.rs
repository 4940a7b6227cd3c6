//! The shared store: the state the replicas of one city share (registry, consents and
//! revocations), behind an async trait that a replicated store can stand behind.
//!
//! The contract, which [`super::conformance`] checks of every backend:
//! - keys are ordered bytes; every change gets a [`Revision`] of the whole store, growing;
//! - [`KvStore::commit`] applies a [`Txn`] atomically (all its writes or none) and only when
//!   all its conditions hold; when it returns `Applied`, the change is durable;
//! - [`KvStore::watch`] delivers, in revision order, every change under a prefix made after
//!   a given revision, or fails with [`StoreError::Compacted`] when the store no longer
//!   holds that history (the watcher then reads the prefix again);
//! - one writer at a time is the store's business, not the caller's: two nodes (replicas)
//!   may commit concurrently, and conditions are how they avoid lost updates.
//!
//! Callers never read the store per call: they keep a [`Snapshot`] of a prefix, loaded
//! once and kept current by a watch, and read that.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::StoreError;

/// The store's logical clock: each committed change has a greater one.
pub type Revision = i64;

/// A key, its value, and the revision that last changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub enum Cond {
    /// The key is absent.
    Absent(Vec<u8>),
    /// The key holds exactly this value.
    Equals(Vec<u8>, Vec<u8>),
    /// The key was last changed at this revision (0: absent).
    Unchanged(Vec<u8>, Revision),
}

/// A write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Conditions, and the writes applied atomically when all hold.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub when: Vec<Cond>,
    pub then: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, c: Cond) -> Txn {
        self.when.push(c);
        self
    }
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Txn {
        self.then.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Txn {
        self.then.push(Op::Delete(key.into()));
        self
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// Every condition held; the writes are durable at this revision.
    Applied(Revision),
    /// A condition did not hold; nothing was written.
    Conflict,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: Vec<u8>, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &[u8] {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// The entries under a prefix, in key order, as of `revision`.
#[derive(Clone, Debug, Default)]
pub struct Range {
    pub entries: Vec<KeyValue>,
    pub revision: Revision,
}

/// The changes after a revision, in order, one item per revision (every change of one
/// transaction under the prefix together); ends with an error when the watch breaks.
pub type Watch = Pin<Box<dyn Stream<Item = Result<Vec<Event>, StoreError>> + Send>>;

/// Groups events (in revision order) into one batch per revision.
pub fn by_revision(events: impl IntoIterator<Item = Event>) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(batch) if batch.first().map(Event::revision) == Some(e.revision()) => {
                batch.push(e)
            }
            _ => out.push(vec![e]),
        }
    }
    out
}

/// The shared store of a city's replicas.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The backend's name, for logs and status.
    fn backend(&self) -> &'static str;
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;
    /// Every entry whose key starts with `prefix`.
    async fn range(&self, prefix: &[u8]) -> Result<Range, StoreError>;
    /// Applies `txn` atomically when its conditions hold; durable when it returns.
    async fn commit(&self, txn: Txn) -> Result<Committed, StoreError>;
    /// Every change under `prefix` with a revision greater than `after`.
    async fn watch(&self, prefix: &[u8], after: Revision) -> Result<Watch, StoreError>;
}

/// A prefix of the store held in memory and kept current by a watch: what the node reads
/// on its paths, so that no call waits for the store.
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<SnapshotInner>,
}

struct SnapshotInner {
    prefix: Vec<u8>,
    state: RwLock<State>,
    /// The revision the snapshot has reached (every change up to it applied).
    seen: watch::Sender<Revision>,
    /// Whether the watch is live (false while it reconnects after a store failure).
    live: watch::Sender<bool>,
    /// Dropped with the snapshot: its follower stops (and lets go of the store) at once.
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Vec<u8>, KeyValue>,
}

impl Snapshot {
    /// Loads `prefix` and follows it until the returned snapshot and its clones are dropped.
    /// Fails when the store cannot be read at all (the node does not start on nothing).
    pub async fn follow(store: Arc<dyn KvStore>, prefix: &[u8]) -> Result<Snapshot, StoreError> {
        let range = store.range(prefix).await?;
        let (seen, _) = watch::channel(range.revision);
        let (live, _) = watch::channel(true);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let inner = Arc::new(SnapshotInner {
            prefix: prefix.to_vec(),
            state: RwLock::new(State::default()),
            seen,
            live,
            _stop: stop,
        });
        inner.load(range);
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped => {}
                _ = follow_loop(store, weak) => {}
            }
        });
        Ok(Snapshot { inner })
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.read().entries.get(key).cloned()
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.read()
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revision the snapshot has reached.
    pub fn revision(&self) -> Revision {
        *self.inner.seen.borrow()
    }

    /// Whether the snapshot is following the store now.
    pub fn live(&self) -> bool {
        *self.inner.live.borrow()
    }

    /// Follows [`Self::live`] as it changes.
    pub fn liveness(&self) -> watch::Receiver<bool> {
        self.inner.live.subscribe()
    }

    /// Waits until the snapshot has applied every change up to `revision` (a writer reads
    /// its own write).
    pub async fn reach(&self, revision: Revision) {
        let mut rx = self.inner.seen.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Notified after every change applied.
    pub fn changes(&self) -> watch::Receiver<Revision> {
        self.inner.seen.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SnapshotInner {
    fn load(&self, range: Range) {
        {
            let mut st = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.entries = range
                .entries
                .into_iter()
                .map(|kv| (kv.key.clone(), kv))
                .collect();
        }
        self.seen.send_replace(range.revision);
    }

    /// Applies the changes of one revision, then makes that revision visible (a reader who
    /// waited for it sees all of the transaction, never half).
    fn apply(&self, batch: Vec<Event>) {
        let Some(rev) = batch.iter().map(Event::revision).max() else {
            return;
        };
        {
            let mut st = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in batch {
                match e {
                    Event::Put(kv) => {
                        st.entries.insert(kv.key.clone(), kv);
                    }
                    Event::Delete { key, .. } => {
                        st.entries.remove(&key);
                    }
                }
            }
        }
        self.seen.send_if_modified(|r| {
            if rev > *r {
                *r = rev;
                true
            } else {
                false
            }
        });
    }
}

/// Follows the store until the snapshot is dropped (the caller stops it then); on a broken
/// watch, retries with backoff from the revision reached, reading the prefix again when
/// that history is gone.
async fn follow_loop(store: Arc<dyn KvStore>, weak: std::sync::Weak<SnapshotInner>) {
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let after = *inner.seen.borrow();
        let prefix = inner.prefix.clone();
        drop(inner);
        let failure = match store.watch(&prefix, after).await {
            Ok(mut w) => {
                if let Some(inner) = weak.upgrade() {
                    inner.live.send_replace(true);
                }
                loop {
                    let next = w.next().await;
                    let Some(inner) = weak.upgrade() else { return };
                    match next {
                        Some(Ok(e)) => {
                            backoff = std::time::Duration::from_millis(50);
                            inner.apply(e);
                        }
                        Some(Err(e)) => break e,
                        None => break StoreError::Unavailable("the watch ended".into()),
                    }
                }
            }
            Err(e) => e,
        };
        let Some(inner) = weak.upgrade() else { return };
        inner.live.send_replace(false);
        if let StoreError::Compacted { .. } = failure {
            match store.range(&prefix).await {
                Ok(range) => {
                    inner.load(range);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "snapshot cannot reload its prefix"),
            }
        } else {
            tracing::warn!(error = %failure, backend = store.backend(), "store watch broken, following from the last snapshot");
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
    }
}
