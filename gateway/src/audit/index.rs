//! The audit's own store module: indexes in sled (through [`crate::store::sled::SledStore`]) — by time, request id, caller organisation, service and subject
//! pseudonym — and where each entry sits in the log. They are derived data: `reindex`
//! rebuilds them from the log.

use tongban_proto::audit::v1::AuditRecord;

use super::log::{Appended, Location};

const META_INDEXED: &[u8] = b"indexed_up_to";

#[derive(Clone)]
pub struct AuditIndex {
    by_seq: sled::Tree,
    by_time: sled::Tree,
    by_request: sled::Tree,
    by_caller: sled::Tree,
    by_service: sled::Tree,
    by_subject: sled::Tree,
    meta: sled::Tree,
}

fn key(prefix: &str, ts_ms: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 17);
    k.extend_from_slice(prefix.as_bytes());
    k.push(0);
    k.extend_from_slice(&(ts_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn ts_of(k: &[u8]) -> Option<i64> {
    let b: [u8; 8] = k
        .get(k.len().checked_sub(16)?..k.len() - 8)?
        .try_into()
        .ok()?;
    Some(u64::from_be_bytes(b) as i64)
}

/// One sled batch per index, filled from the entries of a group commit.
#[derive(Default)]
struct Batches {
    by_seq: sled::Batch,
    by_time: sled::Batch,
    by_request: sled::Batch,
    by_caller: sled::Batch,
    by_service: sled::Batch,
    by_subject: sled::Batch,
}

impl Batches {
    fn add(&mut self, seq: u64, loc: Location, r: &AuditRecord) {
        let ts = r.started_at_ms;
        let mut l = Vec::with_capacity(16);
        l.extend_from_slice(&loc.segment.to_be_bytes());
        l.extend_from_slice(&loc.offset.to_be_bytes());
        self.by_seq.insert(&seq.to_be_bytes(), l);
        self.by_time.insert(key("", ts, seq), &[]);
        self.by_request.insert(key(&r.request_id, 0, seq), &[]);
        if !r.caller_org.is_empty() {
            let caller = format!("{}/{}", r.caller_city, r.caller_org);
            self.by_caller.insert(key(&caller, ts, seq), &[]);
        }
        if !r.service.is_empty() {
            self.by_service.insert(key(&r.service, ts, seq), &[]);
        }
        if !r.subject_pseudonym.is_empty() {
            self.by_subject
                .insert(key(&r.subject_pseudonym, ts, seq), &[]);
        }
    }
}

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

impl AuditIndex {
    pub fn open(store: &crate::store::sled::SledStore) -> sled::Result<AuditIndex> {
        let db = store.db();
        Ok(AuditIndex {
            by_seq: db.open_tree("audit.by_seq")?,
            by_time: db.open_tree("audit.by_time")?,
            by_request: db.open_tree("audit.by_request")?,
            by_caller: db.open_tree("audit.by_caller")?,
            by_service: db.open_tree("audit.by_service")?,
            by_subject: db.open_tree("audit.by_subject")?,
            meta: db.open_tree("audit.meta")?,
        })
    }

    pub fn indexed_up_to(&self) -> u64 {
        self.meta
            .get(META_INDEXED)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    }

    /// Makes the index durable (offline reindex).
    pub fn flush(&self) -> sled::Result<()> {
        self.meta.flush().map(|_| ())
    }

    pub fn clear(&self) -> sled::Result<()> {
        for t in [
            &self.by_seq,
            &self.by_time,
            &self.by_request,
            &self.by_caller,
            &self.by_service,
            &self.by_subject,
            &self.meta,
        ] {
            t.clear()?;
        }
        Ok(())
    }

    /// Indexes one committed entry.
    pub fn insert(&self, a: &Appended) -> sled::Result<()> {
        self.insert_parts(a.seq, a.location, &a.record)
    }

    /// Indexes a committed batch (one group commit) with one sled batch per index, instead
    /// of an insert per key: the index keeps up with the group commit.
    pub fn insert_batch(&self, batch: &[Appended]) -> sled::Result<()> {
        let mut b = Batches::default();
        for a in batch {
            b.add(a.seq, a.location, &a.record);
        }
        self.by_seq.apply_batch(b.by_seq)?;
        self.by_time.apply_batch(b.by_time)?;
        self.by_request.apply_batch(b.by_request)?;
        self.by_caller.apply_batch(b.by_caller)?;
        self.by_service.apply_batch(b.by_service)?;
        self.by_subject.apply_batch(b.by_subject)?;
        if let Some(last) = batch.iter().map(|a| a.seq).max() {
            if last > self.indexed_up_to() {
                self.meta.insert(META_INDEXED, &last.to_be_bytes())?;
            }
        }
        Ok(())
    }

    /// Indexes one entry (reindex and the unindexed tail at start).
    pub fn insert_parts(&self, seq: u64, loc: Location, r: &AuditRecord) -> sled::Result<()> {
        let ts = r.started_at_ms;
        let mut l = Vec::with_capacity(16);
        l.extend_from_slice(&loc.segment.to_be_bytes());
        l.extend_from_slice(&loc.offset.to_be_bytes());
        self.by_seq.insert(seq.to_be_bytes(), l)?;
        self.by_time.insert(key("", ts, seq), &[])?;
        self.by_request.insert(key(&r.request_id, 0, seq), &[])?;
        if !r.caller_org.is_empty() {
            let caller = format!("{}/{}", r.caller_city, r.caller_org);
            self.by_caller.insert(key(&caller, ts, seq), &[])?;
        }
        if !r.service.is_empty() {
            self.by_service.insert(key(&r.service, ts, seq), &[])?;
        }
        if !r.subject_pseudonym.is_empty() {
            self.by_subject
                .insert(key(&r.subject_pseudonym, ts, seq), &[])?;
        }
        if seq > self.indexed_up_to() {
            self.meta.insert(META_INDEXED, &seq.to_be_bytes())?;
        }
        Ok(())
    }

    pub fn location(&self, seq: u64) -> Option<Location> {
        let v = self.by_seq.get(seq.to_be_bytes()).ok()??;
        let segment = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let offset = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
        Some(Location { segment, offset })
    }

    /// Sequences of the records of one request id.
    pub fn by_request(&self, request_id: &str) -> Vec<u64> {
        let mut p = request_id.as_bytes().to_vec();
        p.push(0);
        self.by_request
            .scan_prefix(p)
            .keys()
            .flatten()
            .filter_map(|k| seq_of(&k))
            .collect()
    }

    /// Newest first: sequences of a subject's records.
    pub fn by_subject(&self, pseudonym: &str, limit: usize) -> Vec<u64> {
        let mut p = pseudonym.as_bytes().to_vec();
        p.push(0);
        self.by_subject
            .scan_prefix(p)
            .keys()
            .rev()
            .flatten()
            .filter_map(|k| seq_of(&k))
            .take(limit)
            .collect()
    }

    /// Sequences matching `f` in time order, with the (ts, seq) to continue after.
    pub fn query(&self, f: &Filter) -> (Vec<Cursor>, Option<Cursor>) {
        let (tree, prefix) = match (&f.caller, &f.service) {
            (Some(c), _) => (&self.by_caller, c.as_str()),
            (None, Some(s)) => (&self.by_service, s.as_str()),
            (None, None) => (&self.by_time, ""),
        };
        let start = match f.after {
            Some((ts, seq)) => {
                let mut k = key(prefix, ts, seq);
                k.push(0); // just after the last returned key
                k
            }
            None => key(prefix, f.from_ms, 0),
        };
        let mut end = prefix.as_bytes().to_vec();
        end.push(1);
        let mut out = Vec::new();
        for k in tree.range(start..end).keys().flatten() {
            let (Some(ts), Some(seq)) = (ts_of(&k), seq_of(&k)) else {
                continue;
            };
            if f.to_ms > 0 && ts > f.to_ms {
                break;
            }
            out.push((ts, seq));
            if out.len() == f.limit {
                let next = out.last().copied();
                return (out, next);
            }
        }
        (out, None)
    }
}
