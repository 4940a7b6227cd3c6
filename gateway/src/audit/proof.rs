//! A proof as a file (`tongban audit prove --out`), and its offline check (`tongban audit
//! verify-proof`): JSON holding what `Audit/Prove` answered — the signed checkpoints, the
//! entry, the hashes and the node certificate — in the form docs/audit-format.md specifies.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tongban_proto::audit::v1::prove_response::Proof;
use tongban_proto::audit::v1::{
    AuditRecord, Checkpoint, ConsistencyProof, InclusionProof, LogEntry, ProveResponse,
    SignedCheckpoint,
};

use super::log::Hash;
use super::merkle;
use crate::trust::{self, TrustBundle};

/// The format tag of a proof file.
pub const FORMAT: &str = "tongban-audit-proof/1";

fn signed_json(s: &SignedCheckpoint) -> Value {
    json!({ "checkpoint": B64.encode(&s.checkpoint), "signature": B64.encode(&s.signature) })
}

fn hashes_json(h: &[Vec<u8>]) -> Value {
    Value::from(h.iter().map(hex::encode).collect::<Vec<_>>())
}

/// A Prove answer as the JSON of a proof file.
pub fn to_json(resp: &ProveResponse) -> Value {
    let mut v = json!({
        "format": FORMAT,
        "node_certificate": B64.encode(&resp.node_certificate),
    });
    match &resp.proof {
        Some(Proof::Inclusion(p)) => {
            v["inclusion"] = json!({
                "entry": B64.encode(&p.entry),
                "leaf_index": p.leaf_index,
                "tree_size": p.tree_size,
                "hashes": hashes_json(&p.hashes),
                "checkpoint": p.checkpoint.as_ref().map(signed_json),
            });
        }
        Some(Proof::Consistency(p)) => {
            v["consistency"] = json!({
                "first": p.first.as_ref().map(signed_json),
                "second": p.second.as_ref().map(signed_json),
                "hashes": hashes_json(&p.hashes),
            });
        }
        None => {}
    }
    v
}

fn b64(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{what}: a base64 string is required"))?;
    B64.decode(s).map_err(|e| format!("{what}: {e}"))
}

fn signed_of(v: &Value, what: &str) -> Result<SignedCheckpoint, String> {
    Ok(SignedCheckpoint {
        checkpoint: b64(&v["checkpoint"], &format!("{what}.checkpoint"))?,
        signature: b64(&v["signature"], &format!("{what}.signature"))?,
        timestamp_token: Vec::new(),
    })
}

fn hashes_of(v: &Value, what: &str) -> Result<Vec<Vec<u8>>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: a list of hex hashes is required"))?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            h.as_str()
                .and_then(|s| hex::decode(s).ok())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("{what}[{i}]: not a 32-byte hex hash"))
        })
        .collect()
}

/// A proof file's JSON back as a Prove answer.
pub fn from_json(v: &Value) -> Result<ProveResponse, String> {
    if v["format"] != FORMAT {
        return Err(format!("not a proof file (format must be `{FORMAT}`)"));
    }
    let proof = if let Some(p) = v.get("inclusion") {
        Proof::Inclusion(InclusionProof {
            entry: b64(&p["entry"], "inclusion.entry")?,
            leaf_index: p["leaf_index"]
                .as_u64()
                .ok_or("inclusion.leaf_index: a number is required")?,
            tree_size: p["tree_size"]
                .as_u64()
                .ok_or("inclusion.tree_size: a number is required")?,
            hashes: hashes_of(&p["hashes"], "inclusion.hashes")?,
            checkpoint: Some(signed_of(&p["checkpoint"], "inclusion.checkpoint")?),
        })
    } else if let Some(p) = v.get("consistency") {
        Proof::Consistency(ConsistencyProof {
            first: Some(signed_of(&p["first"], "consistency.first")?),
            second: Some(signed_of(&p["second"], "consistency.second")?),
            hashes: hashes_of(&p["hashes"], "consistency.hashes")?,
        })
    } else {
        return Err("a proof file holds `inclusion` or `consistency`".into());
    };
    Ok(ProveResponse {
        proof: Some(proof),
        node_certificate: b64(&v["node_certificate"], "node_certificate")?,
    })
}

/// What a checked proof showed.
#[derive(Debug, Clone)]
pub enum Checked {
    /// Record `seq` of `city`'s log is in the tree its checkpoint at `tree_size` signed.
    Inclusion {
        city: String,
        seq: u64,
        tree_size: u64,
        record: Box<AuditRecord>,
    },
    /// `city`'s checkpoint at `second` extends its checkpoint at `first`.
    Consistency {
        city: String,
        first: u64,
        second: u64,
    },
}

/// A checkpoint whose signature verifies with `cert`, which chains to its city's CA.
fn checked_checkpoint(
    signed: &SignedCheckpoint,
    cert: &CertificateDer<'static>,
    bundle: &TrustBundle,
    what: &str,
) -> Result<(Checkpoint, Hash), String> {
    let cp = Checkpoint::decode(signed.checkpoint.as_slice())
        .map_err(|e| format!("{what}: undecodable checkpoint: {e}"))?;
    bundle
        .verify_node_cert(&cp.city, std::slice::from_ref(cert))
        .map_err(|e| format!("{what}: the node certificate is not `{}`'s: {e}", cp.city))?;
    trust::verify_signature(cert, &signed.checkpoint, &signed.signature)
        .map_err(|e| format!("{what}: {e}"))?;
    let root = <Hash>::try_from(cp.tree_root.as_slice()).map_err(|_| {
        format!("{what}: the checkpoint has no tree root (signed before the tree existed)")
    })?;
    Ok((cp, root))
}

/// Checks a proof offline: the node certificate against the trust bundle, the checkpoints'
/// signatures, and the hashes (RFC 9162 verification).
pub fn verify(resp: &ProveResponse, bundle: &TrustBundle) -> Result<Checked, String> {
    let cert = CertificateDer::from(resp.node_certificate.clone());
    match &resp.proof {
        Some(Proof::Inclusion(p)) => {
            let signed = p.checkpoint.as_ref().ok_or("the proof has no checkpoint")?;
            let (cp, root) = checked_checkpoint(signed, &cert, bundle, "checkpoint")?;
            if p.tree_size != cp.seq {
                return Err(format!(
                    "the proof is for a tree of {} entries, the checkpoint signs {}",
                    p.tree_size, cp.seq
                ));
            }
            let entry = LogEntry::decode(p.entry.as_slice())
                .map_err(|e| format!("undecodable entry: {e}"))?;
            if entry.seq != p.leaf_index + 1 {
                return Err(format!(
                    "the entry is seq {}, the proof is for leaf {} (seq {})",
                    entry.seq,
                    p.leaf_index,
                    p.leaf_index + 1
                ));
            }
            let hashes = to_hashes(&p.hashes)?;
            let leaf = merkle::leaf_hash(&p.entry);
            if !merkle::verify_inclusion(p.leaf_index, p.tree_size, &leaf, &hashes, &root) {
                return Err(format!(
                    "record {} is not in the tree of {} entries that `{}` signed",
                    entry.seq, cp.seq, cp.city
                ));
            }
            let mut record = entry.record.unwrap_or_default();
            record.seq = entry.seq;
            Ok(Checked::Inclusion {
                city: cp.city,
                seq: entry.seq,
                tree_size: cp.seq,
                record: Box::new(record),
            })
        }
        Some(Proof::Consistency(p)) => {
            let first = p
                .first
                .as_ref()
                .ok_or("the proof has no first checkpoint")?;
            let second = p
                .second
                .as_ref()
                .ok_or("the proof has no second checkpoint")?;
            let (a, ra) = checked_checkpoint(first, &cert, bundle, "first")?;
            let (b, rb) = checked_checkpoint(second, &cert, bundle, "second")?;
            if a.city != b.city {
                return Err(format!("checkpoints of `{}` and `{}`", a.city, b.city));
            }
            let hashes = to_hashes(&p.hashes)?;
            if !merkle::verify_consistency(a.seq, b.seq, &ra, &rb, &hashes) {
                return Err(format!(
                    "`{}`'s checkpoint at seq {} does not extend its checkpoint at seq {}",
                    a.city, b.seq, a.seq
                ));
            }
            Ok(Checked::Consistency {
                city: a.city,
                first: a.seq,
                second: b.seq,
            })
        }
        None => Err("the answer holds no proof".into()),
    }
}

fn to_hashes(h: &[Vec<u8>]) -> Result<Vec<Hash>, String> {
    h.iter()
        .map(|x| <Hash>::try_from(x.as_slice()).map_err(|_| "a hash is not 32 bytes".to_string()))
        .collect()
}
