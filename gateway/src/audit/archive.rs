//! Archives of a node's audit log, checkable offline on another machine, and pruning what an
//! archive holds once its retention has passed (`tongban audit archive`, `verify-archive`,
//! `prune`; the node stopped for `archive` and `prune`).
//!
//! An archive is a directory (docs/audit-format.md §7):
//! - `segments/seg-NNNNNNNNNNNN.log`: the frames of entries `from_seq..=to_seq`, as logged;
//! - `checkpoints.json`: the node's signed checkpoints in that range, the last at `to_seq`;
//! - `node.pem`, `ca.pem`: the node certificate that signed them and its city's CA;
//! - `manifest.json`: the range, the `prev_hash` of its first entry, the Merkle frontier of
//!   the entries before it (so that the signed tree roots can be recomputed), and the
//!   SHA-256 of every file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tongban_proto::audit::v1::{AuditRecord, Checkpoint, SignedCheckpoint};

use super::log::{self, Base, Hash};
use super::merkle::Frontier;
use crate::store::Store as _;
use crate::trust::{self, TrustBundle};

/// The format tag of an archive's manifest.
pub const FORMAT: &str = "tongban-audit-archive/1";

pub use crate::config::Retention;

/// What an archive holds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub city: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub checkpoints: usize,
}

/// What a prune removed.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub segments: usize,
    pub records: u64,
    /// The log now starts after this seq.
    pub base: u64,
    /// Why it stopped where it did.
    pub stopped: String,
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The node's own signed checkpoints (the node stopped: its store is opened here).
fn own_checkpoints(data_dir: &Path) -> Result<Vec<(Checkpoint, SignedCheckpoint)>, String> {
    let store = crate::store::LocalStore::open_now(&data_dir.join("state"))
        .map_err(|e| format!("cannot open the node's store (is the node stopped?): {e}"))?;
    let ks = store
        .keyspace("audit.checkpoints")
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for kv in ks.scan_prefix(b"") {
        let (_, v) = kv.map_err(|e| e.to_string())?;
        let s = SignedCheckpoint::decode(v.as_slice()).map_err(|e| e.to_string())?;
        let c = Checkpoint::decode(s.checkpoint.as_slice()).map_err(|e| e.to_string())?;
        out.push((c, s));
    }
    out.sort_by_key(|(c, _)| c.seq);
    Ok(out)
}

/// One entry of a log walked with its frame's bytes.
struct Framed {
    seq: u64,
    segment: u64,
    frame: Vec<u8>,
    hash: Hash,
    leaf: Hash,
    prev_hash: Vec<u8>,
    record: Option<AuditRecord>,
}

/// Walks the log in `dir` (from its base), giving each entry with its frame's bytes; the log
/// must verify.
fn walk(dir: &Path, mut each: impl FnMut(Framed) -> Result<bool, String>) -> Result<(), String> {
    let base = Base::read(dir)
        .map_err(|e| e.to_string())?
        .map_or(0, |b| b.seq);
    let report = log::verify_dir(dir, &[], |_| {}).map_err(|e| e.to_string())?;
    if let Some((seq, why)) = report.first_bad {
        return Err(format!("the log does not verify at seq {seq}: {why}"));
    }
    for (first, path) in log::segments(dir).map_err(|e| e.to_string())? {
        if first <= base {
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut failed = None;
        let mut go = true;
        log::read_frames(first, &data, true, |r| {
            let frame = data[r.location.offset as usize..r.end as usize].to_vec();
            let f = Framed {
                seq: r.entry.seq,
                segment: first,
                frame,
                hash: r.hash,
                leaf: r.leaf,
                prev_hash: r.entry.prev_hash,
                record: r.entry.record,
            };
            match each(f) {
                Ok(more) => {
                    go = more;
                    more
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(e) = failed {
            return Err(e);
        }
        if !go {
            break;
        }
    }
    Ok(())
}

/// Writes an archive of entries `from..=to` of the node whose data directory is `data_dir`
/// to `out`. `to` is rounded down to the newest checkpoint the node signed at or before it
/// (an archive ends at a signed head); `from` defaults to the log's first entry.
pub fn write(
    data_dir: &Path,
    node_cert_pem: &Path,
    ca_pem: &[u8],
    from: Option<u64>,
    to: Option<u64>,
    out: &Path,
) -> Result<Summary, String> {
    let dir = data_dir.join("audit");
    let base = Base::read(&dir).map_err(|e| e.to_string())?;
    let start = base.as_ref().map_or(1, |b| b.seq + 1);
    let from = from.unwrap_or(start);
    if from < start {
        return Err(format!(
            "the log starts at seq {start} (earlier records were archived and pruned)"
        ));
    }
    let checkpoints = own_checkpoints(data_dir)?;
    let (last, _) = checkpoints
        .iter()
        .rev()
        .find(|(c, _)| to.is_none_or(|t| c.seq <= t) && !c.tree_root.is_empty())
        .ok_or("no checkpoint with a tree root at or before --to: start the node to sign one")?;
    let to = last.seq;
    if to < from {
        return Err(format!(
            "the newest checkpoint at or before --to is at seq {to}, before --from {from}"
        ));
    }
    let city = last.city.clone();
    std::fs::create_dir_all(out.join("segments")).map_err(|e| e.to_string())?;
    let mut frontier = base.map(|b| b.tree).unwrap_or_default();
    let mut before = None;
    let mut prev_hash = Vec::new();
    let mut segments: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    walk(&dir, |e| {
        if e.seq < from {
            frontier.push(e.leaf);
            return Ok(true);
        }
        if e.seq == from {
            before = Some(frontier.clone());
            prev_hash = e.prev_hash.clone();
        }
        segments
            .entry(e.segment.max(from))
            .or_default()
            .extend_from_slice(&e.frame);
        Ok(e.seq < to)
    })?;
    let before = before.ok_or_else(|| format!("the log holds no record {from}"))?;
    let mut files = serde_json::Map::new();
    let mut put = |name: String, bytes: &[u8]| -> Result<(), String> {
        std::fs::write(out.join(&name), bytes).map_err(|e| format!("{name}: {e}"))?;
        files.insert(name, Value::from(sha_hex(bytes)));
        Ok(())
    };
    for (first, bytes) in &segments {
        put(format!("segments/seg-{first:012}.log"), bytes)?;
    }
    let in_range: Vec<Value> = checkpoints
        .iter()
        .filter(|(c, _)| c.seq >= from && c.seq <= to)
        .map(|(_, s)| json!({"checkpoint": B64.encode(&s.checkpoint), "signature": B64.encode(&s.signature)}))
        .collect();
    let n = in_range.len();
    put(
        "checkpoints.json".into(),
        Value::from(in_range).to_string().as_bytes(),
    )?;
    let cert =
        std::fs::read(node_cert_pem).map_err(|e| format!("{}: {e}", node_cert_pem.display()))?;
    put("node.pem".into(), &cert)?;
    put("ca.pem".into(), ca_pem)?;
    let manifest = json!({
        "format": FORMAT,
        "city": city,
        "from_seq": from,
        "to_seq": to,
        "prev_hash": hex::encode(&prev_hash),
        "frontier": before.nodes().iter().map(|(l, h)| json!([l, hex::encode(h)])).collect::<Vec<_>>(),
        "created_at_ms": super::now_ms(),
        "files": files,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(Summary {
        city,
        from_seq: from,
        to_seq: to,
        checkpoints: n,
    })
}

/// An archive read back and checked.
struct Checked {
    summary: Summary,
    /// Entry hash of each archived seq, in order from `from_seq`.
    hashes: Vec<Hash>,
}

fn hash_of(v: &Value) -> Option<Hash> {
    hex::decode(v.as_str()?).ok()?.try_into().ok()
}

fn check(archive: &Path, bundle: &TrustBundle) -> Result<Checked, String> {
    let text =
        std::fs::read(archive.join("manifest.json")).map_err(|e| format!("manifest.json: {e}"))?;
    let m: Value = serde_json::from_slice(&text).map_err(|e| format!("manifest.json: {e}"))?;
    if m["format"] != FORMAT {
        return Err(format!("not an archive (format must be `{FORMAT}`)"));
    }
    let files = m["files"].as_object().ok_or("manifest.json: no files")?;
    for (name, sha) in files {
        if name.contains("..") || name.starts_with('/') {
            return Err(format!("manifest.json names `{name}`, outside the archive"));
        }
        let bytes = std::fs::read(archive.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if Some(sha_hex(&bytes).as_str()) != sha.as_str() {
            return Err(format!(
                "{name} is not the file the manifest names (SHA-256 differs)"
            ));
        }
    }
    let city = m["city"]
        .as_str()
        .ok_or("manifest.json: no city")?
        .to_string();
    let (from, to) = (
        m["from_seq"].as_u64().ok_or("manifest.json: no from_seq")?,
        m["to_seq"].as_u64().ok_or("manifest.json: no to_seq")?,
    );
    let pem = std::fs::read(archive.join("node.pem")).map_err(|e| format!("node.pem: {e}"))?;
    let cert: CertificateDer<'static> = rustls_pemfile_cert(&pem)?;
    bundle
        .verify_node_cert(&city, std::slice::from_ref(&cert))
        .map_err(|e| format!("node.pem is not `{city}`'s node certificate: {e}"))?;
    let list: Vec<Value> = serde_json::from_slice(
        &std::fs::read(archive.join("checkpoints.json"))
            .map_err(|e| format!("checkpoints.json: {e}"))?,
    )
    .map_err(|e| format!("checkpoints.json: {e}"))?;
    let mut checkpoints = BTreeMap::new();
    for (i, s) in list.iter().enumerate() {
        let b = |k: &str| {
            s[k].as_str()
                .and_then(|x| B64.decode(x).ok())
                .ok_or_else(|| format!("checkpoints.json[{i}].{k}: base64 required"))
        };
        let (bytes, sig) = (b("checkpoint")?, b("signature")?);
        trust::verify_signature(&cert, &bytes, &sig)
            .map_err(|e| format!("checkpoints.json[{i}]: {e}"))?;
        let c = Checkpoint::decode(bytes.as_slice())
            .map_err(|e| format!("checkpoints.json[{i}]: {e}"))?;
        if c.city != city {
            return Err(format!("checkpoints.json[{i}] is `{}`'s", c.city));
        }
        checkpoints.insert(c.seq, c);
    }
    if !checkpoints.contains_key(&to) {
        return Err(format!(
            "no signed checkpoint at the archive's last seq {to}"
        ));
    }
    let nodes = m["frontier"]
        .as_array()
        .ok_or("manifest.json: no frontier")?
        .iter()
        .map(|n| Some((u32::try_from(n[0].as_u64()?).ok()?, hash_of(&n[1])?)))
        .collect::<Option<Vec<_>>>()
        .ok_or("manifest.json: a frontier node is not [level, hex]")?;
    let mut tree = Frontier::from_parts(from - 1, nodes)
        .ok_or("manifest.json: the frontier does not fit from_seq")?;
    let mut prev = hex::decode(m["prev_hash"].as_str().unwrap_or_default())
        .map_err(|_| "manifest.json: prev_hash is not hex")?;
    let mut next = from;
    let mut hashes = Vec::new();
    let mut segs: Vec<(u64, PathBuf)> =
        log::segments(&archive.join("segments")).map_err(|e| e.to_string())?;
    segs.sort();
    for (first, path) in segs {
        if !files.contains_key(&format!(
            "segments/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        )) {
            return Err(format!("{} is not in the manifest", path.display()));
        }
        if first != next {
            return Err(format!(
                "segment {} starts at seq {first}, expected {next}",
                path.display()
            ));
        }
        let data = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut failed = None;
        let stop = log::read_frames(first, &data, true, |r| {
            let why = if r.entry.seq != next {
                Some(format!("sequence: expected {next}, found {}", r.entry.seq))
            } else if r.entry.prev_hash != prev {
                Some(format!("chain broken at seq {next}"))
            } else {
                None
            };
            if let Some(w) = why {
                failed = Some(w);
                return false;
            }
            tree.push(r.leaf);
            if let Some(c) = checkpoints.get(&r.entry.seq) {
                if c.head_hash != r.hash || (!c.tree_root.is_empty() && c.tree_root != tree.root())
                {
                    failed = Some(format!(
                        "the checkpoint at seq {} does not hold for the archived records",
                        c.seq
                    ));
                    return false;
                }
            }
            prev = r.hash.to_vec();
            hashes.push(r.hash);
            next += 1;
            true
        })
        .map_err(|e| e.to_string())?;
        if let Some(w) = failed {
            return Err(w);
        }
        if stop != log::Stop::End {
            return Err(format!("{}: {stop:?}", path.display()));
        }
    }
    if next != to + 1 {
        return Err(format!(
            "the archive holds records {from} to {}, its manifest says {to}",
            next - 1
        ));
    }
    Ok(Checked {
        summary: Summary {
            city,
            from_seq: from,
            to_seq: to,
            checkpoints: checkpoints.len(),
        },
        hashes,
    })
}

fn rustls_pemfile_cert(pem: &[u8]) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem).map_err(|e| format!("node.pem: {e}"))
}

/// Checks an archive offline against the federation's trust bundle: every file as the
/// manifest names it, the node certificate, the checkpoints' signatures, the chain from the
/// first entry's `prev_hash` to the last, and each checkpoint's head hash and tree root.
pub fn verify(archive: &Path, bundle: &TrustBundle) -> Result<Summary, String> {
    check(archive, bundle).map(|c| c.summary)
}

/// Removes from the log of the (stopped) node in `data_dir` the oldest whole segments that
/// `archive` holds (the same records, checked) and whose every record is past its retention;
/// never the newest segment. The log then starts after them (`audit/pruned.json`): the node
/// restarts, serves, and verifies what remains.
pub fn prune(
    data_dir: &Path,
    archive: &Path,
    bundle: &TrustBundle,
    retention: &Retention,
    now_ms: i64,
) -> Result<Pruned, String> {
    let a = check(archive, bundle)?;
    let dir = data_dir.join("audit");
    // The store's lock: the node must be stopped.
    drop(own_checkpoints(data_dir)?);
    let base = Base::read(&dir).map_err(|e| e.to_string())?;
    let start = base.as_ref().map_or(0, |b| b.seq);
    if a.summary.from_seq > start + 1 {
        return Err(format!(
            "the archive starts at seq {}, the log at {}: archive from the log's start",
            a.summary.from_seq,
            start + 1
        ));
    }
    let segs: Vec<u64> = log::segments(&dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| *f > start)
        .collect();
    let newest = segs.last().copied().unwrap_or(0);
    let mut tree = base.as_ref().map(|b| b.tree.clone()).unwrap_or_default();
    let mut new_base: Option<(u64, Hash, Frontier)> = None;
    let mut stopped = String::new();
    let mut current: Option<(u64, bool, u64, Hash, Frontier)> = None; // (segment, prunable so far, last seq, hash, tree)
    let mut removable: Vec<u64> = Vec::new();
    walk(&dir, |e| {
        if let Some((seg, ok, last, hash, t)) = current.take() {
            if seg != e.segment {
                if !ok {
                    return Ok(false);
                }
                removable.push(seg);
                new_base = Some((last, hash, t));
            } else {
                current = Some((seg, ok, last, hash, t));
            }
        }
        tree.push(e.leaf);
        let (seg, mut ok) = current.as_ref().map_or((e.segment, true), |c| (c.0, c.1));
        if e.segment == newest {
            stopped = format!("the newest segment (from seq {newest}) is always kept");
            return Ok(false);
        }
        let archived = e.seq >= a.summary.from_seq
            && e.seq <= a.summary.to_seq
            && a.hashes[(e.seq - a.summary.from_seq) as usize] == e.hash;
        if !archived {
            ok = false;
            if stopped.is_empty() {
                stopped = format!("record {} is not in the archive", e.seq);
            }
        }
        let record = e.record.unwrap_or_default();
        let age = now_ms.saturating_sub(record.ended_at_ms.max(record.started_at_ms));
        let keep = i64::try_from(retention.of(&record).as_millis()).unwrap_or(i64::MAX);
        if age < keep {
            ok = false;
            if stopped.is_empty() {
                stopped = format!(
                    "record {} is inside its retention period ({} days)",
                    e.seq,
                    retention.of(&record).as_secs() / 86_400
                );
            }
        }
        current = Some((seg, ok, e.seq, e.hash, tree.clone()));
        Ok(ok)
    })?;
    let Some((base_seq, base_hash, base_tree)) = new_base else {
        return Ok(Pruned {
            segments: 0,
            records: 0,
            base: start,
            stopped,
        });
    };
    // The base first (durable), then the segments: a crash between leaves segments the
    // next open removes.
    Base {
        seq: base_seq,
        hash: base_hash,
        tree: base_tree,
    }
    .write(&dir)
    .map_err(|e| e.to_string())?;
    for first in &removable {
        let path = dir.join(format!("seg-{first:012}.log"));
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Pruned {
        segments: removable.len(),
        records: base_seq - start,
        base: base_seq,
        stopped,
    })
}
