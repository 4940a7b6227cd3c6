//! Two replicas of Jinan's node as processes on a real etcd, behind a TCP balancer, under
//! load from tonic and Python (grpcio) clients; one is killed with SIGKILL. The calls in flight
//! on it fail as a broken connection (UNAVAILABLE in grpcio; tonic says UNKNOWN "transport
//! error"), never a success without its record; new calls go to the other replica, and
//! every call a client saw succeed has its audit record in the log of the replica that
//! answered it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tongban_devkit::certs;
use tongban_devkit::etcd::LocalEtcd;
use tongban_devkit::local::{dev_token, dev_token_with_roles, RunningProvider};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::GetRequest;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_tests::authorize;
use tongban_tests::balancer::Balancer;
use tongban_tests::process::{channel, register_probe, write_node_config, NodeProcess};

/// Jinan's config for replica `id` in `dir`, its shared state in `etcd`.
fn replica_config(
    dir: &std::path::Path,
    g: &certs::Generated,
    id: &str,
    etcd: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = write_node_config(dir, g, "jinan", &[], "");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = format!("replica = \"{id}\"\n{text}").replacen(
        "[storage]\n",
        "[storage]\nbackend = \"etcd\"\n",
        1,
    ) + &format!("[storage.etcd]\nendpoints = [\"{etcd}\"]\n");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_replica_under_load_loses_nothing_acknowledged() {
    let etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let config_a = replica_config(&dir.path().join("a"), &g, "a", &etcd.endpoint);
    let config_b = replica_config(&dir.path().join("b"), &g, "b", &etcd.endpoint);
    let provider = RunningProvider::start("jinan").await.unwrap();
    let mut a = NodeProcess::spawn(&config_a, &[]);
    let b = NodeProcess::spawn(&config_b, &[]);
    let token = dev_token(&g, "jinan", "hrss").unwrap();
    // Registered on A; B serves it from etcd.
    register_probe(&a.caller, &token, &provider.url(), false).await;
    let mut via_b = CrossCityServiceClient::new(channel(&b.caller).await);
    let started = Instant::now();
    while via_b
        .submit(tongban_tests::case_handling_submit("jinan", &token))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "B never served A's registration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let lb = Balancer::start(vec![a.caller.parse().unwrap(), b.caller.parse().unwrap()])
        .await
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<(Instant, tonic::Code, String)>::new()));
    let killed = Arc::new(Mutex::new(None::<Instant>));
    let after_kill = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // A Python (grpcio) city system calling through the balancer too: gRPC's own mapping
    // of a connection lost mid-call (UNAVAILABLE), which tonic reports as UNKNOWN.
    let ready = dir.path().join("python-calling");
    let python = tokio::spawn(tongban_tests::run_python_json(
        "load_through.py",
        vec![
            tongban_tests::proto_root(),
            lb.addr.to_string(),
            token.clone(),
            "3".into(),
            "4".into(),
            ready.display().to_string(),
        ],
    ));
    let waiting = Instant::now();
    while !ready.exists() {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "python never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (acked, failed, killed, after_kill, token) = (
            acked.clone(),
            failed.clone(),
            killed.clone(),
            after_kill.clone(),
            token.clone(),
        );
        let lb_addr = lb.addr.to_string();
        callers.push(tokio::spawn(async move {
            let mut client = CrossCityServiceClient::new(channel(&lb_addr).await);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2) {
                match client
                    .submit(tongban_tests::case_handling_submit("jinan", &token))
                    .await
                {
                    Ok(resp) => {
                        acked
                            .lock()
                            .unwrap()
                            .push(tongban_tests::request_id_of(&resp));
                        if killed.lock().unwrap().is_some() {
                            after_kill.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Err(s) => {
                        failed.lock().unwrap().push((
                            Instant::now(),
                            s.code(),
                            s.message().to_string(),
                        ));
                        // A broken connection: a real client reconnects (through the balancer).
                        client = CrossCityServiceClient::new(channel(&lb_addr).await);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    lb.set_ready(0, false); // what the orchestrator does once it sees the replica gone
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    *killed.lock().unwrap() = Some(Instant::now());
    for c in callers {
        c.await.unwrap();
    }
    let py = python.await.unwrap();
    eprintln!(
        "python (grpcio): {} ok, failed {}, {}",
        py["ok"].as_array().map_or(0, Vec::len),
        py["failed"],
        py["messages"]
    );
    // Every call grpcio saw fail was in flight on A: UNAVAILABLE, as gRPC maps a connection
    // lost mid-call; and its successes are audited like tonic's.
    for (code, n) in py["failed"].as_object().unwrap() {
        assert_eq!(
            code, "UNAVAILABLE",
            "{n} python calls failed {code}: {}",
            py["messages"]
        );
    }
    let py_acked: Vec<String> = py["ok"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        py_acked.len() >= 20,
        "too little python load: {}",
        py_acked.len()
    );
    acked.lock().unwrap().extend(py_acked);
    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    let after = after_kill.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "{} calls acknowledged ({after} after the kill), {} failed: {:?}",
        acked.len(),
        failed.len(),
        failed
            .iter()
            .map(|(_, c, m)| format!("{c:?} {m}"))
            .collect::<Vec<_>>()
    );
    assert!(acked.len() >= 100, "too little load: {}", acked.len());
    assert!(after >= 20, "new calls did not go on through B: {after}");
    // The calls that failed were in flight on A when it died (at most one per caller
    // connection), and failed as a broken connection: the killed node sent no status, and
    // tonic reports its connection's loss as UNKNOWN "transport error" where grpc-go says
    // UNAVAILABLE; nothing else (no refusal, no answer).
    assert!(failed.len() <= 8, "{failed:?}");
    for (_, code, message) in &failed {
        let broken = *code == tonic::Code::Unavailable
            || (*code == tonic::Code::Unknown
                && (message.contains("transport error") || message.contains("h2 protocol error")));
        assert!(broken, "{code:?} {message}");
    }

    // A restarted on its data: every acknowledged call has its record in A's or B's log,
    // asked of A (whose Audit API asks B too), counted by the replica that wrote it.
    drop(a);
    let a = NodeProcess::spawn(&config_a, &[]);
    let op = dev_token_with_roles(&g, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut api = AuditClient::new(channel(&a.caller).await);
    let mut missing = Vec::new();
    let mut by_replica = std::collections::BTreeMap::<String, usize>::new();
    for rid in &acked {
        let mut get = tonic::Request::new(GetRequest {
            request_id: rid.clone(),
        });
        authorize(&mut get, &op);
        let got = api.get(get).await.unwrap().into_inner();
        assert!(got.unreachable.is_empty(), "{:?}", got.unreachable);
        match got.local.iter().find(|r| r.grpc_status == 0) {
            Some(r) => *by_replica.entry(r.replica.clone()).or_default() += 1,
            None => missing.push(rid.clone()),
        }
    }
    eprintln!("records by replica: {by_replica:?}");
    assert!(
        missing.is_empty(),
        "acknowledged without a record: {missing:?}"
    );
    assert!(
        by_replica.get("a").is_some_and(|n| *n > 0) && by_replica.get("b").is_some_and(|n| *n > 0),
        "both replicas answered calls: {by_replica:?}"
    );
    drop(b);
    drop(a);
}
