#![allow(clippy::unwrap_used, clippy::expect_used)]

//! A non-Rust caller: Python `grpcio` with stubs generated from the provider's proto calls a
//! cross-city service through a node. `tests/run.sh` prepares the virtualenv and sets
//! `TONGBAN_PYTHON`; without it the test fails and says how to prepare it.

use tongban_tests::{proto_root, run_python_json, Fed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_calls_across_the_boundary() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let addr = f.fed.city("jinan").unwrap().config.caller_addr.to_string();
    let token = f.fed.token("jinan", "hrss").unwrap();
    let args = vec![proto_root(), addr, "qingdao".into(), token];
    let v = run_python_json("crosscity_client.py", args).await;
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
