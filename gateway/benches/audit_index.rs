//! Audit index throughput on this machine: records indexed per second one insert at a time
//! (the node before batching) and one sled batch per group commit (the node now), with
//! records shaped like real ones, into a store with the node's default cache.
//!
//! `cargo bench -p tongban-gateway --bench audit_index` prints records/s for each and the
//! size of the index store against the size of the log it indexes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use tongban_gateway::audit::index::AuditIndex;
use tongban_gateway::audit::log::{Appended, Location};
use tongban_gateway::store::sled::SledStore;
use tongban_proto::audit::v1::{AuditRecord, Side};

const RECORDS: u64 = 100_000;
const GROUP: usize = 128;

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: format!("{:08x}-4c1e-4b7a-9d3e-{:012x}", i, i * 7919),
        side: Side::Home as i32,
        node_city: "jinan".into(),
        started_at_ms: 1_795_000_000_000 + i as i64 / 10,
        ended_at_ms: 1_795_000_000_002 + i as i64 / 10,
        duration_us: 1800,
        caller_city: "jinan".into(),
        caller_org: format!("org{}", i % 40),
        target_city: "qingdao".into(),
        target_org: "hrss".into(),
        service: "tongban.crosscity.v1.CrossCityService".into(),
        method: "Submit".into(),
        purpose: "case-handling".into(),
        subject_pseudonym: format!("{:032x}", i % 5000),
        request_digest: vec![0xab; 32],
        response_digest: vec![0xcd; 32],
        ..Default::default()
    }
}

fn appended(i: u64) -> Appended {
    Appended {
        seq: i + 1,
        hash: [7; 32],
        location: Location {
            segment: 1,
            offset: i * 400,
        },
        record: record(i),
    }
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

async fn run(batched: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("state")).await.unwrap();
    let index = AuditIndex::open(&store).unwrap();
    let all: Vec<Appended> = (0..RECORDS).map(appended).collect();
    let log_bytes: u64 = all
        .iter()
        .map(|a| prost::Message::encoded_len(&a.record) as u64 + 8 + 45)
        .sum();
    let t = Instant::now();
    if batched {
        for group in all.chunks(GROUP) {
            index.insert_batch(group).unwrap();
        }
    } else {
        for a in &all {
            index.insert(a).unwrap();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    index.flush().unwrap();
    drop(index);
    drop(store);
    let size = dir_size(dir.path());
    println!(
        "{:<32} {:>9.0} records/s   index store {:>6.1} MiB for a log of {:>5.1} MiB ({:.1}x)",
        if batched {
            format!("one batch per group of {GROUP}")
        } else {
            "one insert per key".to_string()
        },
        RECORDS as f64 / secs,
        size as f64 / 1048576.0,
        log_bytes as f64 / 1048576.0,
        size as f64 / log_bytes as f64
    );
}

#[tokio::main]
async fn main() {
    println!("audit index, {RECORDS} records:");
    run(false).await;
    run(true).await;
}
