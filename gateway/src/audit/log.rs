//! The audit log: append-only, hash-chained segment files, group-committed by one writer
//! thread.
//!
//! Frame of one entry: `len: u32 BE | crc32: u32 BE | payload`, where payload is a prost
//! [`LogEntry`] `{seq, prev_hash, record}` and `hash(entry) = SHA-256(payload)`. The first
//! entry has seq 1 and a zero `prev_hash`. Segments are `seg-<first seq>.log` and rotate at a
//! size limit.
//!
//! Durability (`sync`, the default): an append is acknowledged only after the batch holding it
//! was written and `fsync`ed, so an acknowledged record survives `kill -9`. In `batch` mode
//! appends are acknowledged once written and the file is synced every window: a crash of the
//! machine (not of the process) can lose at most that window. A torn tail (a crash in the
//! middle of a write) is cut at the next open; everything before it verifies.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tongban_proto::audit::v1::{AuditRecord, LogEntry, Side};

use super::receipt::{ReceiptClaims, ReceiptGroup, ReceiptLeaf};
use tongban_telemetry::metrics::AuditMetrics;

/// Largest payload of one entry.
const MAX_ENTRY: u32 = 1024 * 1024;
/// Most entries in one group commit.
const MAX_BATCH: usize = 4096;

pub type Hash = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log is corrupt at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("audit writer stopped")]
    Stopped,
    #[error("audit record too large ({0} bytes)")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging (group commit).
    Sync,
    /// Acknowledge after write; fsync every window.
    Batch(Duration),
}

/// Who writes a group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// A dedicated writer thread that every append wakes (the default).
    #[default]
    Writer,
    /// The first waiting append becomes the leader and writes and fsyncs the group itself
    /// (the group-commit leader of RocksDB and MySQL): no thread hand-off per group, but the
    /// leader's runtime thread is blocked for the fsync. Sync durability only.
    Leader,
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub durability: Durability,
    /// Who writes a group commit (`[audit] handoff`).
    pub handoff: Handoff,
    pub segment_bytes: u64,
    /// Queue depth, group-commit size and latency, writability (registered in the node's
    /// metrics by the node; unregistered by default).
    pub metrics: AuditMetrics,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Sync,
            handoff: Handoff::Writer,
            segment_bytes: 64 * 1024 * 1024,
            metrics: AuditMetrics::default(),
        }
    }
}

/// Where an appended entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The segment's first seq (its name).
    pub segment: u64,
    pub offset: u64,
}

/// A committed entry.
#[derive(Debug, Clone)]
pub struct Appended {
    pub seq: u64,
    pub hash: Hash,
    /// Its Merkle leaf hash, for the tree store.
    pub leaf: Hash,
    pub location: Location,
    /// Shared: the exchange that appended it and the index thread both get the entry, and
    /// a record is a score of strings.
    pub record: Arc<AuditRecord>,
    /// A provider-side record's place among its group commit's receipts.
    pub receipt: Option<ReceiptLeaf>,
}

/// The head of the chain, and the Merkle root of its `seq` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
    /// MTH of entries 1..=seq (RFC 6962; [`super::merkle`]).
    pub root: Hash,
}

/// Where a pruned log starts (`audit/pruned.json`): the last entry removed (its seq and
/// hash) and the Merkle frontier of the entries up to it, as the archive that holds them
/// says (`tongban audit prune`). A log without the file starts at seq 1.
pub const BASE_FILE: &str = "pruned.json";

/// The start of a pruned log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub seq: u64,
    pub hash: Hash,
    pub tree: super::merkle::Frontier,
}

impl Base {
    /// The base of the log in `dir`: none when it was never pruned.
    pub fn read(dir: &Path) -> Result<Option<Base>, AuditError> {
        let path = dir.join(BASE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let bad = |why: &str| AuditError::Corrupt {
            seq: 0,
            reason: format!("{}: {why}", path.display()),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let hash = |x: &serde_json::Value| -> Option<Hash> {
            hex::decode(x.as_str()?).ok()?.try_into().ok()
        };
        let seq = v["seq"].as_u64().ok_or_else(|| bad("no seq"))?;
        let nodes = v["frontier"]
            .as_array()
            .ok_or_else(|| bad("no frontier"))?
            .iter()
            .map(|n| Some((u32::try_from(n[0].as_u64()?).ok()?, hash(&n[1])?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("a frontier node is not [level, hex hash]"))?;
        Ok(Some(Base {
            seq,
            hash: hash(&v["hash"]).ok_or_else(|| bad("no hash"))?,
            tree: super::merkle::Frontier::from_parts(seq, nodes)
                .ok_or_else(|| bad("the frontier does not fit seq"))?,
        }))
    }

    /// Writes the base of the log in `dir` (to a temporary file, synced, then renamed).
    pub fn write(&self, dir: &Path) -> Result<(), AuditError> {
        let v = serde_json::json!({
            "seq": self.seq,
            "hash": hex::encode(self.hash),
            "frontier": self.tree.nodes().iter().map(|(l, h)| serde_json::json!([l, hex::encode(h)])).collect::<Vec<_>>(),
        });
        let tmp = dir.join(format!("{BASE_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(v.to_string().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, dir.join(BASE_FILE)).map_err(io(dir))?;
        sync_dir(dir)
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:012}.log")
}

/// Segments of `dir`, ordered by first seq.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Encodes one frame.
fn frame(entry: &LogEntry) -> Result<(Vec<u8>, Hash), AuditError> {
    let payload = entry.encode_to_vec();
    if payload.len() > MAX_ENTRY as usize {
        return Err(AuditError::TooLarge(payload.len()));
    }
    let hash: Hash = Sha256::digest(&payload).into();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok((out, hash))
}

/// One entry read back, with where it was.
#[derive(Debug, Clone)]
pub struct ReadEntry {
    pub entry: LogEntry,
    pub hash: Hash,
    /// Its Merkle leaf hash (SHA-256(0x00 ‖ payload)).
    pub leaf: Hash,
    pub location: Location,
    /// Offset just past the frame.
    pub end: u64,
}

/// Why reading stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The segment ended cleanly.
    End,
    /// A frame was cut short (a torn write or a truncation) at this offset.
    Truncated { offset: u64 },
    /// A frame's checksum or encoding was wrong at this offset.
    Bad { offset: u64, reason: String },
}

/// Reads the frames of one segment in order, until its end or the first broken frame.
pub fn read_segment(
    segment: u64,
    path: &Path,
    each: impl FnMut(ReadEntry) -> bool,
) -> Result<Stop, AuditError> {
    read_segment_with(segment, path, true, each)
}

/// The chain fields of a [`LogEntry`] (same tags): decoding only these skips the record's
/// bytes unparsed, which is most of the work of walking a log when only the chain matters.
#[derive(Clone, PartialEq, prost::Message)]
struct ChainFields {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    prev_hash: Vec<u8>,
}

/// [`read_segment`]; with `records` false the entries' records are left undecoded (`None`):
/// checksums, hashes and the chain are checked all the same.
fn read_segment_with(
    segment: u64,
    path: &Path,
    records: bool,
    each: impl FnMut(ReadEntry) -> bool,
) -> Result<Stop, AuditError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    read_frames(segment, &data, records, each)
}

/// The frames of one segment's bytes (`segment`: its first sequence), in order, until the
/// end or the first broken frame; `each` returns false to stop. Reads nothing else: what a
/// damaged or hostile file can reach.
pub fn read_frames(
    segment: u64,
    data: &[u8],
    records: bool,
    mut each: impl FnMut(ReadEntry) -> bool,
) -> Result<Stop, AuditError> {
    let mut off = 0usize;
    while off < data.len() {
        if data.len() - off < 8 {
            return Ok(Stop::Truncated { offset: off as u64 });
        }
        let len = u32::from_be_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        let crc = u32::from_be_bytes([data[off + 4], data[off + 5], data[off + 6], data[off + 7]]);
        if len > MAX_ENTRY {
            return Ok(Stop::Bad {
                offset: off as u64,
                reason: format!("frame length {len} is impossible"),
            });
        }
        let start = off + 8;
        let end = start + len as usize;
        if end > data.len() {
            return Ok(Stop::Truncated { offset: off as u64 });
        }
        let payload = &data[start..end];
        if crc32fast::hash(payload) != crc {
            return Ok(Stop::Bad {
                offset: off as u64,
                reason: "checksum mismatch".into(),
            });
        }
        let decoded = if records {
            LogEntry::decode(payload)
        } else {
            ChainFields::decode(payload).map(|c| LogEntry {
                seq: c.seq,
                prev_hash: c.prev_hash,
                record: None,
            })
        };
        let entry = match decoded {
            Ok(e) => e,
            Err(e) => {
                return Ok(Stop::Bad {
                    offset: off as u64,
                    reason: format!("undecodable entry: {e}"),
                })
            }
        };
        let read = ReadEntry {
            entry,
            hash: Sha256::digest(payload).into(),
            leaf: super::merkle::leaf_hash(payload),
            location: Location {
                segment,
                offset: off as u64,
            },
            end: end as u64,
        };
        if !each(read) {
            return Ok(Stop::End);
        }
        off = end;
    }
    Ok(Stop::End)
}

/// The result of verifying (part of) a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub head: Head,
    /// The Merkle tree of the entries walked (its root is `head.root`).
    pub tree: super::merkle::Frontier,
    /// The first sequence that does not verify, and why.
    pub first_bad: Option<(u64, String)>,
    /// Set when the only problem is a torn final frame: what a crash in the middle of a write
    /// leaves (and the one thing [`AuditLog::open`] repairs). `first_bad` names it too.
    pub torn_tail: Option<TornTail>,
}

/// An incomplete final frame after the last complete, checksummed record of the newest
/// segment, with no complete frame after it and no signed checkpoint covering it: a write
/// that a crash interrupted, never acknowledged (an append is acknowledged only once its
/// whole frame is written, and in `sync` mode, fsynced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The sequence the frame would have had.
    pub seq: u64,
    pub segment: PathBuf,
    /// Byte range `start..end` of the torn bytes in the segment (`end` = its length).
    pub start: u64,
    pub end: u64,
}

/// What opening the log repaired: a torn tail cut off, its bytes kept in `quarantine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub torn: TornTail,
    pub quarantine: PathBuf,
}

/// Smallest payload of a real entry: the seq tag and varint, and the 32-byte prev_hash.
const MIN_ENTRY: u32 = 2 + 34;

/// The seq of a complete, checksummed frame of a record after `after` starting at `p`, if
/// there is one. Cheap tests first: a real payload opens with the `seq` field tag.
fn frame_at(data: &[u8], p: usize, after: u64) -> Option<u64> {
    let hdr = data.get(p..p + 8)?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if !(MIN_ENTRY..=MAX_ENTRY).contains(&len) {
        return None;
    }
    let payload = data.get(p + 8..p + 8 + len as usize)?;
    if payload[0] != 0x08 {
        return None;
    }
    let crc = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if crc32fast::hash(payload) != crc {
        return None;
    }
    LogEntry::decode(payload)
        .ok()
        .map(|e| e.seq)
        .filter(|s| *s > after)
}

/// Tells a torn final frame from damage, for a frame at `offset` whose length runs past the
/// end of the newest segment. `None`: torn (a crash leftover). `Some(why)`: damage — the
/// bytes after the header are a complete payload matching the frame's checksum (so only
/// the length field is wrong), or a complete frame of a later record follows.
fn damage_beyond(path: &Path, offset: u64, head_seq: u64) -> Result<Option<String>, AuditError> {
    let data = fs::read(path).map_err(io(path))?;
    let off = usize::try_from(offset).unwrap_or(usize::MAX);
    if off >= data.len() {
        return Ok(None);
    }
    if data.len() - off > 8 {
        let hdr = &data[off..off + 8];
        let crc = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let rest = &data[off + 8..];
        if crc32fast::hash(rest) == crc && LogEntry::decode(rest).is_ok() {
            return Ok(Some(format!(
                "damaged frame at offset {offset}: its length field runs past the end of the segment, but the {} bytes after it are a complete record matching its checksum (the length was altered, this is not a torn write)",
                rest.len()
            )));
        }
    }
    for p in off + 1..data.len() {
        if let Some(seq) = frame_at(&data, p, head_seq) {
            return Ok(Some(format!(
                "damaged frame at offset {offset}: its length runs past the end of the segment, but a complete record (seq {seq}) follows at offset {p} (not a torn write: records after it would be lost)"
            )));
        }
    }
    Ok(None)
}

/// Walks the whole log from seq 1, checking frames, sequence and chain; calls `each` on every
/// good entry. Stops at the first problem. `checkpoints` are (seq, hash) pairs this node
/// signed: a chain that disagrees with one was rewritten.
pub fn verify_dir(
    dir: &Path,
    checkpoints: &[(u64, Hash)],
    each: impl FnMut(&ReadEntry),
) -> Result<VerifyReport, AuditError> {
    verify_dir_until(dir, checkpoints, None, each)
}

/// [`verify_dir`] when only the chain matters (`tongban audit verify`, opening the log):
/// the records are not decoded, so `ReadEntry::entry.record` would be `None`.
pub fn verify_chain(dir: &Path, checkpoints: &[(u64, Hash)]) -> Result<VerifyReport, AuditError> {
    walk_dir(dir, checkpoints, None, false, |_| {})
}

/// [`verify_dir`], stopping after seq `until` when given.
pub fn verify_dir_until(
    dir: &Path,
    checkpoints: &[(u64, Hash)],
    until: Option<u64>,
    each: impl FnMut(&ReadEntry),
) -> Result<VerifyReport, AuditError> {
    walk_dir(dir, checkpoints, until, true, each)
}

fn walk_dir(
    dir: &Path,
    checkpoints: &[(u64, Hash)],
    until: Option<u64>,
    records: bool,
    mut each: impl FnMut(&ReadEntry),
) -> Result<VerifyReport, AuditError> {
    let checkpoints: HashMap<u64, Hash> = checkpoints.iter().copied().collect();
    let base = Base::read(dir)?;
    let mut walk = Walk {
        head: Head {
            seq: base.as_ref().map_or(0, |b| b.seq),
            hash: base.as_ref().map_or([0; 32], |b| b.hash),
            root: super::merkle::empty_root(),
        },
        tree: base.as_ref().map(|b| b.tree.clone()).unwrap_or_default(),
        records: 0,
        bad: None,
        torn: None,
        checkpoints: &checkpoints,
    };
    // Segments a prune removed from the log's account but not yet from the disk (a crash
    // between the two) are not part of it.
    let start = walk.head.seq;
    let segs: Vec<(u64, PathBuf)> = segments(dir)?
        .into_iter()
        .filter(|(first, _)| *first > start)
        .collect();
    for (i, (first, path)) in segs.iter().enumerate() {
        if *first != walk.head.seq + 1 {
            let why = format!(
                "segment {} starts at seq {first}, expected {}",
                path.display(),
                walk.head.seq + 1
            );
            walk.fail(why);
            break;
        }
        let stop = read_segment_with(*first, path, records, |r| {
            walk.step(&r, &mut each) && until.is_none_or(|u| r.entry.seq < u)
        })?;
        if walk.bad.is_some() || until.is_some_and(|u| walk.head.seq >= u) {
            break;
        }
        if stop != Stop::End {
            walk.stopped(stop, path, i + 1 == segs.len())?;
            break;
        }
    }
    walk.anchor(until.is_none_or(|u| u > walk.head.seq));
    walk.head.root = walk.tree.root();
    Ok(VerifyReport {
        records: walk.records,
        head: walk.head,
        tree: walk.tree,
        first_bad: walk.bad,
        torn_tail: walk.torn,
    })
}

/// The state of a walk along the chain.
struct Walk<'a> {
    head: Head,
    /// The Merkle tree so far (`head.root` is set from it at the end only).
    tree: super::merkle::Frontier,
    records: u64,
    bad: Option<(u64, String)>,
    torn: Option<TornTail>,
    /// seq → head hash of this node's signed checkpoints.
    checkpoints: &'a HashMap<u64, Hash>,
}

impl Walk<'_> {
    /// The next sequence is bad, for `why`.
    fn fail(&mut self, why: String) {
        self.bad = Some((self.head.seq + 1, why));
    }

    /// Checks one entry against the chain so far; false stops the walk.
    fn step(&mut self, r: &ReadEntry, each: &mut impl FnMut(&ReadEntry)) -> bool {
        let expected = self.head.seq + 1;
        let why = if r.entry.seq != expected {
            Some(format!(
                "sequence gap: expected {expected}, found {}",
                r.entry.seq
            ))
        } else if r.entry.prev_hash.as_slice() != self.head.hash {
            Some("chain broken: prev_hash does not match".to_string())
        } else if self
            .checkpoints
            .get(&r.entry.seq)
            .is_some_and(|h| *h != r.hash)
        {
            Some("does not match a signed checkpoint".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            self.fail(why);
            return false;
        }
        each(r);
        self.tree.push(r.leaf);
        self.head = Head {
            seq: r.entry.seq,
            hash: r.hash,
            root: self.head.root,
        };
        self.records += 1;
        true
    }

    /// A segment stopped before its end: damage, or (the newest segment only) a torn tail.
    fn stopped(&mut self, stop: Stop, path: &Path, newest: bool) -> Result<(), AuditError> {
        match stop {
            Stop::End => {}
            Stop::Bad { offset, reason } => self.fail(format!("{reason} at offset {offset}")),
            Stop::Truncated { offset } if !newest => self.fail(format!(
                "truncated record at offset {offset} of a segment that is not the newest"
            )),
            Stop::Truncated { offset } => match damage_beyond(path, offset, self.head.seq)? {
                Some(why) => self.fail(why),
                None => {
                    let end = fs::metadata(path).map_err(io(path))?.len();
                    self.fail(format!(
                        "torn final frame at offset {offset}: truncated after {} bytes, no complete record after it (a crash leftover, never acknowledged: the node cuts it at its next start and keeps the bytes in quarantine)",
                        end - offset
                    ));
                    self.torn = Some(TornTail {
                        seq: self.head.seq + 1,
                        segment: path.to_path_buf(),
                        start: offset,
                        end,
                    });
                }
            },
        }
        Ok(())
    }

    /// The newest signed checkpoint anchors the tail: records it covers that are no longer
    /// in the log were removed (cut from the end, a deleted segment, a rollback). A crash
    /// cannot do this: a checkpoint only ever covers durable records.
    fn anchor(&mut self, whole_log: bool) {
        let Some(&cp_seq) = self.checkpoints.keys().max() else {
            return;
        };
        if whole_log && cp_seq > self.head.seq && (self.bad.is_none() || self.torn.is_some()) {
            self.torn = None;
            let why = format!(
                "the log ends at seq {} (hash {}) but this node signed a checkpoint at seq {cp_seq}: {} records it covers are missing (cut from the end, a deleted segment or a rollback)",
                self.head.seq,
                short(&self.head.hash),
                cp_seq - self.head.seq
            );
            self.fail(why);
        }
    }
}

/// The first 16 hex digits of a hash, for messages.
pub fn short(h: &Hash) -> String {
    hex::encode(&h[..8])
}

/// The payload (the encoded `LogEntry`) of the frame at `loc`, checksum checked.
pub fn read_payload_at(dir: &Path, loc: Location) -> Result<Vec<u8>, AuditError> {
    let path = dir.join(segment_name(loc.segment));
    let f = File::open(&path).map_err(io(&path))?;
    let mut hdr = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut hdr, loc.offset).map_err(io(&path))?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if len > MAX_ENTRY {
        return Err(AuditError::Corrupt {
            seq: 0,
            reason: format!("bad frame length at {}:{}", path.display(), loc.offset),
        });
    }
    let mut payload = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut payload, loc.offset + 8)
        .map_err(io(&path))?;
    if crc32fast::hash(&payload) != u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) {
        return Err(AuditError::Corrupt {
            seq: 0,
            reason: format!("bad frame at {}:{}", path.display(), loc.offset),
        });
    }
    Ok(payload)
}

/// Reads the entry at `loc`.
pub fn read_at(dir: &Path, loc: Location) -> Result<ReadEntry, AuditError> {
    let path = dir.join(segment_name(loc.segment));
    let mut f = File::open(&path).map_err(io(&path))?;
    f.seek(SeekFrom::Start(loc.offset)).map_err(io(&path))?;
    let mut hdr = [0u8; 8];
    f.read_exact(&mut hdr).map_err(io(&path))?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if len > MAX_ENTRY {
        return Err(AuditError::Corrupt {
            seq: 0,
            reason: format!("bad frame length at {}:{}", path.display(), loc.offset),
        });
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload).map_err(io(&path))?;
    let crc = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let entry = LogEntry::decode(payload.as_slice())
        .ok()
        .filter(|_| crc32fast::hash(&payload) == crc)
        .ok_or_else(|| AuditError::Corrupt {
            seq: 0,
            reason: format!("bad frame at {}:{}", path.display(), loc.offset),
        })?;
    Ok(ReadEntry {
        hash: Sha256::digest(&payload).into(),
        leaf: super::merkle::leaf_hash(&payload),
        entry,
        location: loc,
        end: loc.offset + 8 + u64::from(len),
    })
}

struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<Appended, AuditError>>,
}

/// How an append reaches the writer.
#[derive(Clone)]
enum Submit {
    /// To the writer thread.
    Thread(mpsc::Sender<Pending>),
    /// Into a queue that a leader among the appending calls writes.
    Leader(Arc<LeaderState>),
}

struct LeaderState {
    queue: std::sync::Mutex<Vec<Pending>>,
    writer: std::sync::Mutex<Writer>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LeaderState {
    /// Writes the queued groups while the queue is not empty. The writer lock is released
    /// while the queue's lock is held, so an append that queued after the last check finds
    /// the writer free and leads itself.
    fn lead(&self, mut w: std::sync::MutexGuard<'_, Writer>) {
        loop {
            let batch = {
                let mut q = locked(&self.queue);
                if q.is_empty() {
                    drop(w);
                    return;
                }
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect::<Vec<_>>()
            };
            let m = w.opts.metrics.clone();
            m.group_commit_records.observe(batch.len() as f64);
            let started = Instant::now();
            w.commit(batch);
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Leads if no other call does. On a work-stealing runtime the blocking write is done
    /// in `block_in_place`, so the thread's other tasks move on; on a current-thread
    /// runtime it blocks the thread (every other call waits for the group anyway).
    fn try_lead(&self) {
        let Ok(w) = self.writer.try_lock() else {
            return;
        };
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.lead(w));
        } else {
            self.lead(w);
        }
    }
}

/// Handle of the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    submit: Submit,
    head: watch::Receiver<Head>,
    durable: watch::Receiver<Head>,
    dir: PathBuf,
    repaired: Option<Repair>,
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`: verifies the chain, cuts a torn tail of the last
    /// segment, and starts the writer thread. `committed` receives every committed batch (for
    /// the indexes); it is bounded, so an index that falls behind holds the writer back
    /// instead of letting its queue (and the node's memory) grow without end. A chain broken anywhere but in a torn tail refuses to open: the node
    /// must not write on top of a tampered log.
    pub fn open(
        dir: &Path,
        opts: LogOptions,
        committed: std::sync::mpsc::SyncSender<Vec<Appended>>,
    ) -> Result<AuditLog, AuditError> {
        Self::open_anchored(dir, opts, committed, &[])
    }

    /// [`Self::open`], with the (seq, hash) of every checkpoint this node signed: a log that
    /// disagrees with one, or ends before the newest, refuses to open, and a torn tail is
    /// cut only if no checkpoint covers it.
    pub fn open_anchored(
        dir: &Path,
        opts: LogOptions,
        committed: std::sync::mpsc::SyncSender<Vec<Appended>>,
        checkpoints: &[(u64, Hash)],
    ) -> Result<AuditLog, AuditError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let report = verify_chain(dir, checkpoints)?;
        let (mut seg_first, mut file_len) = (report.head.seq + 1, 0u64);
        let repaired = match (&report.first_bad, &report.torn_tail) {
            (None, _) => None,
            (Some(_), Some(torn)) => Some(cut_torn_tail(dir, torn)?),
            (Some((seq, reason)), None) => {
                return Err(AuditError::Corrupt {
                    seq: *seq,
                    reason: reason.clone(),
                })
            }
        };
        // Segments a prune left on disk (it stopped between writing the base and removing
        // them) are removed now: the archive holds them.
        let base = Base::read(dir)?.map_or(0, |b| b.seq);
        let mut segs = segments(dir)?;
        for (first, path) in segs.iter().filter(|(f, _)| *f <= base) {
            tracing::info!(segment = %path.display(), first, "removing an audit segment a prune archived");
            fs::remove_file(path).map_err(io(path))?;
        }
        segs.retain(|(f, _)| *f > base);
        if let Some((first, path)) = segs.last() {
            seg_first = *first;
            file_len = fs::metadata(path).map_err(io(path))?.len();
        }
        let path = dir.join(segment_name(seg_first));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(dir)?;
        let (head_tx, head_rx) = watch::channel(report.head);
        let (durable_tx, durable_rx) = watch::channel(report.head);
        let writer = Writer {
            dir: dir.to_path_buf(),
            opts,
            file,
            seg_first,
            file_len,
            head: report.head,
            tree: report.tree.clone(),
            head_tx,
            durable_tx,
            committed,
            last_sync: Instant::now(),
            dirty: false,
        };
        let submit = if writer.opts.handoff == Handoff::Leader
            && writer.opts.durability == Durability::Sync
        {
            Submit::Leader(Arc::new(LeaderState {
                queue: std::sync::Mutex::new(Vec::new()),
                writer: std::sync::Mutex::new(writer),
            }))
        } else {
            let (tx, rx) = mpsc::channel::<Pending>(8192);
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(io(dir))?;
            Submit::Thread(tx)
        };
        Ok(AuditLog {
            submit,
            head: head_rx,
            durable: durable_rx,
            dir: dir.to_path_buf(),
            repaired,
        })
    }

    /// What opening the log repaired, if anything.
    pub fn repaired(&self) -> Option<&Repair> {
        self.repaired.as_ref()
    }

    /// The newest head known to be on disk (fsynced): in `sync` mode the head itself, in
    /// `batch` mode the head as of the last sync. Checkpoints sign this one, so that no crash
    /// can leave a log shorter than a checkpoint.
    pub fn durable_head(&self) -> Head {
        *self.durable.borrow()
    }

    /// Appends a record; resolves once it is durable (per the durability mode).
    pub async fn append(&self, record: AuditRecord) -> Result<Appended, AuditError> {
        let (done, rx) = oneshot::channel();
        match &self.submit {
            Submit::Thread(tx) => tx
                .send(Pending { record, done })
                .await
                .map_err(|_| AuditError::Stopped)?,
            Submit::Leader(l) => {
                locked(&l.queue).push(Pending { record, done });
                l.try_lead();
            }
        }
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Where the bytes of cut torn tails are kept, inside the log directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Moves a torn tail out of the log: its bytes are written (and synced) to a quarantine file
/// first, then the segment is truncated to the last complete record.
fn cut_torn_tail(dir: &Path, torn: &TornTail) -> Result<Repair, AuditError> {
    let path = &torn.segment;
    let data = fs::read(path).map_err(io(path))?;
    let start = usize::try_from(torn.start).unwrap_or(usize::MAX);
    let bytes = data.get(start..).unwrap_or_default();
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir).map_err(io(&qdir))?;
    let seg = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let quarantine = qdir.join(format!(
        "{seg}.{}-{}.at-{}.torn",
        torn.start,
        torn.end,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    let mut q = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&quarantine)
        .map_err(io(&quarantine))?;
    q.write_all(bytes)
        .and_then(|()| q.sync_all())
        .map_err(io(&quarantine))?;
    sync_dir(&qdir)?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(torn.start).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    tracing::warn!(
        seq = torn.seq,
        segment = %path.display(),
        bytes = %format!("{}..{}", torn.start, torn.end),
        quarantine = %quarantine.display(),
        "cut a torn final audit frame left by a crash (never acknowledged); its bytes are kept in quarantine"
    );
    Ok(Repair {
        torn: torn.clone(),
        quarantine,
    })
}

/// A batch framed for writing.
struct Framed {
    buf: Vec<u8>,
    done: Vec<oneshot::Sender<Result<Appended, AuditError>>>,
    appended: Vec<Appended>,
    /// The head after the batch.
    head: Head,
    /// The Merkle tree after the batch.
    tree: super::merkle::Frontier,
    /// The segment's length after the batch.
    end: u64,
}

struct Writer {
    dir: PathBuf,
    opts: LogOptions,
    file: File,
    seg_first: u64,
    file_len: u64,
    head: Head,
    /// The Merkle tree of the log (its root is `head.root`).
    tree: super::merkle::Frontier,
    head_tx: watch::Sender<Head>,
    durable_tx: watch::Sender<Head>,
    committed: std::sync::mpsc::SyncSender<Vec<Appended>>,
    last_sync: Instant,
    dirty: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        // Batch mode waits for the next append with a timeout (the sync window) on a small
        // timer-only runtime of this thread, instead of polling: an idle node costs nothing.
        let timer = match self.opts.durability {
            Durability::Sync => None,
            Durability::Batch(_) => match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(error) => {
                    tracing::error!(%error, "audit writer cannot start its timer; syncing every append");
                    self.opts.durability = Durability::Sync;
                    None
                }
            },
        };
        loop {
            let first = match (&timer, self.opts.durability) {
                (Some(rt), Durability::Batch(window)) if self.dirty => {
                    let wait = (self.last_sync + window).saturating_duration_since(Instant::now());
                    // The timer must be made inside the runtime (it registers with it).
                    match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(p) => p,
                        // The window passed: sync what was written.
                        Err(_) => {
                            self.sync_now();
                            continue;
                        }
                    }
                }
                _ => rx.blocking_recv(),
            };
            let Some(first) = first else {
                // Every sender is gone: the node is stopping.
                if self.dirty {
                    self.sync_now();
                }
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let m = self.opts.metrics.clone();
            m.queue_depth
                .set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
            m.group_commit_records.observe(batch.len() as f64);
            let started = Instant::now();
            self.commit(batch);
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    fn sync_now(&mut self) {
        match self.file.sync_data() {
            Ok(()) => {
                self.durable_tx.send_replace(self.head);
            }
            Err(error) => {
                self.opts.metrics.writable.set(0);
                tracing::error!(%error, "audit fsync failed")
            }
        }
        self.last_sync = Instant::now();
        self.dirty = false;
    }

    /// Frames, writes and (sync mode) fsyncs one batch, then acknowledges it.
    fn commit(&mut self, batch: Vec<Pending>) {
        let framed = self.frame_batch(batch);
        if framed.buf.is_empty() {
            return;
        }
        if let Err(source) = self.write(&framed.buf) {
            // Nothing of this batch is acknowledged, and the node says NOT_SERVING until a
            // write (or the writability probe) succeeds again.
            self.opts.metrics.writable.set(0);
            tracing::error!(error = %source, "audit write failed; refusing the batch");
            for tx in framed.done {
                let _ = tx.send(Err(AuditError::Io {
                    path: self.dir.display().to_string(),
                    source: std::io::Error::new(source.kind(), source.to_string()),
                }));
            }
            return;
        }
        self.opts.metrics.writable.set(1);
        self.file_len = framed.end;
        self.head = framed.head;
        self.tree = framed.tree;
        if matches!(self.opts.durability, Durability::Sync) {
            self.last_sync = Instant::now();
            self.durable_tx.send_replace(framed.head);
        } else {
            self.dirty = true;
            if self.last_sync.elapsed() >= self.window() {
                self.sync_now();
            }
        }
        let _ = self.head_tx.send(framed.head);
        for (tx, a) in framed.done.into_iter().zip(framed.appended.iter()) {
            let _ = tx.send(Ok(a.clone()));
        }
        let _ = self.committed.send(framed.appended);
        if self.file_len >= self.opts.segment_bytes {
            self.rotate();
        }
    }

    /// Chains and frames the records of a batch after the current head; a record too large
    /// to frame is refused on its own.
    fn frame_batch(&self, batch: Vec<Pending>) -> Framed {
        let mut out = Framed {
            buf: Vec::new(),
            done: Vec::with_capacity(batch.len()),
            appended: Vec::with_capacity(batch.len()),
            head: self.head,
            tree: self.tree.clone(),
            end: self.file_len,
        };
        let mut receipts = ReceiptGroup::default();
        let mut leaves = Vec::with_capacity(batch.len());
        let now_s = crate::assertion::now_s();
        for p in batch {
            let entry = LogEntry {
                seq: out.head.seq + 1,
                prev_hash: out.head.hash.to_vec(),
                record: Some(p.record),
            };
            let (bytes, hash) = match frame(&entry) {
                Ok(f) => f,
                Err(e) => {
                    let _ = p.done.send(Err(e));
                    continue;
                }
            };
            let location = Location {
                segment: self.seg_first,
                offset: out.end,
            };
            out.end += bytes.len() as u64;
            // The leaf is the payload: the frame without its length and checksum.
            let merkle_leaf = super::merkle::leaf_hash(&bytes[8..]);
            out.tree.push(merkle_leaf);
            out.buf.extend_from_slice(&bytes);
            out.head = Head {
                seq: entry.seq,
                hash,
                root: out.head.root,
            };
            let mut record = entry.record.unwrap_or_default();
            record.seq = entry.seq;
            let leaf = if record.side == Side::Provider as i32 {
                receipts.push(&ReceiptClaims::of(&record, entry.seq, now_s))
            } else {
                None
            };
            leaves.push(leaf);
            out.appended.push(Appended {
                seq: entry.seq,
                hash,
                leaf: merkle_leaf,
                location,
                record: Arc::new(record),
                receipt: None,
            });
            out.done.push(p.done);
        }
        out.head.root = out.tree.root();
        // The group's receipts share one seal (see `receipt`).
        if !receipts.is_empty() {
            let group = Arc::new(receipts);
            for (a, leaf) in out.appended.iter_mut().zip(leaves) {
                a.receipt = leaf.map(|index| ReceiptLeaf {
                    group: group.clone(),
                    index,
                });
            }
        }
        out
    }

    /// Writes (and in sync mode fsyncs) `buf` at the end of the segment. On failure the
    /// segment is cut back to where the batch began, so that no unacknowledged frame stays
    /// in front of the next batch (a later open would otherwise see complete frames of
    /// records that were never acknowledged, followed by others with the same sequence).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let written = self
            .file
            .write_all(buf)
            .and_then(|()| match self.opts.durability {
                Durability::Sync => self.file.sync_data(),
                Durability::Batch(_) => Ok(()),
            });
        if written.is_err() {
            if let Err(error) = self.file.set_len(self.file_len) {
                tracing::error!(%error, "audit segment could not be cut back after a failed write; the next open will refuse it");
            }
        }
        written
    }

    fn window(&self) -> Duration {
        match self.opts.durability {
            Durability::Batch(w) => w,
            Durability::Sync => Duration::ZERO,
        }
    }

    fn rotate(&mut self) {
        self.sync_now();
        let first = self.head.seq + 1;
        let path = self.dir.join(segment_name(first));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => {
                self.file = f;
                self.seg_first = first;
                self.file_len = 0;
                if let Err(error) = sync_dir(&self.dir) {
                    tracing::error!(%error, "audit directory sync failed");
                }
            }
            Err(error) => {
                tracing::error!(%error, "audit segment rotation failed; continuing in the current segment")
            }
        }
    }
}
