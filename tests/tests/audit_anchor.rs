//! A node's audit log is anchored by the checkpoints it signed (issue 7): records cut from
//! the end stop the node from starting (exit 65) and `tongban audit verify` names the
//! checkpoint; a whole data directory rolled back (log and store) is caught by the peer that
//! holds a newer checkpoint of it, and the node refuses to serve.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tongban_gateway::audit::log::{read_segment, segments};
use tongban_proto::audit::v1::Checkpoint;
use tongban_tests::{tongban_bin, Fed, CONVERGE};
use tonic::Code;

fn audit_dir(f: &Fed, city: &str) -> std::path::PathBuf {
    f.fed.city(city).unwrap().config.data_dir.join("audit")
}

/// Truncates the newest segment at the start of its last record.
fn cut_last_record(audit: &Path) -> u64 {
    let (first, path) = segments(audit)
        .unwrap()
        .into_iter()
        .rev()
        .find(|(_, p)| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut last = None;
    read_segment(first, &path, |e| {
        last = Some((e.entry.seq, e.location.offset));
        true
    })
    .unwrap();
    let (seq, offset) = last.unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(offset).unwrap();
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_lost_its_last_record_refuses_to_start() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    for _ in 0..3 {
        f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    }
    // A clean stop signs a checkpoint of the head.
    f.fed.stop_node("jinan").await.unwrap();
    let cut = cut_last_record(&audit_dir(&f, "jinan"));
    assert!(cut >= 3);

    let err = f.fed.restart_node("jinan").await.unwrap_err();
    let tongban_devkit::local::LocalError::Node(e) = &err else {
        panic!("{err}")
    };
    assert_eq!(e.exit_code(), 65, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("checkpoint at seq {cut}")), "{msg}");
    assert!(msg.contains(&format!("ends at seq {}", cut - 1)), "{msg}");

    // Offline, the operator's verify says the same and exits 1.
    let data = f.fed.city("jinan").unwrap().config.data_dir.clone();
    let out = std::process::Command::new(tongban_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("BROKEN at seq {cut}")), "{stdout}");
    assert!(
        stdout.contains(&format!("checkpoint at seq {cut}")),
        "{stdout}"
    );
    f.shutdown().await;
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Waits until `holder` keeps a checkpoint of `of` at `seq` or later.
async fn held_checkpoint_reaches(f: &Fed, holder: &str, of: &str, seq: u64) -> bool {
    let auditor = f
        .fed
        .city(holder)
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .clone();
    tokio::time::timeout(CONVERGE, async {
        loop {
            let held = auditor
                .peer_checkpoint(of)
                .and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())
                .map(|c| c.seq)
                .unwrap_or(0);
            if held >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_node_is_caught_by_its_peer_and_refuses_to_serve() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    // The "backup": qingdao's whole data directory before any exchange.
    f.fed.stop_node("qingdao").await.unwrap();
    let data = f.fed.city("qingdao").unwrap().config.data_dir.clone();
    let backup = tempfile::tempdir().unwrap();
    copy_tree(&data, backup.path());
    f.fed.restart_node("qingdao").await.unwrap();
    assert!(
        f.fed
            .wait_until_federated(CONVERGE, |_, p| !p.services.is_empty())
            .await
    );
    for _ in 0..3 {
        f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    }
    let head = f.auditor("qingdao").head();
    assert!(head.seq >= 3);
    // Jinan fetches a checkpoint of qingdao's log when it (re)connects.
    f.fed.stop_node("qingdao").await.unwrap();
    f.fed.restart_node("qingdao").await.unwrap();
    assert!(
        held_checkpoint_reaches(&f, "jinan", "qingdao", head.seq).await,
        "jinan never held qingdao's checkpoint"
    );

    // Roll qingdao back: log *and* store, so its own checkpoints agree with the old log.
    f.fed.stop_node("qingdao").await.unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    copy_tree(backup.path(), &data);
    f.fed.restart_node("qingdao").await.unwrap();
    let qingdao = f.fed.city("qingdao").unwrap().node().unwrap();
    let mut contradiction = qingdao.auditor().watch_contradiction();
    let why = tokio::time::timeout(CONVERGE, contradiction.wait_for(Option::is_some))
        .await
        .expect("the peer's checkpoint was never checked")
        .unwrap()
        .clone()
        .unwrap();
    assert!(why.contains("jinan"), "{why}");
    // The checkpoint jinan holds (its last one of qingdao, past the exchanges and the
    // restart's records) and the rolled-back head.
    let held = f
        .auditor("jinan")
        .peer_checkpoint("qingdao")
        .and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())
        .unwrap()
        .seq;
    assert!(held >= head.seq);
    assert!(
        why.contains(&format!("at seq {held} ")),
        "names the peer's head: {why}"
    );
    let own = qingdao.auditor().head().seq;
    assert!(own < held, "{own} {held}");
    assert!(
        why.contains(&format!("ends at seq {own} ")),
        "names its own head: {why}"
    );

    // It serves nothing: a call from jinan is refused, naming why, and health says so.
    let e = f
        .submit("jinan", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable),
        "{:?}: {}",
        e.code(),
        e.message()
    );
    let mut health = HealthClient::new(f.channel("qingdao").await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tokio::time::timeout(CONVERGE, async {
        while let Some(m) = watch.message().await.unwrap() {
            if m.status == ServingStatus::NotServing as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(serving.ok(), Some(true));
    f.shutdown().await;
}
