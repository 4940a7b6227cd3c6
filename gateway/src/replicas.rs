//! The replicas of this city's node, as they announce themselves in the shared store
//! (`replicas/<id>` → the URL of the replica's caller listener): what the Audit API fans
//! out to, so that one replica answers for all of them.

use std::sync::Arc;

use crate::store::kv::{KvStore, Snapshot, Txn};

const PREFIX: &str = "replicas/";

/// This replica's entry in the city's directory of replicas.
#[derive(Clone)]
pub struct Replicas {
    store: Arc<dyn KvStore>,
    snap: Snapshot,
    /// This replica's id (empty: a city that runs one node, no directory).
    pub own: String,
}

impl Replicas {
    pub fn new(store: Arc<dyn KvStore>, snap: Snapshot, own: &str) -> Replicas {
        Replicas {
            store,
            snap,
            own: own.to_string(),
        }
    }

    /// Announces this replica at `url` (nothing for a city that runs one node). A store
    /// that cannot be reached is reported, not fatal: the others fan out without it.
    pub async fn announce(&self, url: &str) {
        if self.own.is_empty() {
            return;
        }
        let txn = Txn::new().put(format!("{PREFIX}{}", self.own), url.as_bytes().to_vec());
        match self.store.commit(txn).await {
            Ok(_) => tracing::info!(replica = %self.own, %url, "replica announced"),
            Err(error) => tracing::warn!(replica = %self.own, %error, "replica not announced"),
        }
    }

    /// Takes this replica out of the directory (on a clean stop).
    pub async fn withdraw(&self) {
        if self.own.is_empty() {
            return;
        }
        let txn = Txn::new().delete(format!("{PREFIX}{}", self.own));
        if let Err(error) = self.store.commit(txn).await {
            tracing::warn!(replica = %self.own, %error, "replica not withdrawn from the directory");
        }
    }

    /// The other replicas: (id, caller URL).
    pub fn others(&self) -> Vec<(String, String)> {
        if self.own.is_empty() {
            return Vec::new();
        }
        self.snap
            .scan(PREFIX.as_bytes())
            .into_iter()
            .filter_map(|kv| {
                let id =
                    String::from_utf8(kv.key.strip_prefix(PREFIX.as_bytes())?.to_vec()).ok()?;
                let url = String::from_utf8(kv.value).ok()?;
                (id != self.own).then_some((id, url))
            })
            .collect()
    }
}
