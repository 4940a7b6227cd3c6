//! The audit's index: one fixed-width entry per record, in sequence order, in a flat file
//! next to the log (`audit/index.bin`). An entry holds where the record is in the log, its
//! start time, and 64-bit hashes of its request id, caller (`city/org`), service and subject
//! pseudonym. Appending a group commit's entries is one `write`; queries scan the file (a
//! few tens of MB per million records) and keep only the page they return.
//!
//! Why not a key-value store: with one sled insert per key (six per record), indexing was the
//! ceiling of a node (about 29k records/s), its store grew to 5–6× the log, and sled's IO
//! pool spawned a thread for nearly every buffer it wrote. This file is about 14% of the log.
//!
//! The index is derived data: it is rebuilt from the log by `tongban audit reindex`, its
//! entries are reconciled with the log head at open (a missing tail is indexed, an entry past
//! the head is dropped), and a hash collision can only add a candidate, which the reader of
//! the record sees (2^-64 per pair).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tongban_proto::audit::v1::AuditRecord;

use super::log::{Appended, Location};

/// Bytes of one entry.
const ENTRY: u64 = 56;
/// The index file inside the log directory.
pub const INDEX_FILE: &str = "index.bin";

/// A position in an index: (start time ms, seq).
pub type Cursor = (i64, u64);

/// A query over the indexes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: i64,
    /// 0: no upper bound.
    pub to_ms: i64,
    pub caller: Option<String>,
    pub service: Option<String>,
    /// (ts, seq) of the last entry of the previous page.
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// The stable 64-bit hash of an indexed value (0: none).
fn h(v: &str) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let d = Sha256::digest(v.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]).max(1)
}

/// One entry: what the index knows of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    location: Location,
    ts: i64,
    request: u64,
    caller: u64,
    service: u64,
    subject: u64,
}

impl Entry {
    fn of(loc: Location, r: &AuditRecord) -> Entry {
        let caller = if r.caller_org.is_empty() {
            0
        } else {
            h(&format!("{}/{}", r.caller_city, r.caller_org))
        };
        Entry {
            location: loc,
            ts: r.started_at_ms,
            request: h(&r.request_id),
            caller,
            service: h(&r.service),
            subject: h(&r.subject_pseudonym),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.location.segment,
            self.location.offset,
            self.ts as u64,
            self.request,
            self.caller,
            self.service,
            self.subject,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Entry {
        let u = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Entry {
            location: Location {
                segment: u(0),
                offset: u(1),
            },
            ts: u(2) as i64,
            request: u(3),
            caller: u(4),
            service: u(5),
            subject: u(6),
        }
    }
}

struct Inner {
    path: PathBuf,
    /// The writer's handle (appends only).
    file: Mutex<File>,
    /// Entries written so far: readers never read past them.
    count: AtomicU64,
}

/// The audit index of one node; cheap to clone.
#[derive(Clone)]
pub struct AuditIndex {
    inner: Arc<Inner>,
}

impl AuditIndex {
    /// Opens (or creates) the index in the log directory `dir`; a partial last entry (a crash
    /// in the middle of a write) is dropped.
    pub fn open(dir: &Path) -> std::io::Result<AuditIndex> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(INDEX_FILE);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        let count = len / ENTRY;
        if len % ENTRY != 0 {
            file.set_len(count * ENTRY)?;
        }
        Ok(AuditIndex {
            inner: Arc::new(Inner {
                path,
                file: Mutex::new(file),
                count: AtomicU64::new(count),
            }),
        })
    }

    /// The last sequence indexed.
    pub fn indexed_up_to(&self) -> u64 {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Drops the entries of sequences after `seq` (the log was reopened shorter).
    pub fn truncate_to(&self, seq: u64) -> std::io::Result<()> {
        if seq >= self.indexed_up_to() {
            return Ok(());
        }
        let f = self.lock()?;
        f.set_len(seq * ENTRY)?;
        self.inner.count.store(seq, Ordering::Release);
        Ok(())
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, File>> {
        self.inner
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit index writer panicked"))
    }

    /// Makes the index durable (offline reindex).
    pub fn flush(&self) -> std::io::Result<()> {
        self.lock()?.sync_data()
    }

    /// Empties the index (offline reindex).
    pub fn clear(&self) -> std::io::Result<()> {
        self.truncate_to(0)
    }

    /// Fills the index up to `seq` with empty entries: records archived and pruned from the
    /// log (a query never matches them; a read of one says it is not in the log).
    pub fn skip_to(&self, seq: u64) -> std::io::Result<()> {
        let from = self.indexed_up_to();
        if seq <= from {
            return Ok(());
        }
        self.append(&vec![0u8; ((seq - from) * ENTRY) as usize], seq)
    }

    /// Indexes one committed entry.
    pub fn insert(&self, a: &Appended) -> std::io::Result<()> {
        self.insert_parts(a.seq, a.location, &a.record)
    }

    /// Indexes a committed batch (one group commit): one append.
    pub fn insert_batch(&self, batch: &[Appended]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * ENTRY as usize);
        let mut next = self.indexed_up_to() + 1;
        for a in batch {
            if a.seq < next {
                continue; // already indexed (the tail indexed at open)
            }
            if a.seq != next {
                return Err(std::io::Error::other(format!(
                    "audit index expected seq {next}, got {}",
                    a.seq
                )));
            }
            Entry::of(a.location, &a.record).encode(&mut buf);
            next += 1;
        }
        self.append(&buf, next - 1)
    }

    /// Indexes one entry (reindex and the unindexed tail at start).
    pub fn insert_parts(&self, seq: u64, loc: Location, r: &AuditRecord) -> std::io::Result<()> {
        let expected = self.indexed_up_to() + 1;
        if seq < expected {
            return Ok(());
        }
        if seq != expected {
            return Err(std::io::Error::other(format!(
                "audit index expected seq {expected}, got {seq}"
            )));
        }
        let mut buf = Vec::with_capacity(ENTRY as usize);
        Entry::of(loc, r).encode(&mut buf);
        self.append(&buf, seq)
    }

    fn append(&self, buf: &[u8], last: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut f = self.lock()?;
        f.write_all(buf)?;
        self.inner.count.store(last, Ordering::Release);
        Ok(())
    }

    /// Calls `each(seq, entry)` for every entry, in sequence order.
    fn scan(&self, mut each: impl FnMut(u64, &Entry)) {
        let count = self.indexed_up_to();
        let Ok(file) = File::open(&self.inner.path) else {
            return;
        };
        let mut r = BufReader::with_capacity(1 << 16, file);
        let mut b = [0u8; ENTRY as usize];
        for seq in 1..=count {
            if r.read_exact(&mut b).is_err() {
                return;
            }
            let e = Entry::decode(&b);
            // An archived record's place (segment 0 never exists): nothing to find there.
            if e.location.segment != 0 {
                each(seq, &e);
            }
        }
    }

    pub fn location(&self, seq: u64) -> Option<Location> {
        self.locations(&[seq]).pop().flatten()
    }

    /// Where each of `seqs` is in the log (`None` for one not indexed), with one handle on
    /// the index file for the whole page.
    pub fn locations(&self, seqs: &[u64]) -> Vec<Option<Location>> {
        let count = self.indexed_up_to();
        let mut f = File::open(&self.inner.path).ok();
        let mut b = [0u8; ENTRY as usize];
        seqs.iter()
            .map(|&seq| {
                let f = f.as_mut().filter(|_| seq != 0 && seq <= count)?;
                f.seek(SeekFrom::Start((seq - 1) * ENTRY)).ok()?;
                f.read_exact(&mut b).ok()?;
                Some(Entry::decode(&b).location)
            })
            .collect()
    }

    /// Sequences of the records of one request id.
    pub fn by_request(&self, request_id: &str) -> Vec<u64> {
        let want = h(request_id);
        let mut out = Vec::new();
        self.scan(|seq, e| {
            if e.request == want {
                out.push(seq);
            }
        });
        out
    }

    /// Newest first: sequences of a subject's records.
    pub fn by_subject(&self, pseudonym: &str, limit: usize) -> Vec<u64> {
        let want = h(pseudonym);
        let mut top = Top::new(limit, true);
        self.scan(|seq, e| {
            if want != 0 && e.subject == want {
                top.offer((e.ts, seq));
            }
        });
        top.into_sorted().into_iter().map(|(_, s)| s).collect()
    }

    /// Sequences matching `f` in time order, with the (ts, seq) to continue after.
    pub fn query(&self, f: &Filter) -> (Vec<Cursor>, Option<Cursor>) {
        let caller = f.caller.as_deref().map(h);
        let service = f.service.as_deref().map(h);
        // One more than a page: whether there is a next page.
        let mut top = Top::new(f.limit.saturating_add(1), false);
        self.scan(|seq, e| {
            let in_range = e.ts >= f.from_ms && (f.to_ms <= 0 || e.ts <= f.to_ms);
            let after = f.after.is_none_or(|c| (e.ts, seq) > c);
            let matches = caller.is_none_or(|c| e.caller == c)
                && (caller.is_some() || service.is_none_or(|s| e.service == s));
            if in_range && after && matches {
                top.offer((e.ts, seq));
            }
        });
        let mut out = top.into_sorted();
        if out.len() > f.limit {
            out.truncate(f.limit);
            let next = out.last().copied();
            return (out, next);
        }
        (out, None)
    }
}

/// The `n` smallest (or, `newest`, largest) cursors offered, in memory bounded by `n`.
struct Top {
    n: usize,
    newest: bool,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Cursor>>,
    max_heap: std::collections::BinaryHeap<Cursor>,
}

impl Top {
    fn new(n: usize, newest: bool) -> Top {
        Top {
            n,
            newest,
            heap: Default::default(),
            max_heap: Default::default(),
        }
    }

    fn offer(&mut self, c: Cursor) {
        if self.n == 0 {
            return;
        }
        if self.newest {
            // Keep the n largest: a min-heap of them.
            self.heap.push(std::cmp::Reverse(c));
            if self.heap.len() > self.n {
                self.heap.pop();
            }
        } else {
            // Keep the n smallest: a max-heap of them.
            self.max_heap.push(c);
            if self.max_heap.len() > self.n {
                self.max_heap.pop();
            }
        }
    }

    /// Oldest first, or newest first for `newest`.
    fn into_sorted(self) -> Vec<Cursor> {
        if self.newest {
            let mut v: Vec<Cursor> = self.heap.into_iter().map(|r| r.0).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v
        } else {
            self.max_heap.into_sorted_vec()
        }
    }
}
