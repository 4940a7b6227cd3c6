//! The Merkle tree over a node's audit log (RFC 6962 / RFC 9162 hashing), beside its hash
//! chain: leaf `i` (0-based) is entry `seq = i + 1`, its hash SHA-256(0x00 ‖ the encoded
//! `LogEntry`); an interior node is SHA-256(0x01 ‖ left ‖ right); the tree of `n` leaves is
//! RFC 6962's MTH(D[n]). A checkpoint signs the root at its `seq` beside the chain hash, so
//! that one record is proved in a log with O(log n) hashes (inclusion), and a later
//! checkpoint is proved to extend an earlier one (consistency) — a rollback or a fork is
//! caught without the records in between.
//!
//! - [`Frontier`]: the roots of the perfect subtrees of a tree's leaves, enough to append
//!   and to compute the root (the writer keeps one);
//! - [`TreeStore`]: every perfect subtree's root, one file per level next to the log
//!   (`audit/merkle/level-NN.bin`, 32 bytes each), for proofs; derived data, like the index;
//! - [`verify_inclusion`], [`verify_consistency`]: RFC 9162 §2.1.3.2 and §2.1.4.2.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::log::Hash;

/// SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, root): levels strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees, largest first: (level, root).
    pub fn nodes(&self) -> &[(u32, Hash)] {
        &self.nodes
    }

    /// A frontier from its parts; `None` unless the levels are those of `size`'s bits.
    pub fn from_parts(size: u64, nodes: Vec<(u32, Hash)>) -> Option<Frontier> {
        let levels: Vec<u32> = (0..64u32).rev().filter(|l| size & (1 << l) != 0).collect();
        (levels == nodes.iter().map(|(l, _)| *l).collect::<Vec<_>>())
            .then_some(Frontier { size, nodes })
    }

    /// Appends a leaf; `completed(level, index, hash)` is told of every perfect subtree that
    /// the leaf completes (the leaf itself at level 0 first).
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let mut index = self.size;
        completed(0, index, &leaf);
        let (mut level, mut hash) = (0u32, leaf);
        while let Some(&(l, left)) = self.nodes.last() {
            if l != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed(level, index, &hash);
        }
        self.nodes.push((level, hash));
        self.size += 1;
    }

    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _, _| {});
    }

    /// MTH of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, last)) = it.next() else {
            return empty_root();
        };
        it.fold(last, |acc, (_, left)| node_hash(left, &acc))
    }
}

/// Why a proof cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the tree has {size} leaves: no proof for {what}")]
    OutOfRange { size: u64, what: String },
    #[error("merkle store i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Every perfect subtree's root, a file per level: entry `i` of level `k` is the root of
/// leaves `[i·2^k, (i+1)·2^k)`.
pub struct TreeStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    levels: Vec<File>,
    frontier: Frontier,
}

fn level_path(dir: &Path, level: u32) -> PathBuf {
    dir.join(format!("level-{level:02}.bin"))
}

impl TreeStore {
    /// Opens (or creates) the store in `dir`. A level that holds more than the leaves make
    /// (a crash between level writes) is cut back, one that holds fewer is completed from
    /// the level below: the store always holds the tree of its level-0 leaves.
    pub fn open(dir: &Path) -> Result<TreeStore, ProofError> {
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ProofError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let mut levels = Vec::new();
        let mut size = 0;
        for level in 0..64u32 {
            let path = level_path(dir, level);
            if level > 0 && (size >> level) == 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(err(&path))?;
            let have = f.metadata().map_err(err(&path))?.len() / 32;
            if level == 0 {
                size = have;
            }
            let want = size >> level;
            if have > want || f.metadata().map_err(err(&path))?.len() % 32 != 0 {
                f.set_len(have.min(want) * 32).map_err(err(&path))?;
            }
            levels.push(f);
            let have = have.min(want);
            // Complete a level that a crash left short, from the level below.
            for i in have..want {
                let below = &levels[level as usize - 1];
                let (l, r) = (read(below, 2 * i)?, read(below, 2 * i + 1)?);
                levels[level as usize]
                    .write_all(&node_hash(&l, &r))
                    .map_err(err(&path))?;
            }
        }
        let mut frontier = Frontier {
            size,
            nodes: Vec::new(),
        };
        let mut offset = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                let h = read(&levels[level as usize], offset >> level)?;
                frontier.nodes.push((level, h));
                offset += 1 << level;
            }
        }
        Ok(TreeStore {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner { levels, frontier }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves held.
    pub fn size(&self) -> u64 {
        self.lock().frontier.size
    }

    /// The root of the first `n` leaves (n ≤ size).
    pub fn root(&self, n: u64) -> Result<Hash, ProofError> {
        let inner = self.lock();
        self.check(&inner, n, "a tree of that size")?;
        if n == 0 {
            return Ok(empty_root());
        }
        inner.mth(0, n)
    }

    /// Appends leaves (their hashes), writing every subtree they complete.
    pub fn append(&self, leaves: &[Hash]) -> Result<(), ProofError> {
        let mut inner = self.lock();
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let Inner { frontier, .. } = &mut *inner;
        for leaf in leaves {
            frontier.push_with(*leaf, |level, _, h| {
                let l = level as usize;
                if bufs.len() <= l {
                    bufs.resize(l + 1, Vec::new());
                }
                bufs[l].extend_from_slice(h);
            });
        }
        for (level, buf) in bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let path = level_path(&self.dir, level as u32);
            if inner.levels.len() <= level {
                let f = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| ProofError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                inner.levels.push(f);
            }
            inner.levels[level]
                .write_all(buf)
                .map_err(|source| ProofError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Forgets every leaf after the first `n` (the log was cut back to `n` records).
    pub fn truncate_to(&self, n: u64) -> Result<(), ProofError> {
        if self.size() <= n {
            return Ok(());
        }
        {
            let inner = self.lock();
            for (level, f) in inner.levels.iter().enumerate() {
                f.set_len((n >> level) * 32)
                    .map_err(|source| ProofError::Io {
                        path: level_path(&self.dir, level as u32).display().to_string(),
                        source,
                    })?;
            }
        }
        let reopened = TreeStore::open(&self.dir)?;
        *self.lock() = reopened
            .inner
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        Ok(())
    }

    /// Removes every leaf (before a rebuild).
    pub fn clear(&self) -> Result<(), ProofError> {
        self.truncate_to(0)
    }

    fn check(&self, inner: &Inner, n: u64, what: &str) -> Result<(), ProofError> {
        if n > inner.frontier.size {
            return Err(ProofError::OutOfRange {
                size: inner.frontier.size,
                what: format!("{what} ({n})"),
            });
        }
        Ok(())
    }

    /// RFC 6962 PATH(m, D[n]): the inclusion proof of leaf `m` (0-based) in the tree of the
    /// first `n` leaves.
    pub fn inclusion_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        let inner = self.lock();
        self.check(&inner, n, "a tree of that size")?;
        if m >= n {
            return Err(ProofError::OutOfRange {
                size: n,
                what: format!("leaf {m}"),
            });
        }
        let mut out = Vec::new();
        inner.path(m, 0, n, &mut out)?;
        Ok(out)
    }

    /// RFC 6962 PROOF(m, D[n]): that the tree of the first `n` leaves extends the tree of
    /// the first `m` (0 < m ≤ n).
    pub fn consistency_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        let inner = self.lock();
        self.check(&inner, n, "a tree of that size")?;
        if m == 0 || m > n {
            return Err(ProofError::OutOfRange {
                size: n,
                what: format!("a consistency proof from {m}"),
            });
        }
        let mut out = Vec::new();
        inner.subproof(m, 0, n, true, &mut out)?;
        Ok(out)
    }
}

fn read(f: &File, index: u64) -> Result<Hash, ProofError> {
    let mut h = [0u8; 32];
    f.read_exact_at(&mut h, index * 32)
        .map_err(|source| ProofError::Io {
            path: "merkle level".into(),
            source,
        })?;
    Ok(h)
}

impl Inner {
    /// MTH of the `len` leaves from `off`, where `off` is a multiple of the largest power of
    /// two below `len` (so every perfect piece is one stored node).
    fn mth(&self, off: u64, len: u64) -> Result<Hash, ProofError> {
        if len.is_power_of_two() && off.is_multiple_of(len) {
            let level = len.trailing_zeros();
            return read(&self.levels[level as usize], off >> level);
        }
        let k = split(len);
        Ok(node_hash(&self.mth(off, k)?, &self.mth(off + k, len - k)?))
    }

    fn path(&self, m: u64, off: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
        if n == 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            self.path(m, off, k, out)?;
            out.push(self.mth(off + k, n - k)?);
        } else {
            self.path(m - k, off + k, n - k, out)?;
            out.push(self.mth(off, k)?);
        }
        Ok(())
    }

    fn subproof(
        &self,
        m: u64,
        off: u64,
        n: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), ProofError> {
        if m == n {
            if !whole {
                out.push(self.mth(off, n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, off, k, whole, out)?;
            out.push(self.mth(off + k, n - k)?);
        } else {
            self.subproof(m - k, off + k, n - k, false, out)?;
            out.push(self.mth(off, k)?);
        }
        Ok(())
    }
}

/// RFC 9162 §2.1.3.2: whether `proof` shows leaf `index` with hash `leaf` in the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows that the tree of `second` leaves (root
/// `second_root`) extends the tree of `first` leaves (root `first_root`).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((&start, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// RFC 6962's MTH, recursively, as the RFC writes it.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn the_frontier_and_the_store_give_rfc_6962_roots() {
        let dir = tempfile::tempdir().unwrap();
        let store = TreeStore::open(dir.path()).unwrap();
        let all = leaves(70);
        let mut f = Frontier::default();
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            store.append(&[*l]).unwrap();
            let n = i as u64 + 1;
            assert_eq!(f.root(), mth(&all[..=i]), "frontier at {n}");
            assert_eq!(store.root(n).unwrap(), mth(&all[..=i]), "store at {n}");
        }
        // Reopened: the same tree, and a cut back to 37 leaves.
        drop(store);
        let store = TreeStore::open(dir.path()).unwrap();
        assert_eq!(store.size(), 70);
        assert_eq!(store.root(70).unwrap(), mth(&all));
        store.truncate_to(37).unwrap();
        assert_eq!(store.size(), 37);
        assert_eq!(store.root(37).unwrap(), mth(&all[..37]));
        store.append(&all[37..]).unwrap();
        assert_eq!(store.root(70).unwrap(), mth(&all));
        assert_eq!(Frontier::default().root(), empty_root());
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_wrong_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = TreeStore::open(dir.path()).unwrap();
        let all = leaves(33);
        store.append(&all).unwrap();
        for n in 1..=33u64 {
            let root = mth(&all[..n as usize]);
            for m in 0..n {
                let p = store.inclusion_proof(m, n).unwrap();
                assert!(p.len() <= 64 - (n.leading_zeros() as usize) + 1);
                assert!(
                    verify_inclusion(m, n, &all[m as usize], &p, &root),
                    "{m} in {n}"
                );
                // Another leaf, another index or another root fails.
                let other = all[((m + 1) % n) as usize];
                if n > 1 {
                    assert!(!verify_inclusion(m, n, &other, &p, &root));
                }
                assert!(
                    !verify_inclusion(m, n, &all[m as usize], &p, &mth(&all[..n as usize - 1]))
                        || n == 1
                );
            }
            for m in 1..=n {
                let p = store.consistency_proof(m, n).unwrap();
                let first = mth(&all[..m as usize]);
                assert!(verify_consistency(m, n, &first, &root, &p), "{m} → {n}");
                if m < n {
                    // A fork: the same size, another history.
                    let mut forked = all[..m as usize].to_vec();
                    forked[0] = leaf_hash(b"rewritten");
                    assert!(
                        !verify_consistency(m, n, &mth(&forked), &root, &p),
                        "{m} → {n}"
                    );
                }
            }
        }
    }
}
