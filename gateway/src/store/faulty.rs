//! A store that fails on demand, around any other: what the conformance suite and the
//! tests use to show how the node behaves when its store (etcd) is unreachable.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;

use super::kv::{Committed, KeyValue, KvStore, Range, Revision, Txn, Watch};
use super::StoreError;

/// What to break.
#[derive(Default)]
pub struct Faults {
    /// Every operation fails `Unavailable`, and open watches end with it.
    pub down: AtomicBool,
    /// The next n commits fail `Unavailable` (without writing).
    pub fail_commits: AtomicU32,
}

/// `inner`, failing as `faults` say.
pub struct Faulty {
    inner: Arc<dyn KvStore>,
    faults: Arc<Faults>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn KvStore>) -> (Faulty, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Faulty {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.faults.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(format!(
                "the {} store is unreachable (injected)",
                self.inner.backend()
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl KvStore for Faulty {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.up()?;
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &[u8]) -> Result<Range, StoreError> {
        self.up()?;
        self.inner.range(prefix).await
    }

    async fn commit(&self, txn: Txn) -> Result<Committed, StoreError> {
        self.up()?;
        let failing = self
            .faults
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::Unavailable(format!(
                "the {} store failed the commit (injected)",
                self.inner.backend()
            )));
        }
        self.inner.commit(txn).await
    }

    async fn watch(&self, prefix: &[u8], after: Revision) -> Result<Watch, StoreError> {
        self.up()?;
        let faults = self.faults.clone();
        let backend = self.inner.backend();
        let inner = self.inner.watch(prefix, after).await?;
        // Yields `Unavailable` once the store goes down (checked as events come, and every
        // 100 ms between them), and nothing after it.
        let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
            std::time::Duration::from_millis(100),
        ))
        .map(|_| None);
        let merged = futures_util::stream::select(inner.map(Some), ticks);
        let mut broken = false;
        Ok(Box::pin(merged.filter_map(move |item| {
            let out = if broken {
                None
            } else if faults.down.load(Ordering::SeqCst) {
                broken = true;
                Some(Err(StoreError::Unavailable(format!(
                    "the {backend} store is unreachable (injected)"
                ))))
            } else {
                item
            };
            std::future::ready(out)
        })))
    }
}
