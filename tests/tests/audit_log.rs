//! The audit log on its own: tampering is found at the exact sequence, a torn tail is cut at
//! reopen, and `tongban audit verify` says where the chain breaks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use prost::Message;
use tongban_gateway::audit::log::{
    read_segment, segments, verify_dir, AuditLog, Hash, LogOptions, ReadEntry,
};
use tongban_proto::audit::v1::{AuditRecord, LogEntry};

/// A log of `n` records in `dir`.
async fn make_log(dir: &Path, n: u64) {
    tongban_tests::make_log(dir, n, LogOptions::default()).await
}

fn entries(dir: &Path) -> (PathBuf, Vec<ReadEntry>) {
    let segs = segments(dir).unwrap();
    assert_eq!(segs.len(), 1);
    let (first, path) = segs[0].clone();
    let mut out = Vec::new();
    read_segment(first, &path, |e| {
        out.push(e);
        true
    })
    .unwrap();
    (path, out)
}

fn first_bad(dir: &Path, checkpoints: &[(u64, Hash)]) -> Option<(u64, String)> {
    verify_dir(dir, checkpoints, |_| {}).unwrap().first_bad
}

/// Copies the log into a fresh directory and applies `tamper` to the segment's bytes.
fn tampered(src: &Path, tamper: impl FnOnce(&mut Vec<u8>, &[ReadEntry])) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    let (path, es) = entries(src);
    let mut bytes = std::fs::read(&path).unwrap();
    tamper(&mut bytes, &es);
    std::fs::write(dst.path().join(path.file_name().unwrap()), bytes).unwrap();
    dst
}

fn span(es: &[ReadEntry], seq: u64) -> (usize, usize) {
    let e = &es[(seq - 1) as usize];
    (e.location.offset as usize, e.end as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_found_at_the_exact_sequence() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10).await;
    let report = verify_dir(dir.path(), &[], |_| {}).unwrap();
    assert_eq!(
        (report.records, report.head.seq, report.first_bad),
        (10, 10, None)
    );

    // One byte flipped inside record 5.
    let t = tampered(dir.path(), |b, es| {
        let (start, end) = span(es, 5);
        b[(start + end) / 2] ^= 0x01;
    });
    let (seq, why) = first_bad(t.path(), &[]).unwrap();
    assert_eq!(seq, 5, "{why}");
    assert!(why.contains("checksum"), "{why}");

    // Record 5 deleted.
    let t = tampered(dir.path(), |b, es| {
        let (start, end) = span(es, 5);
        b.drain(start..end);
    });
    let (seq, why) = first_bad(t.path(), &[]).unwrap();
    assert_eq!(seq, 5, "{why}");
    assert!(why.contains("expected 5, found 6"), "{why}");

    // Records 5 and 6 swapped.
    let t = tampered(dir.path(), |b, es| {
        let (s5, e5) = span(es, 5);
        let (s6, e6) = span(es, 6);
        let r5 = b[s5..e5].to_vec();
        let r6 = b[s6..e6].to_vec();
        let mut swapped = r6;
        swapped.extend(r5);
        b.splice(s5..e6, swapped);
    });
    let (seq, why) = first_bad(t.path(), &[]).unwrap();
    assert_eq!(seq, 5, "{why}");

    // Cut in the middle of record 8 (everything after it gone too).
    let t = tampered(dir.path(), |b, es| {
        let (start, end) = span(es, 8);
        b.truncate((start + end) / 2);
    });
    let (seq, why) = first_bad(t.path(), &[]).unwrap();
    assert_eq!(seq, 8, "{why}");
    assert!(why.contains("truncated"), "{why}");

    // Record 5 rewritten consistently (valid frame, same prev_hash): the chain breaks at 6,
    // and a signed checkpoint at 5 pins the rewrite itself.
    let (_, es) = entries(dir.path());
    let original_hash_5 = es[4].hash;
    let t = tampered(dir.path(), |b, es| {
        let (start, end) = span(es, 5);
        let mut entry: LogEntry = es[4].entry.clone();
        entry.record.as_mut().unwrap().request_id = "rewritten".into();
        let payload = entry.encode_to_vec();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend(crc32fast::hash(&payload).to_be_bytes());
        frame.extend(payload);
        b.splice(start..end, frame);
    });
    let (seq, why) = first_bad(t.path(), &[]).unwrap();
    assert_eq!(seq, 6, "{why}");
    assert!(why.contains("chain broken"), "{why}");
    let (seq, why) = first_bad(t.path(), &[(5, original_hash_5)]).unwrap();
    assert_eq!(seq, 5, "{why}");
    assert!(why.contains("checkpoint"), "{why}");

    // A tampered log refuses to open for writing; only a torn tail is repaired.
    let t = tampered(dir.path(), |b, es| {
        let (start, end) = span(es, 3);
        b[start + 9] ^= 0xff;
        let _ = end;
    });
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    assert!(AuditLog::open(t.path(), LogOptions::default(), tx).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 6).await;
    let torn = tampered(dir.path(), |b, es| {
        let (start, _) = span(es, 6);
        b.truncate(start + 5);
    });
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    let log = AuditLog::open(torn.path(), LogOptions::default(), tx).unwrap();
    assert_eq!(log.head().seq, 5);
    let a = log.append(AuditRecord::default()).await.unwrap();
    assert_eq!(a.seq, 6);
    drop(log);
    let report = verify_dir(torn.path(), &[], |_| {}).unwrap();
    assert_eq!((report.head.seq, report.first_bad), (6, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_command_names_the_broken_sequence() {
    let data = tempfile::tempdir().unwrap();
    let audit = data.path().join("audit");
    make_log(&audit, 8).await;
    let bin = tongban_tests::tongban_bin();
    let out = std::process::Command::new(&bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("8 records"));

    let (path, es) = entries(&audit);
    let mut bytes = std::fs::read(&path).unwrap();
    let (start, end) = span(&es, 4);
    bytes.drain(start..end);
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["audit", "verify", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BROKEN at seq 4"), "{stdout}");
}

/// `[audit] handoff = "leader"`: the calls that wait write the group commits themselves. On
/// either runtime every append is acknowledged once, with the sequences 1..=n in one chain
/// that verifies, and a log written this way reopens under the writer thread and continues.
async fn a_leader_among_the_waiting_calls_writes_each_record_once() {
    use tongban_gateway::audit::log::Handoff;
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    let opts = LogOptions {
        handoff: Handoff::Leader,
        ..LogOptions::default()
    };
    let log = AuditLog::open(dir.path(), opts, tx).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let a = log
                    .append(AuditRecord {
                        request_id: format!("req-{t}-{i}"),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert_eq!(a.record.request_id, format!("req-{t}-{i}"));
                seqs.push(a.seq);
            }
            seqs
        });
    }
    let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    assert_eq!(log.head().seq, 400);
    drop(log);
    let report = verify_dir(dir.path(), &[], |_| {}).unwrap();
    assert_eq!((report.records, report.first_bad), (400, None));
    let (tx, _) = std::sync::mpsc::sync_channel(1);
    let log = AuditLog::open(dir.path(), LogOptions::default(), tx).unwrap();
    assert_eq!(log.append(AuditRecord::default()).await.unwrap().seq, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_writes_the_groups_on_a_work_stealing_runtime() {
    a_leader_among_the_waiting_calls_writes_each_record_once().await
}

#[tokio::test(flavor = "current_thread")]
async fn a_leader_writes_the_groups_on_a_current_thread_runtime() {
    a_leader_among_the_waiting_calls_writes_each_record_once().await
}
