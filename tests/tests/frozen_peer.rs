//! A frozen peer (issue 7): Qingdao's node behind a TCP black hole, as a SIGSTOPped process
//! or a cut link looks. Jinan's keepalive PINGs go unanswered, so it marks the peer down
//! (health NOT_SERVING), fails calls to it fast with UNAVAILABLE naming the city instead of
//! letting each wait for its deadline, and is calling it again within a second or so of the
//! peer coming back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tongban_gateway::federation::peer_health_name;
use tongban_tests::{Fed, FreezableRelay, CONVERGE};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Waits until jinan's health of its qingdao peer is `want`; returns how long it took.
async fn peer_health_becomes(f: &Fed, want: ServingStatus) -> Duration {
    let t = Instant::now();
    let mut health = HealthClient::new(f.channel("jinan").await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: peer_health_name("qingdao"),
        })
        .await
        .unwrap()
        .into_inner();
    let reached = tokio::time::timeout(CONVERGE, async {
        while let Some(m) = watch.message().await.unwrap() {
            if m.status == want as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        reached.ok(),
        Some(true),
        "peer health never became {want:?}"
    );
    t.elapsed()
}

/// A jinan → qingdao call with an 8 s deadline that must fail UNAVAILABLE naming qingdao;
/// returns how long it took.
async fn call_fails_unavailable(f: &Fed) -> Duration {
    let t = Instant::now();
    let e = f
        .submit_within("jinan", Some("qingdao"), "JQ-03", Duration::from_secs(8))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("qingdao"), "{}", e.message());
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_noticed_failed_fast_and_healed() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    // Put the black hole between jinan and qingdao's peer listener.
    let qingdao_peer = f.fed.city("qingdao").unwrap().node().unwrap().peer_addr;
    let relay = FreezableRelay::start(qingdao_peer).await;
    f.fed.stop_node("jinan").await.unwrap();
    {
        let jinan = f.fed.cities.iter_mut().find(|c| c.city == "jinan").unwrap();
        for peer in jinan
            .config
            .peers
            .iter_mut()
            .filter(|p| p.city == "qingdao")
        {
            peer.address = relay.addr.to_string();
        }
        // The defaults, stated: PING every second, two seconds to answer.
        assert_eq!(
            jinan.config.limits.keepalive_interval,
            Duration::from_secs(1)
        );
        assert_eq!(
            jinan.config.limits.keepalive_timeout,
            Duration::from_secs(2)
        );
    }
    f.fed.restart_node("jinan").await.unwrap();
    assert!(
        f.fed
            .wait_until_federated(CONVERGE, |_, p| !p.services.is_empty())
            .await
    );
    peer_health_becomes(&f, ServingStatus::Serving).await;
    f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();

    relay.freeze();
    // A call in flight when the peer froze, with a long deadline: it fails once the
    // keepalive gives up (interval + timeout), not after its 8 s.
    let in_flight = call_fails_unavailable(&f).await;
    assert!(
        in_flight < Duration::from_secs(5),
        "a call to a frozen peer took {in_flight:?} (deadline 8 s)"
    );
    let noticed = peer_health_becomes(&f, ServingStatus::NotServing).await;
    assert!(!f.peer_up("jinan", "qingdao"));

    // Its catalog entries are listed as unavailable.
    let listed = f
        .fed
        .registry("jinan", "hrss")
        .await
        .unwrap()
        .list_services(tongban_proto::registry::v1::ListServicesRequest {
            city: "qingdao".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .services;
    assert!(!listed.is_empty());
    assert!(listed.iter().all(|s| !s.available), "{listed:?}");

    // Now the peer is known to be down: calls fail at once, naming it.
    for _ in 0..3 {
        let fast = call_fails_unavailable(&f).await;
        assert!(fast < Duration::from_millis(500), "took {fast:?}");
    }

    // Back: the background retry finds it; calls succeed again.
    relay.thaw();
    let healed = peer_health_becomes(&f, ServingStatus::Serving).await;
    f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    assert!(
        healed < Duration::from_secs(2),
        "serving again {healed:?} after the peer came back"
    );
    eprintln!(
        "frozen peer: in-flight call failed after {in_flight:?}, marked down {noticed:?} later, serving again {healed:?} after the thaw"
    );
    relay.stop();
    f.shutdown().await;
}
