//! The end of the audit log (issue 7): only a torn final frame — what a crash in the middle
//! of a write leaves — is repaired, and its bytes are kept in quarantine; every other damage
//! near the end refuses to open, naming the sequence, and leaves the file as it was. Records
//! removed from the end (one, ten, a segment's worth, the newest segment, a rollback to an
//! older copy) are found against the newest signed checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tongban_gateway::audit::log::{
    read_segment, segments, verify_dir, AuditError, AuditLog, Hash, LogOptions, ReadEntry,
    QUARANTINE_DIR,
};
use tongban_proto::audit::v1::AuditRecord;
use tongban_tests::make_log;

/// Every entry of the log, in order, with its segment's path.
fn all_entries(dir: &Path) -> Vec<(PathBuf, ReadEntry)> {
    let mut out = Vec::new();
    for (first, path) in segments(dir).unwrap() {
        read_segment(first, &path, |e| {
            out.push((path.clone(), e));
            true
        })
        .unwrap();
    }
    out
}

fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.path().join(e.file_name())).unwrap();
        }
    }
    dst
}

/// The bytes of every segment, to show that a refused open changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn open(dir: &Path, checkpoints: &[(u64, Hash)]) -> Result<AuditLog, AuditError> {
    let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
    AuditLog::open_anchored(dir, LogOptions::default(), tx, checkpoints)
}

/// Applies `tamper` to the bytes of the (single) segment of a copy of `src`, then expects
/// opening it to be refused at `seq`, with nothing cut or quarantined.
fn expect_refused(src: &Path, seq: u64, what: &str, tamper: impl FnOnce(&mut Vec<u8>)) {
    let t = copy_dir(src);
    let (_, path) = segments(t.path()).unwrap().pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    tamper(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let before = snapshot(t.path());
    match open(t.path(), &[]) {
        Err(AuditError::Corrupt { seq: s, reason }) => {
            assert_eq!(s, seq, "{what}: {reason}");
            assert!(!reason.contains("torn final frame"), "{what}: {reason}");
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: a damaged log was opened"),
    }
    assert_eq!(snapshot(t.path()), before, "{what}: the log was changed");
    assert!(!t.path().join(QUARANTINE_DIR).exists(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_near_the_end_is_refused_and_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 20, LogOptions::default()).await;
    let es = all_entries(dir.path());
    let file_len = std::fs::metadata(&es[0].0).unwrap().len() as usize;
    // A record ten before the end, and the very last one.
    for seq in [10u64, 20] {
        let off = es[(seq - 1) as usize].1.location.offset as usize;
        for bit in 0..32 {
            expect_refused(
                dir.path(),
                seq,
                &format!("bit {bit} of the length of seq {seq}"),
                |b| b[off + bit / 8] ^= 0x80 >> (bit % 8),
            );
            expect_refused(
                dir.path(),
                seq,
                &format!("bit {bit} of the crc of seq {seq}"),
                |b| b[off + 4 + bit / 8] ^= 0x80 >> (bit % 8),
            );
        }
        // A length pointing past the end of the file, by exactly one byte and by a lot.
        for extra in [1usize, 4096] {
            let len = (file_len - off - 8 + extra) as u32;
            expect_refused(
                dir.path(),
                seq,
                &format!("length of seq {seq} past the end by {extra}"),
                |b| b[off..off + 4].copy_from_slice(&len.to_be_bytes()),
            );
        }
    }
    // A length pointing exactly to the end of the file (the record ten before the end).
    let off = es[9].1.location.offset as usize;
    let len = (file_len - off - 8) as u32;
    expect_refused(dir.path(), 10, "length to exactly the end", |b| {
        b[off..off + 4].copy_from_slice(&len.to_be_bytes())
    });
    // `tongban audit verify` does not call damage a torn record either.
    let t = copy_dir(dir.path());
    let (_, path) = segments(t.path()).unwrap().pop().unwrap();
    let mut b = std::fs::read(&path).unwrap();
    let off = es[9].1.location.offset as usize;
    b[off + 1] |= 0x08; // bit 19: the length runs past the end of the file
    std::fs::write(&path, &b).unwrap();
    let r = verify_dir(t.path(), &[], |_| {}).unwrap();
    let (seq, why) = r.first_bad.unwrap();
    assert_eq!(seq, 10, "{why}");
    assert!(r.torn_tail.is_none(), "{why}");
    assert!(why.contains("damaged frame"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_torn_final_frame_is_cut_and_its_bytes_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 20, LogOptions::default()).await;
    let es = all_entries(dir.path());
    let last = &es[19].1;
    let (start, end) = (last.location.offset as usize, last.end as usize);
    // Torn inside the header, right after it, in the middle, one byte short.
    for keep in [1, 7, 8, (end - start) / 2, end - start - 1] {
        let t = copy_dir(dir.path());
        let (_, path) = segments(t.path()).unwrap().pop().unwrap();
        let original = std::fs::read(&path).unwrap();
        let torn = &original[..start + keep];
        std::fs::write(&path, torn).unwrap();
        let log = open(t.path(), &[]).unwrap();
        assert_eq!(log.head().seq, 19, "keep {keep}");
        let repair = log.repaired().expect("repair reported").clone();
        assert_eq!(repair.torn.seq, 20);
        assert_eq!(
            (repair.torn.start, repair.torn.end),
            (start as u64, (start + keep) as u64)
        );
        // The cut bytes are kept, not deleted.
        assert_eq!(
            std::fs::read(&repair.quarantine).unwrap(),
            &original[start..start + keep]
        );
        assert!(repair.quarantine.starts_with(t.path().join(QUARANTINE_DIR)));
        let a = log.append(AuditRecord::default()).await.unwrap();
        assert_eq!(a.seq, 20);
        drop(log);
        let r = verify_dir(t.path(), &[], |_| {}).unwrap();
        assert_eq!((r.head.seq, r.first_bad), (20, None));
    }

    // A torn final frame that a signed checkpoint covers is never cut.
    let t = copy_dir(dir.path());
    let (_, path) = segments(t.path()).unwrap().pop().unwrap();
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, &original[..start + 20]).unwrap();
    let before = snapshot(t.path());
    match open(t.path(), &[(20, last.hash)]) {
        Err(AuditError::Corrupt { seq, reason }) => {
            assert_eq!(seq, 20, "{reason}");
            assert!(reason.contains("checkpoint at seq 20"), "{reason}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a record covered by a checkpoint was cut"),
    }
    assert_eq!(snapshot(t.path()), before);
}

/// A way of removing records from a copy of the log.
type Cut<'a> = Box<dyn Fn(&Path) + 'a>;

/// Removes every record after `keep` (segments that start after it are deleted).
fn cut_after(dir: &Path, keep: u64) {
    for (path, e) in all_entries(dir) {
        if e.entry.seq == keep + 1 {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(e.location.offset).unwrap();
        }
    }
    for (first, path) in segments(dir).unwrap() {
        if first > keep + 1 || (first == keep + 1 && std::fs::metadata(&path).unwrap().len() == 0) {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_from_the_end_are_found_against_the_newest_checkpoint() {
    let small = LogOptions {
        segment_bytes: 2048,
        ..LogOptions::default()
    };
    // An older copy, for the rollback.
    let old = tempfile::tempdir().unwrap();
    make_log(old.path(), 60, small.clone()).await;
    let dir = copy_dir(old.path());
    {
        let (tx, _) = std::sync::mpsc::sync_channel(1); // no index here
        let log = AuditLog::open(dir.path(), small.clone(), tx).unwrap();
        for _ in 61..=100 {
            log.append(AuditRecord::default()).await.unwrap();
        }
    }
    // Segments holding records (a rotation may have left an empty newest one).
    let segs: Vec<_> = segments(dir.path())
        .unwrap()
        .into_iter()
        .filter(|(first, _)| *first <= 100)
        .collect();
    assert!(segs.len() >= 4, "{} segments", segs.len());
    let es = all_entries(dir.path());
    assert_eq!(es.len(), 100);
    let head = (100u64, es[99].1.hash);
    let checkpoints = [(40u64, es[39].1.hash), head];
    let (newest_first, newest_path) = segs.last().unwrap().clone();
    let per_segment = 100 - newest_first + 1;
    let second_newest_first = segs[segs.len() - 2].0;

    let cases: Vec<(String, Cut<'_>)> = vec![
        (
            "one record cut".into(),
            Box::new(|d: &Path| cut_after(d, 99)),
        ),
        (
            "ten records cut".into(),
            Box::new(|d: &Path| cut_after(d, 90)),
        ),
        (
            "a whole segment's worth cut".into(),
            Box::new(move |d: &Path| cut_after(d, second_newest_first - 1)),
        ),
        (
            "the newest segment deleted".into(),
            Box::new(move |d: &Path| {
                std::fs::remove_file(d.join(newest_path.file_name().unwrap())).unwrap()
            }),
        ),
        (
            "rolled back to an older copy".into(),
            Box::new(|d: &Path| {
                for (_, p) in segments(d).unwrap() {
                    std::fs::remove_file(p).unwrap();
                }
                for (_, p) in segments(old.path()).unwrap() {
                    std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
                }
            }),
        ),
    ];
    assert!(per_segment >= 1);
    for (what, cut) in &cases {
        let t = copy_dir(dir.path());
        cut(t.path());
        // Without the checkpoint the shortened log looks whole: that is the hole.
        let plain = verify_dir(t.path(), &[], |_| {}).unwrap();
        assert!(plain.first_bad.is_none(), "{what}: {:?}", plain.first_bad);
        assert!(plain.head.seq < 100, "{what}");
        // With it, the log is broken, naming the checkpoint's sequence.
        let r = verify_dir(t.path(), &checkpoints, |_| {}).unwrap();
        let (seq, why) = r.first_bad.clone().expect(what);
        assert_eq!(seq, plain.head.seq + 1, "{what}: {why}");
        assert!(why.contains("checkpoint at seq 100"), "{what}: {why}");
        assert!(
            why.contains(&format!("ends at seq {}", plain.head.seq)),
            "{what}: {why}"
        );
        // And the log refuses to open for writing.
        let before = snapshot(t.path());
        assert!(
            matches!(
                open(t.path(), &checkpoints),
                Err(AuditError::Corrupt { .. })
            ),
            "{what}"
        );
        assert_eq!(snapshot(t.path()), before, "{what}");
    }
    // The whole log verifies against the same checkpoints.
    let r = verify_dir(dir.path(), &checkpoints, |_| {}).unwrap();
    assert_eq!((r.head.seq, r.first_bad), (100, None));
}
