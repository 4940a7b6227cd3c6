//! Batch durability: appends are acknowledged after the write and synced within the window
//! (checkpoints see the synced head), and an idle writer costs no CPU — it waits on a timer
//! instead of polling (measured from /proc, in clock ticks, not wall time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tongban_gateway::audit::log::{AuditLog, Durability, LogOptions};
use tongban_proto::audit::v1::AuditRecord;

/// utime + stime (clock ticks) of this process's threads named `name`.
fn thread_ticks(name: &str) -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        total = Some(total.unwrap_or(0) + ticks);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_syncs_within_the_window_and_idles_without_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    let opts = LogOptions {
        durability: Durability::Batch(Duration::from_millis(10)),
        ..LogOptions::default()
    };
    let log = AuditLog::open(dir.path(), opts, tx).unwrap();
    for _ in 0..100 {
        log.append(AuditRecord::default()).await.unwrap();
    }
    assert_eq!(log.head().seq, 100);
    // The durable head catches up once the window has passed.
    let mut durable = 0;
    for _ in 0..200 {
        durable = log.durable_head().seq;
        if durable == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(durable, 100, "the batch was never synced");

    // Idle for two seconds: the writer thread should not run at all (it used to wake every
    // 200 µs). One tick is 10 ms of CPU; allow a couple for the machine's noise.
    let before = thread_ticks("audit-writer").expect("the writer thread is named");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = thread_ticks("audit-writer").unwrap();
    assert!(
        after - before <= 2,
        "the idle batch writer used {} ticks in 2 s",
        after - before
    );
}
