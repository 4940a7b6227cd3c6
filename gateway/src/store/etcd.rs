//! etcd as the shared store of a city's replicas (`[storage] backend = "etcd"`), through the
//! `etcd-client` crate. Every key lives under the city's prefix (`/tongban/<city>/` by
//! default); revisions are etcd's, conditions are etcd compares, watches are etcd watches
//! resumed from a revision. Requests time out, so an unreachable etcd is `Unavailable`
//! naming it rather than a hang.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TxnOp, WatchOptions,
};
use futures_util::StreamExt;

use super::kv::{Committed, Cond, Event, KeyValue, KvStore, Op, Range, Revision, Txn, Watch};
use super::StoreError;

/// Where the etcd cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key of this city under it, e.g. `/tongban/jinan/`.
    pub prefix: String,
    /// Each request's limit; an etcd that does not answer within it is unavailable.
    pub timeout: Duration,
    pub tls: Option<super::EtcdTls>,
}

/// The shared store in etcd.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    prefix: Vec<u8>,
    endpoints: String,
}

impl EtcdKv {
    /// Connects (lazily: an etcd down at start is retried by each request).
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdKv, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(2), config.timeout)
            .with_keep_alive_while_idle(true);
        let endpoints = config.endpoints.join(",");
        if let Some(tls) = &config.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    StoreError::Unavailable(format!("etcd tls: cannot read {}: {e}", p.display()))
                })
            };
            let mut options_tls = etcd_client::TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.client {
                options_tls = options_tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(options_tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {endpoints}: {e}")))?;
        Ok(EtcdKv {
            client,
            prefix: config.prefix.as_bytes().to_vec(),
            endpoints,
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    fn strip<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        key.strip_prefix(self.prefix.as_slice()).unwrap_or(key)
    }

    fn down(&self, e: etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!("etcd at {} is unreachable: {e}", self.endpoints))
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.strip(kv.key()).to_vec(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }
    }
}

#[async_trait::async_trait]
impl KvStore for EtcdKv {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(|e| self.down(e))?;
        Ok(resp.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn range(&self, prefix: &[u8]) -> Result<Range, StoreError> {
        let resp = self
            .client
            .kv_client()
            .get(self.full(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.down(e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut entries: Vec<KeyValue> = resp.kvs().iter().map(|kv| self.kv(kv)).collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Range { entries, revision })
    }

    async fn commit(&self, txn: Txn) -> Result<Committed, StoreError> {
        let compares: Vec<Compare> = txn
            .when
            .iter()
            .map(|c| match c {
                Cond::Absent(k) => Compare::version(self.full(k), CompareOp::Equal, 0),
                Cond::Equals(k, v) => Compare::value(self.full(k), CompareOp::Equal, v.clone()),
                Cond::Unchanged(k, rev) => {
                    Compare::mod_revision(self.full(k), CompareOp::Equal, *rev)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .then
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(self.full(k), v.clone(), None),
                Op::Delete(k) => TxnOp::delete(self.full(k), None),
            })
            .collect();
        let resp = self
            .client
            .kv_client()
            .txn(etcd_client::Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| self.down(e))?;
        if resp.succeeded() {
            Ok(Committed::Applied(
                resp.header().map_or(0, |h| h.revision()),
            ))
        } else {
            Ok(Committed::Conflict)
        }
    }

    async fn watch(&self, prefix: &[u8], after: Revision) -> Result<Watch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1)
            .with_progress_notify();
        let stream = self
            .client
            .watch_client()
            .watch(self.full(prefix), Some(options))
            .await
            .map_err(|e| self.down(e))?;
        let this = self.clone();
        let events = stream.flat_map(move |r| {
            let out: Vec<Result<Vec<Event>, StoreError>> = match r {
                Err(e) => vec![Err(this.down(e))],
                Ok(resp) if resp.compact_revision() > 0 => vec![Err(StoreError::Compacted {
                    revision: resp.compact_revision(),
                })],
                Ok(resp) if resp.canceled() => vec![Err(StoreError::Unavailable(format!(
                    "etcd at {} cancelled the watch: {}",
                    this.endpoints,
                    resp.cancel_reason()
                )))],
                Ok(resp) => super::kv::by_revision(resp.events().iter().filter_map(|e| {
                    let kv = e.kv()?;
                    Some(match e.event_type() {
                        EventType::Put => Event::Put(this.kv(kv)),
                        EventType::Delete => Event::Delete {
                            key: this.strip(kv.key()).to_vec(),
                            revision: kv.mod_revision(),
                        },
                    })
                }))
                .into_iter()
                .map(Ok)
                .collect(),
            };
            futures_util::stream::iter(out)
        });
        Ok(Box::pin(events))
    }
}
