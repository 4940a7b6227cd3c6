#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `tongban status`: a node's state at a glance, and exit 1 when a peer is down.

use std::process::Command;
use std::time::Duration;

use tongban_devkit::local::dev_token_with_roles;
use tongban_proto::admin::v1::admin_client::AdminClient;
use tongban_proto::admin::v1::StatusRequest;
use tongban_tests::Fed;

fn status(url: &str, token: &str) -> (i32, String, String) {
    let bin = std::env::var_os("TONGBAN_BIN").expect("TONGBAN_BIN (tests/run.sh sets it)");
    let out = Command::new(bin)
        .args(["status", "--node", url, "--token", token])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_peers_catalogs_and_audit_and_fails_when_a_peer_is_down() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    // The node's start (itself, its catalog, its policy), the registration, the link to
    // Qingdao coming up (recorded before its catalog is visible) and the exchange.
    let mut heads = f.auditor("jinan").subscribe();
    tokio::time::timeout(Duration::from_secs(10), heads.wait_for(|h| h.seq >= 6))
        .await
        .expect("jinan's log reaches 6 records")
        .unwrap();
    let url = f.fed.city("jinan").unwrap().caller_url();
    let op = dev_token_with_roles(&f.fed.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let (code, out, err) = status(&url, &op);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("node jinan: up "), "{out}");
    assert!(out.contains("catalog v1 (1 services)"), "{out}");
    let peer_line = out.lines().find(|l| l.starts_with("qingdao")).unwrap();
    assert!(
        peer_line.contains(" up ") && peer_line.contains("v1"),
        "{peer_line}"
    );
    let head = f.auditor("jinan").head().seq;
    assert_eq!(head, 6);
    assert!(out.contains(&format!("audit: head seq {head} ")), "{out}");

    // A caller without the operator role may not look.
    let hrss = f.fed.token("jinan", "hrss").unwrap();
    let (code, _, err) = status(&url, &hrss);
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");

    // Qingdao's node stops: Jinan notices, and status says so with exit 1.
    f.fed.stop_node("qingdao").await.unwrap();
    let mut admin = AdminClient::new(f.channel("jinan").await);
    let mut down = false;
    for _ in 0..200 {
        let mut req = tonic::Request::new(StatusRequest {});
        req.metadata_mut()
            .insert("authorization", format!("Bearer {op}").parse().unwrap());
        let s = admin.status(req).await.unwrap().into_inner();
        if s.peers.iter().any(|p| p.city == "qingdao" && !p.up) {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "jinan never saw qingdao go down");
    let (code, out, err) = status(&url, &op);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("qingdao") && l.contains("DOWN")),
        "{out}"
    );
    assert!(err.contains("peer(s) down: qingdao"), "{err}");
    f.shutdown().await;
}
