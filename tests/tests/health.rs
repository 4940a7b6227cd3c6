#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A node whose audit log cannot be written reports NOT_SERVING, and SERVING again once it
//! can: its audit directory is a small tmpfs that the test fills up, then frees. Also
//! `tongban status --config`, which reads the node's admin listener named in its config.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tongban_devkit::certs;
use tongban_tests::process::{free_addrs, write_node_config, NodeProcess};
use tongban_tests::tongban_bin;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

async fn health(admin: &str) -> ServingStatus {
    let mut client = HealthClient::new(tongban_tests::process::channel(admin).await);
    let r = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

async fn wait_health(admin: &str, want: ServingStatus) -> bool {
    for _ in 0..100 {
        if health(admin).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn status_config(config: &Path) -> (i32, String, String) {
    let out = Command::new(tongban_bin())
        .args(["status", "--config"])
        .arg(config)
        .env_remove("TONGBAN_LISTEN_ADMIN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fills the file system of `dir` with one file until a write fails (ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&block).and_then(|()| f.sync_data()).is_err() {
            break;
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_write_its_audit_is_not_serving_until_it_can() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a tmpfs for the audit directory needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let config = write_node_config(dir.path(), &g, "jinan", &[], "");
    // The admin listener on a port named in the config, for `status --config`.
    let admin = free_addrs(1).remove(0);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("admin = \"127.0.0.1:0\"", &format!("admin = \"{admin}\""));
    std::fs::write(&config, text).unwrap();
    let audit = dir.path().join("jinan-data").join("audit");
    let tmpfs = Tmpfs::mount(&audit, "2m").expect("mount a tmpfs (the test runs as root)");

    let node = NodeProcess::spawn(&config, &[]);
    assert_eq!(node.admin, admin);
    assert_eq!(health(&admin).await, ServingStatus::Serving);
    let (code, out, err) = status_config(&config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("node jinan: up "), "{out}");
    assert!(!out.contains("AUDIT NOT WRITABLE"), "{out}");

    // The disk fills up: the node says NOT_SERVING, and status says why, with exit 1.
    let filler = fill(&audit);
    assert!(
        wait_health(&admin, ServingStatus::NotServing).await,
        "still SERVING with a full audit disk"
    );
    let (code, out, err) = status_config(&config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("AUDIT NOT WRITABLE"), "{out}");
    assert!(err.contains("the audit log cannot be written"), "{err}");
    assert!(
        node.wait_for_line(|l| l.contains("audit log cannot be written"))
            .await,
        "the node did not log why it is not serving"
    );

    // Space again: SERVING again.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_health(&admin, ServingStatus::Serving).await,
        "not SERVING after the disk was freed"
    );
    let (code, out, err) = status_config(&config);
    assert_eq!(code, 0, "{out}{err}");
    drop(node);
    drop(tmpfs);
}

#[test]
fn status_config_needs_a_fixed_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let config = write_node_config(dir.path(), &g, "jinan", &[], "");
    let (code, _, err) = status_config(&config);
    assert_eq!(code, 1);
    assert!(err.contains("listen.admin"), "{err}");
    assert!(err.contains("has no fixed port"), "{err}");
}
