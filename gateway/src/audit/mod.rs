//! Tamper-evident audit (DESIGN §5): one record per exchange on every node it passes, in an
//! append-only hash-chained log ([`log`]), indexed by a flat file of entries ([`index`]), with signed
//! checkpoints of the log head exchanged between nodes and signed receipts ([`receipt`]).

pub mod api;
pub mod archive;
pub mod change;
pub mod exchange;
pub mod index;
pub mod log;
pub mod merkle;
pub mod proof;
pub mod receipt;
pub mod tsa;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tongban_proto::audit::v1::{
    AuditRecord, Checkpoint, ConsistencyProof, InclusionProof, SignedCheckpoint,
};

use crate::store::kv::{KvStore, Snapshot};
use crate::store::{Keyspace, Store};
use crate::trust::{self, NodeIdentity};
use index::{AuditIndex, Filter};
use log::{Appended, AuditError, AuditLog, Hash, LogOptions, VerifyReport};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The audit of one node.
pub struct Auditor {
    pub city: String,
    log: AuditLog,
    index: AuditIndex,
    /// The Merkle tree of the log, for proofs (follows the log with the index).
    tree: Arc<merkle::TreeStore>,
    identity: Arc<NodeIdentity>,
    receipt_key: trust::NodeJwtSigner,
    /// seq → SignedCheckpoint (this node's)
    checkpoints: Arc<dyn Keyspace>,
    /// city → latest SignedCheckpoint received from that peer: here until the node shares
    /// them with its replicas ([`Self::share_peer_checkpoints`]).
    peer_checkpoints: Arc<dyn Keyspace>,
    /// The store the city's replicas share, and its snapshot, once the node set it: where
    /// the checkpoints held of peers are then.
    shared: std::sync::OnceLock<(Arc<dyn KvStore>, Snapshot)>,
    /// city → evidence of a peer contradicting an earlier checkpoint
    conflicts: Arc<dyn Keyspace>,
    /// The last seq the index thread has indexed.
    indexed: watch::Receiver<u64>,
    /// Seals of peers' receipts verified here.
    seals: receipt::VerifiedSeals,
    /// Set when a peer holds a checkpoint this log contradicts: the node stops serving.
    contradiction: watch::Sender<Option<String>>,
    /// Holds the index thread while set (see [`Auditor::hold_index`]).
    index_hold: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// Whether a peer has confirmed this log since the node started.
    anchor: watch::Sender<Anchor>,
    /// Whether calls wait for the anchor (`audit.anchor = "wait"`).
    anchor_required: std::sync::atomic::AtomicBool,
    /// This replica's id (empty for a city that runs one node): in every record and
    /// checkpoint, and what peers keep this log's checkpoints under.
    replica: std::sync::OnceLock<String>,
}

/// Where a peer replica's checkpoints are kept: `city` for a single node (as before replicas),
/// `city#replica` for a replica with an id.
/// Where the checkpoints held of peers are in the shared store (the key: [`peer_key`]).
const HELD_PREFIX: &str = "audit/peer_checkpoints/";

fn held_key(key: &[u8]) -> Vec<u8> {
    [HELD_PREFIX.as_bytes(), key].concat()
}

fn peer_key(city: &str, replica: &str) -> Vec<u8> {
    if replica.is_empty() {
        city.as_bytes().to_vec()
    } else {
        format!("{city}#{replica}").into_bytes()
    }
}

/// Whether this node's audit log has been checked, since it started, against the checkpoints
/// its peers hold of it (the defence against a node restarted from an older copy of its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// No peer has answered yet.
    Unchecked,
    /// This peer answered, and its checkpoint of this log (if it held one) agrees.
    Confirmed(String),
    /// The node has no peers: nobody to ask.
    Alone,
    /// No peer answered within `audit.anchor_wait_s` (the node stops).
    GaveUp(String),
}

impl Anchor {
    pub fn confirmed(&self) -> bool {
        matches!(self, Anchor::Confirmed(_) | Anchor::Alone)
    }

    /// For status: "confirmed by qingdao", "unchecked", …
    pub fn describe(&self) -> String {
        match self {
            Anchor::Unchecked => {
                "unchecked: no peer has confirmed this node's audit log yet".into()
            }
            Anchor::Confirmed(p) => format!("confirmed by {p}"),
            Anchor::Alone => "no peers to confirm it".into(),
            Anchor::GaveUp(why) => why.clone(),
        }
    }
}

/// Why a proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("no record {seq}: the log holds records 1 to {head}")]
    NoSuchRecord { seq: u64, head: u64 },
    #[error("no checkpoint of this node covers record {0} yet")]
    NotCheckpointed(u64),
    #[error("this node signed no checkpoint at seq {0}")]
    NoCheckpoint(u64),
    #[error("no record {0} about you")]
    NotYours(u64),
    #[error("from_seq {from} is after to_seq {to}")]
    Backwards { from: u64, to: u64 },
    #[error("record {0} is not in the index (tongban audit reindex)")]
    NotIndexed(u64),
    #[error("the merkle tree has not reached seq {seq} yet (indexed up to {indexed}): ask again")]
    Lagging { seq: u64, indexed: u64 },
    #[error("merkle tree: {0}")]
    Tree(merkle::ProofError),
    #[error("audit log: {0}")]
    Audit(AuditError),
}

impl crate::error::ApiError for ProveError {
    fn code(&self) -> tonic::Code {
        match self {
            ProveError::NoSuchRecord { .. }
            | ProveError::NoCheckpoint(_)
            | ProveError::NotYours(_) => tonic::Code::NotFound,
            ProveError::Backwards { .. } => tonic::Code::InvalidArgument,
            ProveError::NotCheckpointed(_) | ProveError::Lagging { .. } => tonic::Code::Unavailable,
            ProveError::NotIndexed(_) | ProveError::Tree(_) | ProveError::Audit(_) => {
                tracing::error!(error = %self, "audit proof failed");
                tonic::Code::Internal
            }
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            ProveError::NoSuchRecord { .. } | ProveError::NotYours(_) => "AUDIT_RECORD_NOT_FOUND",
            ProveError::NoCheckpoint(_) => "AUDIT_CHECKPOINT_NOT_FOUND",
            ProveError::Backwards { .. } => "INVALID_REQUEST",
            ProveError::NotCheckpointed(_) | ProveError::Lagging { .. } => "AUDIT_BEHIND",
            ProveError::NotIndexed(_) | ProveError::Tree(_) | ProveError::Audit(_) => "AUDIT_STORE",
        }
    }
    fn violations(&self) -> Vec<crate::error::FieldViolation> {
        match self {
            ProveError::Backwards { .. } => vec![crate::error::FieldViolation::new(
                "consistency.from_seq",
                self.to_string(),
            )],
            _ => Vec::new(),
        }
    }
}

crate::into_status!(ProveError);

/// How much of the log a read reflects (`tongban.audit.v1.Coverage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// The last seq committed when the read began.
    pub head_seq: u64,
    /// The last seq indexed when the read was answered.
    pub indexed_seq: u64,
}

impl Coverage {
    pub fn complete(&self) -> bool {
        self.indexed_seq >= self.head_seq
    }

    pub fn to_proto(self) -> tongban_proto::audit::v1::Coverage {
        tongban_proto::audit::v1::Coverage {
            head_seq: self.head_seq,
            indexed_seq: self.indexed_seq.min(self.head_seq),
            complete: self.complete(),
        }
    }
}

/// The Merkle tree store's directory inside the log directory.
pub const MERKLE_DIR: &str = "merkle";

/// Group commits the index may lag behind the log.
pub const INDEX_QUEUE_GROUPS: usize = 256;

/// Longest a read waits for the index to reach the committed head.
const INDEX_CATCH_UP: Duration = Duration::from_secs(2);

fn storage(e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: "state".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Walks the log from seq 1 and (re)indexes every entry after `after`, and adds to the
/// Merkle tree every entry after its size.
pub fn index_log(
    dir: &Path,
    index: &AuditIndex,
    after: u64,
    tree: &merkle::TreeStore,
) -> Result<VerifyReport, AuditError> {
    let mut failed = None;
    // A pruned log starts after its base: the index keeps a place for each archived record.
    if let Some(base) = log::Base::read(dir)? {
        index.skip_to(base.seq.max(after)).map_err(storage)?;
    }
    let tree_size = tree.size();
    let mut leaves = Vec::new();
    let report = log::verify_dir(dir, &[], |r| {
        if r.entry.seq > after && failed.is_none() {
            let record = r.entry.record.clone().unwrap_or_default();
            if let Err(e) = index.insert_parts(r.entry.seq, r.location, &record) {
                failed = Some(e.to_string());
            }
        }
        if r.entry.seq > tree_size {
            leaves.push(r.leaf);
            if leaves.len() >= 4096 {
                if let Err(e) = tree.append(&leaves) {
                    failed = Some(e.to_string());
                }
                leaves.clear();
            }
        }
    })?;
    if let Err(e) = tree.append(&leaves) {
        failed = Some(e.to_string());
    }
    match failed {
        Some(e) => Err(storage(e)),
        None => Ok(report),
    }
}

impl Auditor {
    /// Opens the log in `dir` (recovering a torn tail) and its indexes in `db`, indexing any
    /// entries committed but not yet indexed before a crash.
    pub fn open(
        dir: &Path,
        store: &dyn Store,
        opts: LogOptions,
        identity: Arc<NodeIdentity>,
    ) -> Result<Arc<Auditor>, AuditError> {
        let index = AuditIndex::open(dir).map_err(storage)?;
        let tree = Arc::new(merkle::TreeStore::open(&dir.join(MERKLE_DIR)).map_err(storage)?);
        let checkpoints = store.keyspace("audit.checkpoints").map_err(storage)?;
        // Bounded: the index lags the log by at most this many group commits (each up to
        // the writer's batch), and the writer waits rather than queue more.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Appended>>(INDEX_QUEUE_GROUPS);
        // The node's own signed checkpoints anchor the log: one it disagrees with, or ends
        // before, refuses to open.
        let log = AuditLog::open_anchored(dir, opts, tx, &checkpoint_hashes(&checkpoints))?;
        // The index follows the log: entries past its head go (the log was cut back to
        // a torn tail's start, or restored), a missing tail is indexed now.
        index.truncate_to(log.head().seq).map_err(storage)?;
        tree.truncate_to(log.head().seq).map_err(storage)?;
        let up_to = index.indexed_up_to();
        if up_to < log.head().seq || tree.size() < log.head().seq {
            index_log(dir, &index, up_to, &tree)?;
        }
        if tree.root(log.head().seq).map_err(storage)? != log.head().root {
            // Derived data that disagrees with the log (a damaged level file): the log is
            // the source of truth, so the tree is rebuilt from it.
            tracing::warn!(
                seq = log.head().seq,
                "the audit merkle tree disagreed with the log; rebuilding it"
            );
            rebuild_tree(dir, &tree)?;
            index_log(dir, &index, log.head().seq, &tree)?;
        }
        let idx = index.clone();
        let tree_w = tree.clone();
        let (indexed_tx, indexed) = watch::channel(log.head().seq);
        let index_hold = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let hold = index_hold.clone();
        std::thread::Builder::new()
            .name("audit-index".into())
            .spawn(move || {
                for batch in rx {
                    {
                        let (held, released) = &*hold;
                        let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                        while *h {
                            h = released.wait(h).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    if let Err(error) = idx.insert_batch(&batch) {
                        let seq = batch.first().map(|a| a.seq);
                        tracing::error!(%error, ?seq, "audit index update failed (tongban audit reindex rebuilds it)");
                    }
                    let leaves: Vec<log::Hash> = batch.iter().map(|a| a.leaf).collect();
                    if let Err(error) = tree_w.append(&leaves) {
                        let seq = batch.first().map(|a| a.seq);
                        tracing::error!(%error, ?seq, "audit merkle tree update failed (tongban audit reindex rebuilds it)");
                    }
                    if let Some(last) = batch.last() {
                        indexed_tx.send_replace(last.seq);
                    }
                }
            })
            .map_err(|source| AuditError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Arc::new(Auditor {
            city: identity.city.clone(),
            replica: std::sync::OnceLock::new(),
            log,
            index,
            tree,
            receipt_key: identity.jwt_signer(),
            identity,
            checkpoints,
            peer_checkpoints: store.keyspace("audit.peer_checkpoints").map_err(storage)?,
            shared: std::sync::OnceLock::new(),
            conflicts: store
                .keyspace("audit.checkpoint_conflicts")
                .map_err(storage)?,
            indexed,
            seals: receipt::VerifiedSeals::new(receipt::SEALS_CAPACITY),
            contradiction: watch::Sender::new(None),
            index_hold,
            anchor: watch::Sender::new(Anchor::Unchecked),
            anchor_required: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Whether calls wait until a peer has confirmed the log (`audit.anchor = "wait"`).
    pub fn require_anchor(&self, required: bool) {
        self.anchor_required
            .store(required, std::sync::atomic::Ordering::Relaxed);
    }

    /// This node's anchor now.
    pub fn anchor(&self) -> Anchor {
        self.anchor.borrow().clone()
    }

    pub fn watch_anchor(&self) -> watch::Receiver<Anchor> {
        self.anchor.subscribe()
    }

    /// Sets the anchor: a peer confirmed the log, the node has no peers, or it gave up. A
    /// confirmation stays; giving up is only possible while unchecked.
    pub fn set_anchor(&self, to: Anchor) {
        self.anchor.send_if_modified(|a| {
            let change = matches!(
                (&*a, &to),
                (Anchor::Unchecked, _) | (Anchor::GaveUp(_), Anchor::Confirmed(_))
            );
            if change {
                if let Anchor::Confirmed(p) = &to {
                    tracing::info!(peer = %p, "audit log anchored: the peer's checkpoint of it agrees");
                }
                *a = to;
            }
            change
        });
    }

    /// Why this node must not serve calls now, if it must not: a peer contradicted its log,
    /// or it waits for a peer to confirm it.
    pub fn refusal(&self) -> Option<String> {
        if let Some(why) = self.contradicted() {
            return Some(why);
        }
        let waiting = self
            .anchor_required
            .load(std::sync::atomic::Ordering::Relaxed);
        match self.anchor() {
            Anchor::Unchecked if waiting => Some(
                "it waits for a peer to confirm its audit log before serving (audit.anchor = \"wait\")".into(),
            ),
            Anchor::GaveUp(why) => Some(why),
            _ => None,
        }
    }

    /// Holds (`true`) or releases the index thread: a failure-injecting knob for tests and
    /// drills. While held, appends stay durable and the index falls behind, so reads answer
    /// with what is indexed and say they are incomplete ([`Coverage`]).
    #[doc(hidden)]
    pub fn hold_index(&self, held: bool) {
        let (h, released) = &*self.index_hold;
        *h.lock().unwrap_or_else(|p| p.into_inner()) = held;
        released.notify_all();
    }

    /// Whether the log's directory takes a write now: a small file is written, synced and
    /// removed beside the segments (a full or read-only disk fails it). Blocking.
    pub fn probe_writable(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = self.log.dir().join(".writable-probe");
        let written = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&[0u8; 4096])?;
            f.sync_data()
        });
        let removed = std::fs::remove_file(&path);
        written?;
        removed
    }

    /// Appends a record (an exchange's, or a state change's: [`change`]); resolves once it
    /// is durable.
    pub async fn record(&self, mut r: AuditRecord) -> Result<Appended, AuditError> {
        if r.replica.is_empty() {
            r.replica = self.replica().to_string();
        }
        self.log.append(r).await
    }

    /// This log is kept by replica `replica` of the city's node (`replica` in the config);
    /// set once, before the node serves.
    pub fn set_replica(&self, replica: &str) {
        let _ = self.replica.set(replica.to_string());
    }

    /// This replica's id (empty for a city that runs one node).
    pub fn replica(&self) -> &str {
        self.replica.get().map_or("", String::as_str)
    }

    /// This node's receipt for a committed provider-side record: under its group commit's
    /// seal, signed once for the group by the first exchange that asks.
    pub fn receipt(&self, a: &Appended) -> Option<String> {
        let leaf = a.receipt.as_ref()?;
        match leaf
            .group
            .receipt(leaf.index, &self.city, &self.receipt_key)
        {
            Ok(r) => Some(r),
            Err(error) => {
                tracing::error!(%error, "receipt signing failed");
                None
            }
        }
    }

    /// Receipts' seals already verified here (the home node checks each group's once).
    pub fn verified_seals(&self) -> &receipt::VerifiedSeals {
        &self.seals
    }

    pub fn head(&self) -> log::Head {
        self.log.head()
    }

    pub fn subscribe(&self) -> watch::Receiver<log::Head> {
        self.log.subscribe()
    }

    pub fn read(&self, seq: u64) -> Result<AuditRecord, AuditError> {
        self.read_located(seq, self.index.location(seq))
    }

    fn read_located(
        &self,
        seq: u64,
        loc: Option<log::Location>,
    ) -> Result<AuditRecord, AuditError> {
        let loc = loc.ok_or_else(|| AuditError::Corrupt {
            seq,
            reason: "not in the index (tongban audit reindex)".into(),
        })?;
        let r = log::read_at(self.log.dir(), loc)?;
        let mut rec = r.entry.record.unwrap_or_default();
        rec.seq = r.entry.seq;
        Ok(rec)
    }

    /// Waits (bounded) until the index covers everything committed so far, so that a read
    /// sees every exchange whose answer has already been released; says how far it got.
    pub async fn caught_up(&self) -> Coverage {
        let head = self.head().seq;
        let mut rx = self.indexed.clone();
        let _ = tokio::time::timeout(INDEX_CATCH_UP, rx.wait_for(|s| *s >= head)).await;
        let indexed = *rx.borrow();
        Coverage {
            head_seq: head,
            indexed_seq: indexed,
        }
    }

    fn read_all(&self, seqs: impl IntoIterator<Item = u64>) -> Vec<AuditRecord> {
        let seqs: Vec<u64> = seqs.into_iter().collect();
        let locs = self.index.locations(&seqs);
        seqs.into_iter()
            .zip(locs)
            .filter_map(|(s, l)| self.read_located(s, l).ok())
            .collect()
    }

    pub async fn records_for_request(&self, request_id: &str) -> Vec<AuditRecord> {
        self.records_for_request_covered(request_id).await.0
    }

    /// [`Self::records_for_request`], with how much of the log it reflects.
    pub async fn records_for_request_covered(
        &self,
        request_id: &str,
    ) -> (Vec<AuditRecord>, Coverage) {
        let coverage = self.caught_up().await;
        (self.read_all(self.index.by_request(request_id)), coverage)
    }

    pub async fn query(&self, f: &Filter) -> (Vec<AuditRecord>, Option<index::Cursor>) {
        let (records, next, _) = self.query_covered(f).await;
        (records, next)
    }

    /// [`Self::query`], with how much of the log it reflects.
    pub async fn query_covered(
        &self,
        f: &Filter,
    ) -> (Vec<AuditRecord>, Option<index::Cursor>, Coverage) {
        let coverage = self.caught_up().await;
        let (hits, next) = self.index.query(f);
        (
            self.read_all(hits.into_iter().map(|(_, s)| s)),
            next,
            coverage,
        )
    }

    /// A subject's records, newest first, with how much of the log they reflect.
    pub async fn for_subject(&self, pseudonym: &str, limit: usize) -> (Vec<AuditRecord>, Coverage) {
        let coverage = self.caught_up().await;
        (
            self.read_all(self.index.by_subject(pseudonym, limit)),
            coverage,
        )
    }

    fn own_checkpoint_hashes(&self) -> Vec<(u64, Hash)> {
        checkpoint_hashes(&self.checkpoints)
    }

    /// What opening the log repaired (a torn tail cut and quarantined), if anything.
    pub fn repaired(&self) -> Option<&log::Repair> {
        self.log.repaired()
    }

    /// Checks a checkpoint of *this* node that peer `peer` holds against the log: signed by
    /// this node, and the log has the same record at that seq. A peer that saw a longer or
    /// different log means this node's log was cut, rolled back or rewritten; the error
    /// names both heads.
    pub fn check_anchor(&self, peer: &str, signed: &SignedCheckpoint) -> Result<(), String> {
        let own_cert = self.identity.chain.first().ok_or("no node certificate")?;
        trust::verify_signature(own_cert, &signed.checkpoint, &signed.signature).map_err(|e| {
            format!(
                "peer `{peer}` returned a checkpoint of this node that this node did not sign: {e}"
            )
        })?;
        let cp = Checkpoint::decode(signed.checkpoint.as_slice()).map_err(|e| e.to_string())?;
        if cp.city != self.city {
            return Err(format!(
                "peer `{peer}` returned a checkpoint of `{}`, not of `{}`",
                cp.city, self.city
            ));
        }
        if cp.replica != self.replica() {
            return Err(format!(
                "peer `{peer}` returned a checkpoint of replica `{}`, not of this replica `{}`",
                cp.replica,
                self.replica()
            ));
        }
        let head = self.head();
        let theirs = format!(
            "seq {} hash {}",
            cp.seq,
            hex::encode(&cp.head_hash[..cp.head_hash.len().min(8)])
        );
        let ours = format!("seq {} hash {}", head.seq, log::short(&head.hash));
        if cp.seq > head.seq {
            return Err(format!(
                "peer `{peer}` holds a checkpoint of this node's audit log at {theirs}, but the log here ends at {ours}: records were removed or the log was rolled back"
            ));
        }
        if cp.seq == 0 {
            return Ok(());
        }
        // A checkpoint of records pruned (archived) since: checked by the tree, which keeps
        // them, or at the base itself by its hash.
        if let Ok(Some(base)) = log::Base::read(self.log.dir()) {
            if cp.seq <= base.seq {
                let agrees = if cp.seq == base.seq {
                    base.hash.as_slice() == cp.head_hash.as_slice()
                } else {
                    cp.tree_root.is_empty()
                        || self
                            .tree
                            .root(cp.seq)
                            .is_ok_and(|r| r.as_slice() == cp.tree_root.as_slice())
                };
                return if agrees {
                    Ok(())
                } else {
                    Err(format!(
                        "peer `{peer}` holds a checkpoint of this node's audit log at {theirs}, which the archived part of the log (up to seq {}) contradicts",
                        base.seq
                    ))
                };
            }
        }
        let here = self.entry_hash(cp.seq).map_err(|e| e.to_string())?;
        // The tree too, where the checkpoint has one and the store has reached it.
        let tree_differs = !cp.tree_root.is_empty()
            && self.tree.size() >= cp.seq
            && self
                .tree
                .root(cp.seq)
                .is_ok_and(|r| r.as_slice() != cp.tree_root.as_slice());
        if here.as_slice() != cp.head_hash.as_slice() || tree_differs {
            return Err(format!(
                "peer `{peer}` holds a checkpoint of this node's audit log at {theirs}, but the record here at seq {} has hash {} (head {ours}): the log was rewritten or replaced",
                cp.seq,
                log::short(&here)
            ));
        }
        Ok(())
    }

    /// The hash of the entry at `seq`.
    fn entry_hash(&self, seq: u64) -> Result<Hash, AuditError> {
        if let Some(loc) = self.index.location(seq) {
            if let Ok(r) = log::read_at(self.log.dir(), loc) {
                if r.entry.seq == seq {
                    return Ok(r.hash);
                }
            }
        }
        // Not indexed (yet): walk the log.
        let mut found = None;
        log::verify_dir_until(self.log.dir(), &[], Some(seq), |r| {
            if r.entry.seq == seq {
                found = Some(r.hash);
            }
        })?;
        found.ok_or_else(|| AuditError::Corrupt {
            seq,
            reason: "not in the log".into(),
        })
    }

    /// Verifies the whole chain, including against this node's own signed checkpoints.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        log::verify_chain(self.log.dir(), &self.own_checkpoint_hashes())
    }

    /// Verifies the chain up to `to_seq` (0: the head) and reports on `from_seq..=to_seq`.
    /// The walk starts at seq 1 either way: each entry's hash depends on all before it.
    pub fn verify_range(&self, from_seq: u64, to_seq: u64) -> Result<VerifyReport, AuditError> {
        let mut in_range = 0;
        let mut r = log::verify_dir_until(
            self.log.dir(),
            &self.own_checkpoint_hashes(),
            (to_seq > 0).then_some(to_seq),
            |e| {
                if e.entry.seq >= from_seq {
                    in_range += 1;
                }
            },
        )?;
        r.records = in_range;
        Ok(r)
    }

    /// Signs the current head if it moved since the last checkpoint.
    pub fn checkpoint_now(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        // Only what is on disk: no crash may leave the log shorter than a checkpoint.
        let head = self.log.durable_head();
        let last = self
            .checkpoints
            .last()
            .map_err(storage)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if head.seq == 0 || head.seq <= last {
            return Ok(None);
        }
        let cp = Checkpoint {
            city: self.city.clone(),
            seq: head.seq,
            head_hash: head.hash.to_vec(),
            at_ms: now_ms(),
            tree_root: head.root.to_vec(),
            replica: self.replica().to_string(),
        };
        let bytes = cp.encode_to_vec();
        let signed = SignedCheckpoint {
            signature: self.identity.sign(&bytes),
            checkpoint: bytes,
            timestamp_token: Vec::new(),
        };
        self.checkpoints
            .insert(&head.seq.to_be_bytes(), &signed.encode_to_vec())
            .map_err(storage)?;
        Ok(Some(signed))
    }

    /// This node's checkpoint at `seq`, if it signed one there.
    pub fn own_checkpoint_at(&self, seq: u64) -> Option<SignedCheckpoint> {
        let v = self.checkpoints.get(&seq.to_be_bytes()).ok()??;
        SignedCheckpoint::decode(v.as_slice()).ok()
    }

    /// The inclusion proof of the record `seq` against this node's newest checkpoint
    /// (signed now when none covers the record yet), with the entry itself.
    pub async fn prove_inclusion(&self, seq: u64) -> Result<InclusionProof, ProveError> {
        let head = self.head().seq;
        if seq == 0 || seq > head {
            return Err(ProveError::NoSuchRecord { seq, head });
        }
        let covers = |s: &Option<SignedCheckpoint>| {
            s.as_ref()
                .and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())
                .is_some_and(|c| c.seq >= seq && !c.tree_root.is_empty())
        };
        let mut signed = self.latest_checkpoint();
        if !covers(&signed) {
            self.checkpoint_now().map_err(ProveError::Audit)?;
            signed = self.latest_checkpoint();
        }
        if !covers(&signed) {
            return Err(ProveError::NotCheckpointed(seq));
        }
        let signed = signed.ok_or(ProveError::NotCheckpointed(seq))?;
        let cp = Checkpoint::decode(signed.checkpoint.as_slice())
            .map_err(|e| ProveError::Audit(storage(e)))?;
        self.tree_covers(cp.seq).await?;
        let loc = self
            .index
            .location(seq)
            .ok_or(ProveError::NotIndexed(seq))?;
        let entry = log::read_payload_at(self.log.dir(), loc).map_err(ProveError::Audit)?;
        let hashes = self
            .tree
            .inclusion_proof(seq - 1, cp.seq)
            .map_err(ProveError::Tree)?;
        Ok(InclusionProof {
            entry,
            leaf_index: seq - 1,
            tree_size: cp.seq,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            checkpoint: Some(signed),
        })
    }

    /// That this node's checkpoint at `to_seq` (0: its newest) extends its checkpoint at
    /// `from_seq`.
    pub async fn prove_consistency(
        &self,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<ConsistencyProof, ProveError> {
        let second = if to_seq == 0 {
            self.latest_checkpoint()
        } else {
            self.own_checkpoint_at(to_seq)
        }
        .ok_or(ProveError::NoCheckpoint(to_seq))?;
        let first = self
            .own_checkpoint_at(from_seq)
            .ok_or(ProveError::NoCheckpoint(from_seq))?;
        let to = Checkpoint::decode(second.checkpoint.as_slice())
            .map_err(|e| ProveError::Audit(storage(e)))?
            .seq;
        if from_seq > to {
            return Err(ProveError::Backwards { from: from_seq, to });
        }
        self.tree_covers(to).await?;
        let hashes = self
            .tree
            .consistency_proof(from_seq, to)
            .map_err(ProveError::Tree)?;
        Ok(ConsistencyProof {
            first: Some(first),
            second: Some(second),
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        })
    }

    /// Waits (bounded) until the Merkle tree store holds `seq` leaves.
    async fn tree_covers(&self, seq: u64) -> Result<(), ProveError> {
        let coverage = self.caught_up().await;
        if self.tree.size() < seq {
            return Err(ProveError::Lagging {
                seq,
                indexed: coverage.indexed_seq,
            });
        }
        Ok(())
    }

    /// This node's certificate (DER), which signs its checkpoints.
    pub fn node_certificate(&self) -> Vec<u8> {
        self.identity
            .chain
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    pub fn own_checkpoints(&self) -> Vec<SignedCheckpoint> {
        decoded(self.checkpoints.as_ref())
    }

    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        let (_, v) = self.checkpoints.last().ok()??;
        SignedCheckpoint::decode(v.as_slice()).ok()
    }

    /// The consistency proof a newer checkpoint of `city` needs before it is kept: from
    /// the one held (from, to), when both carry a tree root and the new one is further.
    pub fn consistency_needed(&self, city: &str, signed: &SignedCheckpoint) -> Option<(u64, u64)> {
        let cp = Checkpoint::decode(signed.checkpoint.as_slice()).ok()?;
        let prev = self
            .peer_checkpoint_of(city, &cp.replica)
            .and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())?;
        (prev.seq < cp.seq && !prev.tree_root.is_empty() && !cp.tree_root.is_empty())
            .then_some((prev.seq, cp.seq))
    }

    /// Keeps a peer's checkpoint after checking its signature, and that it extends the one
    /// held: `consistency` is the peer's proof for [`Self::consistency_needed`]. A checkpoint
    /// that contradicts the one held (same seq, other hash; a lower seq; a tree that does
    /// not extend the held tree) is kept as evidence and reported: the peer rewrote, rolled
    /// back or forked its history.
    pub async fn store_peer_checkpoint(
        &self,
        city: &str,
        node_cert: &CertificateDer<'_>,
        signed: &SignedCheckpoint,
        consistency: Option<&[Vec<u8>]>,
    ) -> Result<Checkpoint, String> {
        trust::verify_signature(node_cert, &signed.checkpoint, &signed.signature)
            .map_err(|e| e.to_string())?;
        let cp = Checkpoint::decode(signed.checkpoint.as_slice()).map_err(|e| e.to_string())?;
        if cp.city != city {
            return Err(format!("checkpoint of `{}` from peer `{city}`", cp.city));
        }
        let key = peer_key(city, &cp.replica);
        // Checked against the one held and written only if that is still the one held: the
        // city's replicas fetch the same peers' checkpoints.
        for _ in 0..5 {
            let (held, revision) = self.held_now(&key).await?;
            let previous = held.and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok());
            self.extends(city, signed, &cp, previous.as_ref(), consistency)?;
            match self.shared.get() {
                None => {
                    self.peer_checkpoints
                        .insert(&key, &signed.encode_to_vec())
                        .map_err(|e| e.to_string())?;
                    return Ok(cp);
                }
                Some((store, _)) => {
                    let txn = crate::store::kv::Txn::new()
                        .when(crate::store::kv::Cond::Unchanged(held_key(&key), revision))
                        .put(held_key(&key), signed.encode_to_vec());
                    match store.commit(txn).await.map_err(|e| e.to_string())? {
                        crate::store::kv::Committed::Applied(_) => return Ok(cp),
                        crate::store::kv::Committed::Conflict => continue,
                    }
                }
            }
        }
        Err(format!(
            "the checkpoint held of `{city}` kept changing under this one (another replica)"
        ))
    }

    /// The checkpoint held under `key` as the store has it now, with its revision (0: none).
    async fn held_now(
        &self,
        key: &[u8],
    ) -> Result<(Option<SignedCheckpoint>, crate::store::kv::Revision), String> {
        match self.shared.get() {
            None => Ok((
                self.peer_checkpoints
                    .get(key)
                    .ok()
                    .flatten()
                    .and_then(|v| SignedCheckpoint::decode(v.as_slice()).ok()),
                0,
            )),
            Some((store, _)) => {
                let kv = store.get(&held_key(key)).await.map_err(|e| e.to_string())?;
                Ok(match kv {
                    None => (None, 0),
                    Some(kv) => (
                        SignedCheckpoint::decode(kv.value.as_slice()).ok(),
                        kv.revision,
                    ),
                })
            }
        }
    }

    /// That `cp` (signed as `signed`) extends `previous`, the checkpoint held of `city`; a
    /// contradiction is kept as evidence.
    fn extends(
        &self,
        city: &str,
        signed: &SignedCheckpoint,
        cp: &Checkpoint,
        previous: Option<&Checkpoint>,
        consistency: Option<&[Vec<u8>]>,
    ) -> Result<(), String> {
        let evidence = |why: String| {
            let _ = self.conflicts.insert(
                format!("{city}/{}", now_ms()).as_bytes(),
                &signed.encode_to_vec(),
            );
            why
        };
        let Some(prev) = previous else {
            return Ok(());
        };
        let rewritten = prev.seq == cp.seq && prev.head_hash != cp.head_hash;
        if rewritten || cp.seq < prev.seq {
            return Err(evidence(format!(
                "peer `{city}` contradicts its earlier checkpoint (seq {} then {}): its audit history was rewritten or rolled back",
                prev.seq, cp.seq
            )));
        }
        if prev.seq < cp.seq && !prev.tree_root.is_empty() && !cp.tree_root.is_empty() {
            let (from, to) = (prev.seq, cp.seq);
            let proof = consistency.ok_or_else(|| {
                format!("peer `{city}`'s checkpoint at seq {to} needs a consistency proof from seq {from}")
            })?;
            let hashes: Option<Vec<Hash>> = proof
                .iter()
                .map(|h| <Hash>::try_from(h.as_slice()).ok())
                .collect();
            let roots = (
                <Hash>::try_from(prev.tree_root.as_slice()).ok(),
                <Hash>::try_from(cp.tree_root.as_slice()).ok(),
            );
            let consistent = match (hashes, roots) {
                (Some(h), (Some(a), Some(b))) => merkle::verify_consistency(from, to, &a, &b, &h),
                _ => false,
            };
            if !consistent {
                return Err(evidence(format!(
                    "peer `{city}`'s checkpoint at seq {to} does not extend its checkpoint at seq {from} (the consistency proof fails): its audit history forked or was rewritten"
                )));
            }
        }
        Ok(())
    }

    /// From now on the checkpoints held of peers are in `store`, the store the city's
    /// replicas share (read from `snapshot`), so that every replica checks a peer against
    /// the newest any of them received. Those held here so far are moved there.
    pub async fn share_peer_checkpoints(
        &self,
        store: Arc<dyn KvStore>,
        snapshot: Snapshot,
    ) -> Result<(), crate::store::StoreError> {
        for (key, value) in self.peer_checkpoints.scan_prefix(b"").flatten() {
            let txn = crate::store::kv::Txn::new()
                .when(crate::store::kv::Cond::Absent(held_key(&key)))
                .put(held_key(&key), value);
            store.commit(txn).await?;
        }
        let _ = self.shared.set((store, snapshot));
        Ok(())
    }

    /// The newest checkpoint of `city`'s log that this node holds (of the city's single
    /// node, or of its replica without an id).
    pub fn peer_checkpoint(&self, city: &str) -> Option<SignedCheckpoint> {
        self.peer_checkpoint_of(city, "")
    }

    /// The newest checkpoint of the log of `city`'s replica `replica` held here.
    pub fn peer_checkpoint_of(&self, city: &str, replica: &str) -> Option<SignedCheckpoint> {
        let key = peer_key(city, replica);
        let v = match self.shared.get() {
            Some((_, snap)) => snap.get(&held_key(&key))?.value,
            None => self.peer_checkpoints.get(&key).ok()??,
        };
        SignedCheckpoint::decode(v.as_slice()).ok()
    }

    /// Records that a peer has seen a longer or different log than this one: from now on
    /// the node refuses every call (UNAVAILABLE, naming both heads) and reports NOT_SERVING;
    /// `tongban node` exits 65.
    pub fn contradict(&self, reason: String) {
        tracing::error!(%reason, "audit log contradicted by a peer's checkpoint: refusing to serve");
        self.contradiction.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why this node must not serve, once a peer contradicted its log.
    pub fn contradicted(&self) -> Option<String> {
        self.contradiction.borrow().clone()
    }

    /// Notified when a peer contradicts this node's log.
    pub fn watch_contradiction(&self) -> watch::Receiver<Option<String>> {
        self.contradiction.subscribe()
    }

    pub fn peer_checkpoints(&self) -> Vec<SignedCheckpoint> {
        match self.shared.get() {
            Some((_, snap)) => snap
                .scan(HELD_PREFIX.as_bytes())
                .into_iter()
                .filter_map(|kv| SignedCheckpoint::decode(kv.value.as_slice()).ok())
                .collect(),
            None => decoded(self.peer_checkpoints.as_ref()),
        }
    }

    /// Evidence of peers contradicting their checkpoints.
    pub fn conflicts(&self) -> usize {
        self.conflicts.len()
    }
}

/// Has the newest checkpoint time-stamped, if it is not yet.
async fn stamp_latest(auditor: &Auditor, tsa: &tsa::Tsa) {
    let Some(mut signed) = auditor.latest_checkpoint() else {
        return;
    };
    if !signed.timestamp_token.is_empty() {
        return;
    }
    let Ok(cp) = Checkpoint::decode(signed.checkpoint.as_slice()) else {
        return;
    };
    match tsa.stamp(&signed.checkpoint).await {
        Ok(stamp) => {
            signed.timestamp_token = stamp.token;
            match auditor
                .checkpoints
                .insert(&cp.seq.to_be_bytes(), &signed.encode_to_vec())
            {
                Ok(()) => tracing::debug!(
                    seq = cp.seq,
                    at_ms = stamp.gen_time_ms,
                    "audit checkpoint time-stamped"
                ),
                Err(error) => tracing::error!(%error, "cannot keep the time-stamp token"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, tsa = %tsa.url(), seq = cp.seq, "the checkpoint could not be time-stamped (the next one will be tried)")
        }
    }
}

/// Every signed checkpoint of a keyspace.
fn decoded(ks: &dyn Keyspace) -> Vec<SignedCheckpoint> {
    ks.scan_prefix(b"")
        .flatten()
        .filter_map(|(_, v)| SignedCheckpoint::decode(v.as_slice()).ok())
        .collect()
}

/// (seq, hash) of every checkpoint in a keyspace of signed checkpoints.
fn checkpoint_hashes(ks: &Arc<dyn Keyspace>) -> Vec<(u64, Hash)> {
    decoded(ks.as_ref())
        .into_iter()
        .filter_map(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())
        .filter_map(|c| Some((c.seq, <Hash>::try_from(c.head_hash.as_slice()).ok()?)))
        .collect()
}

/// Verifies a node's log offline (`tongban audit verify`): the chain, and this node's signed
/// checkpoints when its store can be opened (the node stopped). Returns the report and
/// whether checkpoints were used.
pub fn verify_offline(data_dir: &Path) -> Result<(VerifyReport, bool), AuditError> {
    let dir = data_dir.join("audit");
    if !dir.exists() {
        return Err(AuditError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log here"),
        });
    }
    let checkpoints: Option<Vec<(u64, Hash)>> =
        crate::store::LocalStore::open_now(&data_dir.join("state"))
            .ok()
            .and_then(|store| store.keyspace("audit.checkpoints").ok())
            .map(|ks| checkpoint_hashes(&ks));
    let used = checkpoints.is_some();
    let report = log::verify_chain(&dir, &checkpoints.unwrap_or_default())?;
    Ok((report, used))
}

/// Empties the Merkle tree store down to what the log cannot rebuild: the part a prune
/// archived, which only the store keeps (its frontier must match the log's base).
fn rebuild_tree(dir: &Path, tree: &merkle::TreeStore) -> Result<(), AuditError> {
    let Some(base) = log::Base::read(dir)? else {
        return tree.clear().map_err(storage);
    };
    let kept = tree.size() >= base.seq && tree.root(base.seq).map_err(storage)? == base.tree.root();
    if !kept {
        return Err(AuditError::Corrupt {
            seq: base.seq,
            reason: format!(
                "the merkle tree store ({}) no longer holds the {} records archived before the log's base: restore it from a backup of the data directory (proofs need it)",
                dir.join(MERKLE_DIR).display(),
                base.seq
            ),
        });
    }
    tree.truncate_to(base.seq).map_err(storage)
}

/// Rebuilds the indexes and the Merkle tree from the log (`tongban audit reindex`; the node
/// must be stopped).
pub fn reindex_offline(data_dir: &Path) -> Result<VerifyReport, AuditError> {
    let dir = data_dir.join("audit");
    let index = AuditIndex::open(&dir).map_err(storage)?;
    index.clear().map_err(storage)?;
    let tree = merkle::TreeStore::open(&dir.join(MERKLE_DIR)).map_err(storage)?;
    rebuild_tree(&dir, &tree)?;
    let report = index_log(&dir, &index, 0, &tree)?;
    index.flush().map_err(storage)?;
    Ok(report)
}

/// Signs a checkpoint every `every` records or `interval`, whichever comes first; with a
/// TSA, has the newest one time-stamped.
pub async fn run_checkpoints(
    auditor: Arc<Auditor>,
    every: u64,
    interval: Duration,
    tsa: Option<tsa::Tsa>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heads = auditor.subscribe();
    let mut last = auditor.head().seq;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            r = heads.changed() => {
                if r.is_err() { return; }
                if heads.borrow().seq < last + every { continue; }
            },
            _ = shutdown.changed() => {
                let _ = auditor.checkpoint_now();
                return;
            }
        }
        match auditor.checkpoint_now() {
            Ok(Some(_)) => last = auditor.head().seq,
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "audit checkpoint failed"),
        }
        if let Some(tsa) = &tsa {
            stamp_latest(&auditor, tsa).await;
        }
    }
}
