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
use tongban_tests::{copy_tree, tongban_bin, Fed, CONVERGE};
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
    // Its own head when it checked: the rolled-back one, short of the held checkpoint (the
    // node may have recorded more since, its start among them).
    let named: u64 = why
        .split("ends at seq ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names its own head: {why}"));
    let own = qingdao.auditor().head().seq;
    assert!(named <= own && named < held, "{named} {own} {held}");

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

/// The case: a node restarted from an older copy of its data while its peer was down
/// no longer serves until a peer has checked it (`audit.anchor = "wait"`, the default), and
/// is caught when the peer returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rolled_back_while_its_peer_is_down_serves_nothing_until_checked() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
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
    let head = f.auditor("qingdao").head().seq;
    f.fed.stop_node("qingdao").await.unwrap();
    f.fed.restart_node("qingdao").await.unwrap();
    assert!(held_checkpoint_reaches(&f, "jinan", "qingdao", head).await);

    // Jinan goes down; qingdao is rolled back and restarted alone.
    f.fed.stop_node("jinan").await.unwrap();
    f.fed.stop_node("qingdao").await.unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    copy_tree(backup.path(), &data);
    f.fed.restart_node("qingdao").await.unwrap();
    let qingdao = f.fed.city("qingdao").unwrap().node().unwrap();
    assert!(!qingdao.auditor().anchor().confirmed());
    // A local call in qingdao: refused, saying why; none of 20 is served.
    for _ in 0..20 {
        let e = f
            .submit("qingdao", Some("qingdao"), "JQ-03")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("waits for a peer to confirm"),
            "{}",
            e.message()
        );
    }

    // Jinan returns: qingdao is checked against the checkpoint jinan holds, and caught.
    f.fed.restart_node("jinan").await.unwrap();
    let qingdao = f.fed.city("qingdao").unwrap().node().unwrap();
    let mut contradiction = qingdao.auditor().watch_contradiction();
    tokio::time::timeout(CONVERGE, contradiction.wait_for(Option::is_some))
        .await
        .expect("never checked")
        .unwrap();
    let e = f
        .submit("qingdao", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    // (The rolled-back node appended its restart's records since, so its log now differs
    // at the held seq rather than ending before it.)
    assert!(
        e.message()
            .contains("holds a checkpoint of this node's audit log"),
        "{}",
        e.message()
    );
    f.shutdown().await;
}

/// `audit.anchor = "serve"`: a node whose peer is down serves at once, its anchor marked
/// unchecked in health (`tongban.audit.anchor`), status and metrics until the peer confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_mode_serves_unchecked_and_says_so_until_a_peer_confirms() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    f.fed.stop_node("jinan").await.unwrap();
    f.fed.stop_node("qingdao").await.unwrap();
    f.fed
        .cities
        .iter_mut()
        .find(|c| c.city == "qingdao")
        .unwrap()
        .config
        .audit
        .anchor = tongban_gateway::config::AnchorPolicy::Serve;
    f.fed.restart_node("qingdao").await.unwrap();
    f.submit("qingdao", Some("qingdao"), "JQ-03").await.unwrap();
    async fn anchor_health(f: &Fed) -> i32 {
        HealthClient::new(f.channel("qingdao").await)
            .check(HealthCheckRequest {
                service: "tongban.audit.anchor".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }
    // Health says so (the node itself serves), and so do status and metrics.
    let mut unchecked = false;
    for _ in 0..100 {
        if anchor_health(&f).await == ServingStatus::NotServing as i32 {
            unchecked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unchecked, "the anchor health never said unchecked");
    let mut overall = HealthClient::new(f.channel("qingdao").await);
    let node = overall
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(node, ServingStatus::Serving as i32);
    let op = tongban_devkit::local::dev_token_with_roles(
        &f.fed.certs,
        "qingdao",
        "ops",
        &["audit-operator"],
    )
    .unwrap();
    let url = f.fed.city("qingdao").unwrap().caller_url();
    let out = std::process::Command::new(tongban_bin())
        .args(["status", "--node", &url, "--token", &op])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("AUDIT ANCHOR unchecked"), "{stdout}");
    let admin = f.fed.city("qingdao").unwrap().node().unwrap().admin_addr;
    assert!(
        metrics_text(admin).contains("tongban_audit_anchor_confirmed 0"),
        "the gauge says unchecked"
    );

    // Jinan returns and confirms: SERVING.
    f.fed.restart_node("jinan").await.unwrap();
    let mut confirmed = false;
    for _ in 0..250 {
        if anchor_health(&f).await == ServingStatus::Serving as i32 {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(confirmed, "the anchor was never confirmed");
    assert!(f
        .fed
        .city("qingdao")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .anchor()
        .describe()
        .contains("confirmed by jinan"));
    let admin = f.fed.city("qingdao").unwrap().node().unwrap().admin_addr;
    assert!(metrics_text(admin).contains("tongban_audit_anchor_confirmed 1"));
    f.shutdown().await;
}

/// The admin listener's /metrics, over plain HTTP/1.1.
fn metrics_text(admin: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `audit.anchor = "wait"` is bounded: a node none of whose peers answers within
/// `anchor_wait_s` stops, and `tongban node` says why and exits 69.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_no_peer_confirms_stops_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let cities = ["jinan".to_string(), "qingdao".to_string()];
    let g = tongban_devkit::certs::init(&dir.path().join("certs"), &cities, false).unwrap();
    // Qingdao's address: nobody listens there.
    let nobody = tongban_tests::process::free_addrs(2);
    let peers = [("jinan", nobody[0].clone()), ("qingdao", nobody[1].clone())];
    let config = tongban_tests::process::write_node_config(
        dir.path(),
        &g,
        "jinan",
        &peers,
        "[audit]\nanchor_wait_s = 1\n",
    );
    let mut node = tongban_tests::process::NodeProcess::spawn(&config, &[]);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node never gave up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(69));
    let lines = node.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("no peer confirmed this node's audit log within 1 s"),
        "{lines}"
    );
}
