//! Two cities as processes on the data path's optional shapes (issue 25): caller assertions
//! in their MAC form (`[tls] caller_assertion = "mac"`) and the audit's group commit written
//! by a leader among the waiting calls (`[audit] handoff = "leader"`). Cross-city calls
//! work both ways, the providing node records the principal the MAC form vouched for, the
//! home node keeps a receipt that verified, both records keep the digest of the same
//! assertion claims, and both logs verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tongban_devkit::local::{dev_token, dev_token_with_roles};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::{GetRequest, VerifyRequest};
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_tests::authorize;
use tongban_tests::process::{channel, TwoCities};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_city_calls_on_mac_assertions_and_a_leader_written_audit() {
    let two =
        TwoCities::start("tls.caller_assertion = \"mac\"\n[audit]\nhandoff = \"leader\"\n").await;
    two.wait_until_federated().await;
    for node in [&two.jinan, &two.qingdao] {
        assert!(
            node.wait_for_line(|l| l.contains("node started") && l.contains("caller_assertion=mac"))
                .await,
            "{:?}",
            node.lines.lock().unwrap()
        );
    }
    let token = dev_token(&two.certs, "jinan", "hrss").unwrap();
    let mut client = CrossCityServiceClient::new(channel(&two.jinan.caller).await);
    let mut rids = Vec::new();
    for _ in 0..20 {
        let resp = client
            .submit(tongban_tests::case_handling_submit("qingdao", &token))
            .await
            .unwrap();
        rids.push(tongban_tests::request_id_of(&resp));
    }
    let op = dev_token_with_roles(&two.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut audit = AuditClient::new(channel(&two.jinan.caller).await);
    for rid in &rids {
        let mut get = tonic::Request::new(GetRequest {
            request_id: rid.clone(),
        });
        authorize(&mut get, &op);
        let got = audit.get(get).await.unwrap().into_inner();
        assert_eq!(got.local.len(), 1);
        assert_eq!(got.peer.len(), 1, "{}", got.peer_error);
        let (home, provider) = (&got.local[0], &got.peer[0]);
        assert_eq!((home.grpc_status, provider.grpc_status), (0, 0));
        assert!(home.receipt_verified, "the receipt verified at home");
        assert_eq!(
            provider.caller_org, "hrss",
            "qingdao recorded who jinan vouched for"
        );
        assert_eq!(provider.caller_kind, home.caller_kind);
        assert_eq!(provider.caller_person, home.caller_person);
        assert_eq!(
            home.assertion_digest.len(),
            32,
            "the home node kept what it vouched for"
        );
        assert_eq!(provider.assertion_digest, home.assertion_digest);
    }
    // Each log verifies: the leader's groups made one chain.
    for city in ["jinan", "qingdao"] {
        let node = if city == "jinan" {
            &two.jinan
        } else {
            &two.qingdao
        };
        let op = dev_token_with_roles(&two.certs, city, "ops", &["audit-operator"]).unwrap();
        let mut req = tonic::Request::new(VerifyRequest::default());
        authorize(&mut req, &op);
        let report = AuditClient::new(channel(&node.caller).await)
            .verify(req)
            .await
            .unwrap()
            .into_inner();
        assert!(report.ok, "{city}: {report:?}");
        assert!(report.records >= 20, "{city}: {report:?}");
    }
    two.stop().await;
}

/// `[runtime] flavor = "per_core"`: a current-thread runtime per core, the connections
/// spread over them. Calls on several caller connections (Jinan's across the boundary,
/// Qingdao's to its own provider) all succeed; the node says how many runtimes it spreads
/// over and runs a thread for each other core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_thread_runtime_per_core_serves_every_connection() {
    let two = TwoCities::start("[runtime]\nflavor = \"per_core\"\n").await;
    two.wait_until_federated().await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores > 1 {
        format!("runtime=per_core({cores})")
    } else {
        "runtime=current_thread".to_string()
    };
    for node in [&two.jinan, &two.qingdao] {
        assert!(
            node.wait_for_line(|l| l.contains("node started") && l.contains(&runtime))
                .await,
            "{runtime}: {:?}",
            node.lines.lock().unwrap()
        );
    }
    if cores > 1 {
        let pid = two.jinan.child.id();
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(
            names.iter().any(|n| n.trim() == "tongban-core-1"),
            "{names:?}"
        );
    }
    // Qingdao's provider serves Jinan's callers; Jinan has none registered, so Qingdao's
    // callers reach Qingdao's own provider through their node (a local call).
    let mut calls = tokio::task::JoinSet::new();
    for (city, node) in [("jinan", &two.jinan), ("qingdao", &two.qingdao)] {
        let token = dev_token(&two.certs, city, "hrss").unwrap();
        for _ in 0..3 {
            let mut client = CrossCityServiceClient::new(channel(&node.caller).await);
            let token = token.clone();
            calls.spawn(async move {
                for _ in 0..20 {
                    client
                        .submit(tongban_tests::case_handling_submit("qingdao", &token))
                        .await
                        .unwrap();
                }
            });
        }
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    two.stop().await;
}
