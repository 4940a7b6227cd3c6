//! A node run as a child process is killed with SIGKILL while callers hammer it. After the
//! restart, every call a client saw succeed has its audit record and the chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tongban_devkit::certs;
use tongban_devkit::local::{dev_token, dev_token_with_roles, RunningProvider};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::{GetRequest, VerifyRequest};
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_tests::process::{channel, register_probe, write_node_config, NodeProcess};
use tongban_tests::{authorize, tongban_bin};
use tonic::metadata::MetadataValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let config = write_node_config(dir.path(), &g, "jinan", &[], "");
    let provider = RunningProvider::start("jinan").await.unwrap();
    let mut node = NodeProcess::spawn(&config, &[]);
    let addr = node.caller.clone();
    let token = dev_token(&g, "jinan", "hrss").unwrap();

    register_probe(&addr, &token, &provider.url(), false).await;

    // Callers on 8 connections, each recording the request ids it saw succeed.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (acked, token, enough) = (acked.clone(), token.clone(), enough.clone());
        let ch = channel(&addr).await;
        callers.push(tokio::spawn(async move {
            let mut client = CrossCityServiceClient::new(ch);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                let req = tongban_tests::case_handling_submit("jinan", &token);
                match client.submit(req).await {
                    Ok(resp) => {
                        let rid = tongban_tests::request_id_of(&resp);
                        let mut a = acked.lock().unwrap();
                        a.push(rid);
                        if a.len() == 400 {
                            enough.notify_one();
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill the node in the middle of the load.
    let _ = tokio::time::timeout(Duration::from_secs(15), enough.notified()).await;
    node.child.kill().unwrap(); // SIGKILL, callers still running
    node.child.wait().unwrap();
    for c in callers {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "too little load before the kill: {}",
        acked.len()
    );
    eprintln!("{} calls acknowledged before SIGKILL", acked.len());

    // Restart on the same data directory: the log reopens (a torn tail is cut) and every
    // acknowledged call has its record.
    let node = NodeProcess::spawn(&config, &[]);
    let addr = node.caller.clone();
    let op = dev_token_with_roles(&g, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut api = AuditClient::new(channel(&addr).await);
    let mut verify = tonic::Request::new(VerifyRequest::default());
    authorize(&mut verify, &op);
    let v = api.verify(verify).await.unwrap().into_inner();
    assert!(v.ok, "chain broken at {}: {}", v.first_bad_seq, v.reason);
    assert!(v.records as usize >= acked.len());
    // The operator's CLI shows one of them through the API.
    let out = Command::new(tongban_bin())
        .args([
            "audit",
            "show",
            "--node",
            &format!("http://{addr}"),
            "--token",
            &op,
        ])
        .arg(&acked[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&acked[0]));
    for rid in &acked {
        let mut get = tonic::Request::new(GetRequest {
            request_id: rid.clone(),
        });
        authorize(&mut get, &op);
        let got = api.get(get).await.unwrap().into_inner();
        assert_eq!(
            got.local.len(),
            1,
            "acknowledged call {rid} has no audit record"
        );
        assert_eq!(got.local[0].grpc_status, 0);
    }
    drop(node);
    // And offline, with the node stopped.
    let out = Command::new(tongban_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path().join("jinan-data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The indexes are derived data: rebuilt from the log, the same records are found.
    let out = Command::new(tongban_bin())
        .args(["audit", "reindex", "--data-dir"])
        .arg(dir.path().join("jinan-data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(n >= acked.len(), "{stdout}");
    provider.stop().await;
}

/// `--log-format json`: one JSON object per line; a call's lines carry its request id; the
/// caller's token and the citizen's clear id appear nowhere, not even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let config = write_node_config(dir.path(), &g, "jinan", &[], "");
    let provider = RunningProvider::start("jinan").await.unwrap();
    let node = NodeProcess::spawn(
        &config,
        &["--log-format", "json", "--log", "debug,h2=info,hyper=info"],
    );
    let (addr, lines) = (node.caller.clone(), node.lines.clone());
    let token = dev_token(&g, "jinan", "hrss").unwrap();
    register_probe(&addr, &token, &provider.url(), true).await;
    // A personal-data call without a consent: refused (and logged at debug) with its id.
    let citizen = tongban_devkit::demo::demo_subject("37010219850312002");
    let mut req = tongban_tests::case_handling_submit("jinan", &token);
    let md = req.metadata_mut();
    md.insert("x-tongban-subject", citizen.parse().unwrap());
    md.insert(
        "x-tongban-request-id",
        MetadataValue::from_static("log-check-1"),
    );
    // The caller's trace: its id is on every line of the call.
    md.insert(
        "traceparent",
        MetadataValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let e = CrossCityServiceClient::new(channel(&addr).await)
        .submit(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // The refusal line is written before the response leaves; give the pipe a moment.
    let mut found = false;
    for _ in 0..100 {
        if lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("log-check-1"))
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(node);
    provider.stop().await;
    assert!(found, "no log line of the call");
    let lines = lines.lock().unwrap();
    let mut with_id = 0;
    for l in lines.iter() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        if v["span"]["request_id"] == "log-check-1" {
            with_id += 1;
            assert_eq!(
                v["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
                "a line of the call without the caller's trace id: {l}"
            );
        }
        assert!(!l.contains(&token), "the token is in the logs: {l}");
        assert!(
            !l.contains(&citizen),
            "a clear resident id is in the logs: {l}"
        );
    }
    assert!(with_id >= 1, "no line carries the request id in its span");
}
