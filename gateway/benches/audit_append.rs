//! Audit append throughput and commit latency on this machine.
//!
//! `cargo bench -p tongban-gateway --bench audit_append` prints, for sync mode (fsync before
//! acknowledging, group commit) at several numbers of appends in flight, and for batch mode,
//! the records per second and the p50/p99/max latency of one append (from the call until the
//! record is durable), with the index following the log as in a node (its own thread, fed
//! each group commit through the node's bounded queue): the largest index lag seen (records
//! committed but not yet indexed, sampled every millisecond) and the time the index took to
//! catch up after the last append. Records are shaped like real ones (about 350 bytes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tongban_gateway::audit::index::AuditIndex;
use tongban_gateway::audit::log::{AuditLog, Durability, LogOptions};
use tongban_gateway::audit::INDEX_QUEUE_GROUPS;
use tongban_proto::audit::v1::{AuditRecord, Side};

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: format!("{:08x}-4c1e-4b7a-9d3e-{:012x}", i, i * 7919),
        side: Side::Home as i32,
        node_city: "jinan".into(),
        started_at_ms: 1_795_000_000_000 + i as i64,
        ended_at_ms: 1_795_000_000_002 + i as i64,
        duration_us: 1800,
        caller_city: "jinan".into(),
        caller_org: "hrss".into(),
        target_city: "qingdao".into(),
        target_org: "hrss".into(),
        service: "tongban.crosscity.v1.CrossCityService".into(),
        method: "Submit".into(),
        catalog_code: "JQ-03".into(),
        purpose: "case-handling".into(),
        consent_id: "2f2f13f2-d479-498b-a4f8-30e32ccf88d2".into(),
        subject_pseudonym: "5f0c3a9e8d7b6a5f4e3d2c1b0a998877".into(),
        request_digest: vec![0xab; 32],
        response_digest: vec![0xcd; 32],
        request_bytes: 222,
        response_bytes: 180,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        peer_city: "qingdao".into(),
        ..Default::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    rate: f64,
    latencies: Vec<Duration>,
    max_lag: u64,
    catch_up: Duration,
}

async fn run(durability: Durability, in_flight: usize, total: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<tongban_gateway::audit::log::Appended>>(
        INDEX_QUEUE_GROUPS,
    );
    let index = AuditIndex::open(dir.path()).unwrap();
    let indexed = Arc::new(AtomicU64::new(0));
    let seen = indexed.clone();
    std::thread::spawn(move || {
        for batch in rx {
            index.insert_batch(&batch).unwrap();
            if let Some(last) = batch.last() {
                seen.store(last.seq, Ordering::Release);
            }
        }
    });
    let opts = LogOptions {
        durability,
        ..LogOptions::default()
    };
    let log = Arc::new(AuditLog::open(dir.path(), opts, tx).unwrap());
    // Warm-up.
    for i in 0..50 {
        log.append(record(i)).await.unwrap();
    }
    let per_task = total / in_flight;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (log, indexed, done) = (log.clone(), indexed.clone(), done.clone());
        tokio::spawn(async move {
            let mut max_lag = 0;
            while !done.load(Ordering::Acquire) {
                let lag = log
                    .head()
                    .seq
                    .saturating_sub(indexed.load(Ordering::Acquire));
                max_lag = max_lag.max(lag);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max_lag
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                log.append(record((t * per_task + i) as u64)).await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let last = log.head().seq;
    let caught = Instant::now();
    while indexed.load(Ordering::Acquire) < last {
        std::thread::yield_now();
    }
    let catch_up = caught.elapsed();
    done.store(true, Ordering::Release);
    let max_lag = sampler.await.unwrap();
    lat.sort();
    Run {
        rate: (per_task * in_flight) as f64 / secs,
        latencies: lat,
        max_lag,
        catch_up,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "audit append, {} bytes per encoded record",
        prost::Message::encoded_len(&record(1))
    );
    println!(
        "| mode | appends in flight | records | records/s | p50 | p99 | max | index caught up after | index lag, max (records) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cases: &[(&str, Durability, usize, usize)] = &[
        ("sync", Durability::Sync, 1, 500),
        ("sync", Durability::Sync, 16, 8_000),
        ("sync", Durability::Sync, 128, 40_000),
        ("sync", Durability::Sync, 512, 80_000),
        (
            "batch 10 ms",
            Durability::Batch(Duration::from_millis(10)),
            128,
            80_000,
        ),
    ];
    for (name, d, in_flight, total) in cases {
        let r = rt.block_on(run(*d, *in_flight, *total));
        let lat = &r.latencies;
        println!(
            "| {name} | {in_flight} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} |",
            lat.len(),
            r.rate,
            pct(lat, 0.50).as_secs_f64() * 1e3,
            pct(lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            r.catch_up.as_secs_f64() * 1e3,
            r.max_lag,
        );
    }
}
