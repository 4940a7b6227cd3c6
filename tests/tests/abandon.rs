//! One abandoning caller never breaks a shared connection (issue 9): a caller starts 1,000
//! calls across the boundary and cancels them all while they are in flight (each an
//! RST_STREAM through both nodes and to the provider); another caller's calls, multiplexed on
//! the same caller node, peer link and provider connection, all succeed, and the peer stays
//! SERVING throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tongban_devkit::local::loopback_limits;
use tongban_gateway::federation::peer_health_name;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{Fed, SlowProvider};
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const ABANDONED: usize = 1000;

/// Room for thousands of calls in flight from one caller.
fn busy_limits() -> tongban_gateway::config::Limits {
    let mut limits = loopback_limits();
    limits.max_streams_per_peer = 4 * ABANDONED as u64;
    limits.max_concurrent_streams_per_connection = 4 * ABANDONED as u32;
    (limits.caller_rate_per_s, limits.caller_burst) = (1_000_000, 1_000_000);
    limits
}

/// The peer is still up, no connection of either node (listeners or upstream) ended with
/// an error; then everything stops.
async fn healthy_end(f: Fed, slow: SlowProvider, errors_before: (u64, u64)) {
    assert!(f.peer_up("jinan", "qingdao"));
    assert_eq!(tongban_gateway::stats::connection_errors(), errors_before);
    slow.stop().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_thousand_calls_in_flight_breaks_no_one_else() {
    let f = Fed::start_with(&["jinan", "qingdao"], busy_limits()).await;
    let mut slow = SlowProvider::start().await;
    f.register("qingdao", "slow", &slow.url).await;
    assert!(
        f.fed
            .wait_until_federated(tongban_tests::CONVERGE, |c, p| c != "qingdao"
                || p.services.len() >= 2)
            .await
    );
    let mut health = HealthClient::new(f.channel("jinan").await)
        .watch(HealthCheckRequest {
            service: peer_health_name("qingdao"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let errors_before = tongban_gateway::stats::connection_errors();
    // The abandoning caller: 1,000 calls on one connection, held by the slow provider.
    let abandoning = CrossCityServiceClient::new(f.channel("jinan").await);
    let calls: Vec<_> = (0..ABANDONED)
        .map(|_| {
            let mut c = abandoning.clone();
            let mut req = f.req(
                "jinan",
                SubmitRequest::default(),
                Some("qingdao"),
                Duration::from_secs(30),
            );
            req.metadata_mut()
                .insert("x-tongban-target-org", MetadataValue::from_static("slow"));
            tokio::spawn(async move { c.submit(req).await })
        })
        .collect();
    // Wait until most have reached the provider (some may still be on their way: those are
    // reset before being accepted, the other case), then cancel every one.
    let mut reached = 0;
    while reached < ABANDONED * 9 / 10 {
        match tokio::time::timeout(Duration::from_secs(20), slow.seen.recv()).await {
            Ok(Some(_)) => reached += 1,
            _ => panic!("only {reached} calls reached the provider"),
        }
    }
    for c in &calls {
        c.abort();
    }

    // Another caller, on the same node, peer link and provider connection: every call works.
    let other = CrossCityServiceClient::new(f.channel("jinan").await);
    let good: Vec<_> = (0..200)
        .map(|_| {
            let mut c = other.clone();
            let req = f.req(
                "jinan",
                SubmitRequest {
                    catalog_code: "JQ-03".into(),
                    ..Default::default()
                },
                Some("qingdao"),
                Duration::from_secs(10),
            );
            let mut req = req;
            req.metadata_mut()
                .insert("x-tongban-target-org", MetadataValue::from_static("hrss"));
            tokio::spawn(async move { c.submit(req).await })
        })
        .collect();
    for g in good {
        let r = g.await.unwrap();
        assert!(r.is_ok(), "another caller's call failed: {:?}", r.err());
    }
    for c in calls {
        let _ = c.await;
    }
    // The peer never went down (its health never left SERVING).
    let flipped = tokio::time::timeout(Duration::from_millis(200), health.message()).await;
    if let Ok(Ok(Some(m))) = flipped {
        assert_eq!(m.status, ServingStatus::Serving as i32, "the peer flapped");
    }
    healthy_end(f, slow, errors_before).await;
}

/// 1,000 calls in flight at once through a node, to a local provider and across the boundary:
/// every one succeeds (its grpc-status checked), and the peer stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_in_flight_all_succeed_local_and_cross_city() {
    let f = Fed::start_with(&["jinan", "qingdao"], busy_limits()).await;
    let mut slow = SlowProvider::start().await;
    for city in ["jinan", "qingdao"] {
        f.register(city, "slow", &slow.url).await;
    }
    assert!(
        f.fed
            .wait_until_federated(tongban_tests::CONVERGE, |_, p| p.services.len() >= 2)
            .await
    );
    let errors_before = tongban_gateway::stats::connection_errors();
    let client = CrossCityServiceClient::new(f.channel("jinan").await);
    // Half local (jinan's own provider), half across the boundary; all held by the slow
    // provider until every one has arrived, so that 1,000 are in flight together.
    let calls: Vec<_> = (0..ABANDONED)
        .map(|i| {
            let mut c = client.clone();
            let to = if i % 2 == 0 { "jinan" } else { "qingdao" };
            let mut req = f.req(
                "jinan",
                SubmitRequest::default(),
                Some(to),
                Duration::from_secs(30),
            );
            req.metadata_mut()
                .insert("x-tongban-target-org", MetadataValue::from_static("slow"));
            tokio::spawn(async move { c.submit(req).await })
        })
        .collect();
    for reached in 0..ABANDONED {
        let seen = tokio::time::timeout(Duration::from_secs(20), slow.seen.recv()).await;
        assert!(
            matches!(seen, Ok(Some(_))),
            "only {reached} calls reached the providers"
        );
    }
    slow.release();
    let mut failed = 0;
    for c in calls {
        // The slow provider answers INTERNAL "slow provider released" by design: what
        // matters is that this is its answer, not a broken connection's.
        match c.await.unwrap() {
            Err(s) if s.message() == "slow provider released" => {}
            other => {
                failed += 1;
                eprintln!("unexpected: {other:?}");
            }
        }
    }
    assert_eq!(
        failed, 0,
        "calls that did not get the provider's own answer"
    );
    healthy_end(f, slow, errors_before).await;
}
