//! Retention and archives, as an operator runs them (node processes and the CLI): an
//! archive made of a stopped node's log, checked by `tongban audit verify-archive` and by
//! the verifier written from docs/audit-format.md; a prune that keeps what is inside its
//! retention or not archived; then the pruned node restarts, serves and verifies what
//! remains, anchored on the archive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tongban_tests::process::{NodeProcess, TwoCities};
use tongban_tests::{audit_verifier as verifier, copy_tree, tongban_bin};

fn tongban(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out: Output = std::process::Command::new(tongban_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Stops a node process cleanly (SIGTERM): it records its stop and signs a last checkpoint.
fn stop(node: &mut NodeProcess) {
    let pid = node.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .arg(&pid)
        .status()
        .unwrap()
        .success());
    let status = node.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", node.lines.lock().unwrap());
}

/// A copy of `config` with its retention lines dropped: the (long) defaults apply.
fn default_retention(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.ends_with("_days = 0")).collect();
    let p = config.with_file_name("jinan-keep.toml");
    std::fs::write(&p, kept.join("\n")).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_is_checked_offline_then_pruned_and_the_node_still_verifies() {
    // Small segments, and every record past its retention at once.
    let mut cities = TwoCities::start(
        "[audit]\nsegment_bytes = 4096\n[audit.retention]\nexchange_days = 0\npersonal_data_days = 0\nstate_change_days = 0\n",
    )
    .await;
    cities.wait_until_federated().await;
    let token = tongban_devkit::local::dev_token(&cities.certs, "jinan", "hrss").unwrap();
    let mut client =
        tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient::new(
            tongban_tests::process::channel(&cities.jinan.caller).await,
        );
    for _ in 0..40 {
        client
            .submit(tongban_tests::case_handling_submit("qingdao", &token))
            .await
            .unwrap();
    }
    let dir = cities.dir.path().to_path_buf();
    let config = dir.join("jinan.toml");
    let data = dir.join("jinan-data");
    let audit = data.join("audit");
    stop(&mut cities.jinan);
    let segments_before = tongban_gateway::audit::log::segments(&audit).unwrap().len();
    assert!(segments_before >= 4, "{segments_before} segments");

    // An archive of everything up to the last checkpoint (the clean stop's).
    let out = dir.join("archive-all");
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "archive".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("archived jinan's records 1 to "), "{text}");
    let bundle = cities.certs.trust_bundle.clone();
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "verify-archive".as_ref(),
        out.as_os_str(),
        "--trust-bundle".as_ref(),
        bundle.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    let ca = cities
        .certs
        .city("jinan")
        .unwrap()
        .ca_cert
        .display()
        .to_string();
    let v = verifier(&["archive", &out.display().to_string(), "--ca", &ca]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["from_seq"], 1);
    // Tampered: a byte of an archived segment, or another city's CA.
    let bad = dir.join("archive-bad");
    copy_tree(&out, &bad);
    let seg = std::fs::read_dir(bad.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let v = verifier(&["archive", &bad.display().to_string(), "--ca", &ca]);
    assert_eq!(v["ok"], false, "{v}");
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "verify-archive".as_ref(),
        bad.as_os_str(),
        "--trust-bundle".as_ref(),
        bundle.as_os_str(),
    ]);
    assert_eq!(code, 65, "{text}");
    let qingdao_ca = cities
        .certs
        .city("qingdao")
        .unwrap()
        .ca_cert
        .display()
        .to_string();
    assert_eq!(
        verifier(&["archive", &out.display().to_string(), "--ca", &qingdao_ca])["ok"],
        false
    );

    // Nothing inside its retention is pruned (the defaults keep years).
    let keep = default_retention(&config);
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "prune".as_ref(),
        "--config".as_ref(),
        keep.as_os_str(),
        "--archive".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("pruned 0 segment(s)") && text.contains("retention"),
        "{text}"
    );
    // Nothing not archived is pruned: an archive of the first records only.
    let early = dir.join("archive-early");
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "archive".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--to".as_ref(),
        "3".as_ref(),
        early.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "prune".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--archive".as_ref(),
        early.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("not in the archive"), "{text}");
    assert_eq!(
        tongban_gateway::audit::log::segments(&audit).unwrap().len(),
        segments_before,
        "{text}"
    );

    // With the whole archive, past retention: the old segments go, the newest stays.
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "prune".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--archive".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    let left = tongban_gateway::audit::log::segments(&audit).unwrap().len();
    assert!(
        left >= 1 && left < segments_before,
        "{text}: {left} of {segments_before} left"
    );
    assert!(audit.join("pruned.json").exists());
    // What remains verifies, offline (the CLI and the independent verifier).
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    let v = verifier(&["log", &audit.display().to_string()]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["start"].as_u64().unwrap() > 0, "{v}");

    // The node restarts on the pruned log, is anchored by its peer, serves, and verifies.
    cities.jinan = NodeProcess::spawn(&config, &[]);
    let mut client =
        tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient::new(
            tongban_tests::process::channel(&cities.jinan.caller).await,
        );
    let mut served = false;
    for _ in 0..150 {
        if client
            .submit(tongban_tests::case_handling_submit("qingdao", &token))
            .await
            .is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "{:?}", cities.jinan.lines.lock().unwrap());
    stop(&mut cities.jinan);
    let (code, text) = tongban(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    cities.jinan = NodeProcess::spawn(&config, &[]);
    cities.stop().await;
}
