//! The cost of the audit log's Merkle tree (RFC 6962) on this machine: what the writer pays
//! per group commit (a leaf hash and a frontier push per record, one root per group), what
//! the tree store pays to keep every subtree, and what one proof costs against a tree of a
//! million records; then the size of proofs at 10⁶ and 10⁸ records, computed.
//!
//! `cargo bench -p tongban-gateway --bench audit_merkle` prints a Markdown table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use tongban_gateway::audit::merkle::{
    leaf_hash, verify_consistency, verify_inclusion, Frontier, TreeStore,
};

const RECORDS: u64 = 1_000_000;
/// A typical encoded entry.
const ENTRY: usize = 360;

/// RFC 6962 PATH length of leaf `m` in a tree of `n`.
fn path_len(m: u64, n: u64) -> u32 {
    if n <= 1 {
        return 0;
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m < k {
        1 + path_len(m, k)
    } else {
        1 + path_len(m - k, n - k)
    }
}

/// RFC 6962 PROOF length from `m` to `n` (SUBPROOF).
fn proof_len(m: u64, n: u64, whole: bool) -> u32 {
    if m == n {
        return u32::from(!whole);
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m <= k {
        1 + proof_len(m, k, whole)
    } else {
        1 + proof_len(m - k, n - k, false)
    }
}

fn main() {
    let payload = vec![0x5au8; ENTRY];
    // The writer: a leaf hash and a push per record, a root per group commit of 128.
    let started = Instant::now();
    let mut f = Frontier::default();
    let mut leaves = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let mut p = payload.clone();
        p[..8].copy_from_slice(&i.to_be_bytes());
        let l = leaf_hash(&p);
        leaves.push(l);
        f.push(l);
        if i % 128 == 127 {
            std::hint::black_box(f.root());
        }
    }
    let writer = started.elapsed();
    // The tree store, fed per group commit like the index thread feeds it.
    let dir = tempfile::tempdir().unwrap();
    let store = TreeStore::open(dir.path()).unwrap();
    let started = Instant::now();
    for group in leaves.chunks(128) {
        store.append(group).unwrap();
    }
    let stored = started.elapsed();
    let root = store.root(RECORDS).unwrap();
    assert_eq!(root, f.root());
    // Proofs against the whole tree.
    let n = 2000u64;
    let started = Instant::now();
    for i in 0..n {
        let m = (i * 7919) % RECORDS;
        let p = store.inclusion_proof(m, RECORDS).unwrap();
        assert!(verify_inclusion(m, RECORDS, &leaves[m as usize], &p, &root));
    }
    let inclusion = started.elapsed() / n as u32;
    let started = Instant::now();
    for i in 1..=n {
        let m = (i * 104_729) % RECORDS + 1;
        let p = store.consistency_proof(m, RECORDS).unwrap();
        if i == 1 {
            let first = store.root(m).unwrap();
            assert!(verify_consistency(m, RECORDS, &first, &root, &p));
        }
    }
    let consistency = started.elapsed() / n as u32;
    let disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| writer: leaf hash + frontier push per record, root per 128 | {:.2} µs per record ({:.0} records/s on one core) |",
        writer.as_secs_f64() * 1e6 / RECORDS as f64,
        RECORDS as f64 / writer.as_secs_f64()
    );
    println!(
        "| writer: one root (per group commit) at 10⁶ records | {} hashes |",
        f.size().count_ones().saturating_sub(1)
    );
    println!(
        "| tree store: append per group of 128 | {:.2} µs per record |",
        stored.as_secs_f64() * 1e6 / RECORDS as f64
    );
    println!(
        "| tree store on disk at 10⁶ records | {:.1} MB ({} bytes per record) |",
        disk as f64 / 1e6,
        disk / RECORDS
    );
    println!(
        "| inclusion proof at 10⁶ records (make + verify) | {:.1} µs |",
        inclusion.as_secs_f64() * 1e6
    );
    println!(
        "| consistency proof at 10⁶ records (make) | {:.1} µs |",
        consistency.as_secs_f64() * 1e6
    );
    for n in [1_000_000u64, 100_000_000] {
        // The longest paths over 4,096 sampled leaves (inclusion) and earlier sizes
        // (consistency).
        let inc = (0..n)
            .step_by((n / 4096) as usize)
            .map(|m| path_len(m, n))
            .max()
            .unwrap();
        let con = (1..n)
            .step_by((n / 4096) as usize)
            .map(|m| proof_len(m, n, true))
            .max()
            .unwrap();
        println!(
            "| proof size at {n} records (computed) | inclusion ≤ {inc} hashes ({} B), consistency ≤ {con} hashes ({} B) |",
            inc * 32,
            con * 32
        );
    }
}
