//! Audit index throughput on this machine: records indexed per second one entry at a time
//! (reindex) and one append per group commit of 128 (the node), with records shaped like
//! real ones; then the time of a query (by caller, one page) and of a request-id lookup over
//! the whole index.
//!
//! `cargo bench -p tongban-gateway --bench audit_index` prints records/s for each, the query
//! times, and the size of the index against the size of the log it indexes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use tongban_gateway::audit::index::{AuditIndex, Filter};
use tongban_gateway::audit::log::{Appended, Location};
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
        leaf: [8; 32],
        location: Location {
            segment: 1,
            offset: i * 400,
        },
        record: std::sync::Arc::new(record(i)),
        receipt: None,
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
    let index = AuditIndex::open(dir.path()).unwrap();
    let all: Vec<Appended> = (0..RECORDS).map(appended).collect();
    let log_bytes: u64 = all
        .iter()
        .map(|a| prost::Message::encoded_len(a.record.as_ref()) as u64 + 8 + 45)
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
    let q = Instant::now();
    let page = index.query(&Filter {
        caller: Some("jinan/org7".into()),
        limit: 50,
        ..Filter::default()
    });
    let query_ms = q.elapsed().as_secs_f64() * 1e3;
    let q = Instant::now();
    let hits = index.by_request(&record(RECORDS / 2).request_id);
    let lookup_ms = q.elapsed().as_secs_f64() * 1e3;
    assert_eq!(page.0.len(), 50);
    assert_eq!(hits, vec![RECORDS / 2 + 1]);
    drop(index);
    let size = dir_size(dir.path());
    println!(
        "{:<32} {:>9.0} records/s   query {query_ms:.1} ms, lookup {lookup_ms:.1} ms   index {:>6.1} MiB for a log of {:>5.1} MiB ({:.2}x)",
        if batched {
            format!("one append per group of {GROUP}")
        } else {
            "one entry at a time".to_string()
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
