#![allow(clippy::unwrap_used, clippy::expect_used)]

//! A non-Rust caller: Python `grpcio` with stubs generated from the provider's proto calls a
//! cross-city service through a node. `tests/run.sh` prepares the virtualenv and sets
//! `TONGBAN_PYTHON`; without it the test fails and says how to prepare it.

use std::path::PathBuf;
use std::process::Command;

use tongban_tests::{python, Fed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_calls_across_the_boundary() {
    let python = python();
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let addr = f.fed.city("jinan").unwrap().config.caller_addr.to_string();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("python/crosscity_client.py");
    let protos = root.join("../proto");
    let token = f.fed.token("jinan", "hrss").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(protos)
            .arg(addr)
            .arg("qingdao")
            .arg(token)
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json from python");
    assert_eq!(v["submit"]["provider_city"], "qingdao");
    assert_eq!(v["submit"]["origin_city"], "jinan");
    assert_eq!(v["submit"]["request_id"], "py-req-1");
    assert_eq!(
        v["watch"],
        serde_json::json!(["received", "reviewing", "approved"])
    );
    assert_eq!(v["unknown_city"]["code"], "NOT_FOUND");
    assert!(v["unknown_city"]["details"]
        .as_str()
        .unwrap()
        .contains("beijing"));
    assert_eq!(f.provider_calls("qingdao"), 2);
    f.shutdown().await;
}
