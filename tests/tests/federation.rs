#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Real nodes and providers on loopback: routing across the boundary, catalog federation,
//! failures, limits and the trust boundary.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tongban_devkit::certs;
use tongban_devkit::local::{loopback_limits, RunningProvider};
use tongban_gateway::config::{Limits, NodeConfig, PeerConfig};
use tongban_gateway::federation::peer_health_name;
use tongban_gateway::trust::{NodeIdentity, TrustBundle};
use tongban_gateway::upstream::{Endpoint, EndpointChannel};
use tongban_gateway::{Listeners, PreparedNode};
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_proto::federation::v1::federation_client::FederationClient;
use tongban_proto::federation::v1::HandshakeRequest;
use tongban_proto::registry::v1::{
    ListServicesRequest, RegisterServiceRequest, Scope, ServiceRegistration, WithdrawServiceRequest,
};
use tongban_tests::{raw_unary, targeted, Fed, CONVERGE, CROSSCITY_SERVICE};
use tonic::{Code, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_city_calls_both_ways_and_a_local_call() {
    let f = Fed::start(&["jinan", "qingdao"]).await;

    let r = f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    assert_eq!(r.provider_city, "qingdao");
    assert_eq!(
        r.origin_city, "jinan",
        "provider learns the origin city from the node"
    );

    let r = f.submit("qingdao", Some("jinan"), "JQ-07").await.unwrap();
    assert_eq!(r.provider_city, "jinan");
    assert_eq!(r.origin_city, "qingdao");

    let r = f.submit("jinan", Some("jinan"), "JQ-07").await.unwrap();
    assert_eq!(r.provider_city, "jinan");
    assert_eq!(r.origin_city, "jinan");

    // Both cities offer the service: without a target the node refuses to guess.
    let e = f.submit("jinan", None, "JQ-07").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("x-tongban-target-city"),
        "{}",
        e.message()
    );

    // Every answer and every error carries the request id; a caller-chosen one is kept.
    let mut client = f.crosscity("jinan").await;
    let mut req = f.req(
        "jinan",
        SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        },
        Some("qingdao"),
        Duration::from_secs(5),
    );
    req.metadata_mut()
        .insert("x-tongban-request-id", "case-42".parse().unwrap());
    let resp = client.submit(req).await.unwrap();
    assert_eq!(
        resp.metadata().get("x-tongban-request-id").unwrap(),
        "case-42"
    );
    assert!(e.metadata().get("x-tongban-request-id").is_some());

    // A caller cannot pretend to be another city: the node overwrites the origin header.
    let mut req = f.req(
        "jinan",
        SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        },
        Some("qingdao"),
        Duration::from_secs(5),
    );
    req.metadata_mut()
        .insert("x-tongban-origin-city", "beijing".parse().unwrap());
    let r = client.submit(req).await.unwrap().into_inner();
    assert_eq!(r.origin_city, "jinan");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_crosses_the_boundary() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let app = f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    let states = f
        .watch("jinan", "qingdao", &app.application_id)
        .await
        .unwrap();
    let names: Vec<&str> = states.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(names, ["received", "reviewing", "approved"]);
    assert!(states.iter().all(|s| s.provider_city == "qingdao"));
    // An error from the provider passes through unchanged.
    let e = f
        .watch("jinan", "qingdao", "no-such-app")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no-such-app"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_propagation_and_withdrawal_within_five_seconds() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let mut registry = f.fed.registry("qingdao", "ybj").await.unwrap();
    let provider = f.fed.city("qingdao").unwrap().provider.url();
    registry
        .register_service(RegisterServiceRequest {
            registration: Some(ServiceRegistration {
                organisation: "ybj".into(),
                service: "tongban.medical.v1.ResultRegistry".into(),
                endpoints: vec![provider],
                catalog_codes: vec!["JQ-10".into()],
                personal_data: true,
                description: "medical results".into(),
            }),
        })
        .await
        .unwrap();
    let jinan = f.fed.city("jinan").unwrap().node().unwrap();
    let offers = |s: &tongban_gateway::catalog::Snapshot| {
        s.peer_offers("qingdao", "tongban.medical.v1.ResultRegistry")
    };
    let t = Instant::now();
    assert!(jinan.wait_for_catalog(Duration::from_secs(5), offers).await);
    let seen_after = t.elapsed();

    // Jinan lists it as a federated service, without Qingdao's internal endpoints.
    let mut jinan_registry = f.fed.registry("jinan", "hrss").await.unwrap();
    let list = jinan_registry
        .list_services(ListServicesRequest {
            scope: Scope::Federated as i32,
            city: "qingdao".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .services;
    let entry = list
        .iter()
        .find(|s| s.service == "tongban.medical.v1.ResultRegistry")
        .expect("federated entry");
    assert_eq!(entry.organisation, "ybj");
    assert!(entry.endpoints.is_empty());
    assert!(entry.available);

    registry
        .withdraw_service(WithdrawServiceRequest {
            organisation: "ybj".into(),
            service: "tongban.medical.v1.ResultRegistry".into(),
        })
        .await
        .unwrap();
    let t = Instant::now();
    assert!(
        jinan
            .wait_for_catalog(Duration::from_secs(5), |s| !offers(s))
            .await,
        "withdrawal did not reach jinan within 5 s"
    );
    let gone_after = t.elapsed();
    // Calls to the withdrawn service are refused as unknown.
    let e = raw_unary(
        f.channel("jinan").await,
        "/tongban.medical.v1.ResultRegistry/Query",
        f.req("jinan", (), Some("qingdao"), Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Withdrawing twice is a clear NOT_FOUND.
    let e = registry
        .withdraw_service(WithdrawServiceRequest {
            organisation: "ybj".into(),
            service: "tongban.medical.v1.ResultRegistry".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    eprintln!("propagation {seen_after:?}, withdrawal {gone_after:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_invalid_argument() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let mut registry = f.fed.admin_registry("jinan").await.unwrap();
    let good = ServiceRegistration {
        organisation: "hrss".into(),
        service: CROSSCITY_SERVICE.into(),
        endpoints: vec!["http://127.0.0.1:1".into()],
        catalog_codes: vec![],
        personal_data: false,
        description: String::new(),
    };
    let cases: Vec<(ServiceRegistration, &str)> = vec![
        (
            ServiceRegistration {
                organisation: "".into(),
                ..good.clone()
            },
            "organisation",
        ),
        (
            ServiceRegistration {
                service: "Nope".into(),
                ..good.clone()
            },
            "service",
        ),
        (
            ServiceRegistration {
                endpoints: vec![],
                ..good.clone()
            },
            "endpoints",
        ),
        (
            ServiceRegistration {
                endpoints: vec!["ftp://x:1".into()],
                ..good.clone()
            },
            "http://",
        ),
        (
            ServiceRegistration {
                service: "tongban.federation.v1.Federation".into(),
                ..good.clone()
            },
            "reserved",
        ),
    ];
    for (reg, needle) in cases {
        let e = registry
            .register_service(RegisterServiceRequest {
                registration: Some(reg),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains(needle),
            "{} lacks {needle}",
            e.message()
        );
    }
    let e = registry
        .register_service(RegisterServiceRequest { registration: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Registering needs this city's token, and an organisation manages only its own.
    let mut anonymous =
        tongban_proto::registry::v1::registry_client::RegistryClient::new(f.channel("jinan").await);
    let e = anonymous
        .register_service(RegisterServiceRequest {
            registration: Some(good.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut ybj = f.fed.registry("jinan", "ybj").await.unwrap();
    let e = ybj
        .register_service(RegisterServiceRequest {
            registration: Some(good.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("jinan/ybj"), "{}", e.message());
    let e = ybj
        .withdraw_service(WithdrawServiceRequest {
            organisation: "hrss".into(),
            service: CROSSCITY_SERVICE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cities_route_to_each_other() {
    let f = Fed::start(&["jinan", "qingdao", "zibo"]).await;
    for from in ["jinan", "qingdao", "zibo"] {
        for to in ["jinan", "qingdao", "zibo"] {
            let r = f.submit(from, Some(to), "JQ-03").await.unwrap();
            assert_eq!(r.provider_city, to, "{from} → {to}");
            assert_eq!(r.origin_city, from, "{from} → {to}");
        }
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_restarted_mid_run_fails_cleanly_then_recovers() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    let before = f
        .fed
        .city("jinan")
        .unwrap()
        .node()
        .unwrap()
        .snapshot()
        .peers["qingdao"]
        .issued_at_ms;

    f.fed.stop_node("qingdao").await.unwrap();
    let t = Instant::now();
    let e = f
        .submit("jinan", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("qingdao"), "{}", e.message());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "failed within the deadline"
    );

    f.fed.restart_node("qingdao").await.unwrap();
    let jinan = f.fed.city("jinan").unwrap().node().unwrap();
    // The restarted node re-signs its catalog (same content, from its store) and jinan's
    // sync task picks it up without a restart of its own.
    assert!(
        jinan
            .wait_for_catalog(CONVERGE, |s| s
                .peers
                .get("qingdao")
                .is_some_and(|p| p.issued_at_ms > before))
            .await
    );
    let r = f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    assert_eq!(r.provider_city, "qingdao");
    // ... and qingdao, whose registry came back from disk, reaches jinan again too.
    let qingdao = f.fed.city("qingdao").unwrap().node().unwrap();
    assert!(
        qingdao
            .wait_for_catalog(CONVERGE, |s| s.peer_offers("jinan", CROSSCITY_SERVICE))
            .await
    );
    let r = f.submit("qingdao", Some("jinan"), "JQ-03").await.unwrap();
    assert_eq!(r.provider_city, "jinan");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_and_unknown_city_are_not_found() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let cases = [
        (
            Some("qingdao"),
            "/tongban.nothing.v1.Nothing/Do",
            "not offered by city `qingdao`",
        ),
        (
            Some("jinan"),
            "/tongban.nothing.v1.Nothing/Do",
            "not offered by city `jinan`",
        ),
        (
            None,
            "/tongban.nothing.v1.Nothing/Do",
            "not offered by any city",
        ),
        (
            Some("beijing"),
            "/tongban.crosscity.v1.CrossCityService/Submit",
            "unknown city `beijing`",
        ),
    ];
    for (to, path, needle) in cases {
        let e = raw_unary(
            f.channel("jinan").await,
            path,
            f.req("jinan", (), to, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{to:?} {path}");
        assert!(
            e.message().contains(needle),
            "{} lacks {needle}",
            e.message()
        );
        assert!(e.metadata().get("x-tongban-request-id").is_some());
    }
    // Malformed metadata is INVALID_ARGUMENT, naming the header.
    let mut req = f.req("jinan", (), Some("qingdao"), Duration::from_secs(5));
    req.metadata_mut()
        .insert("x-tongban-request-id", "has spaces!".parse().unwrap());
    let e = raw_unary(
        f.channel("jinan").await,
        "/tongban.crosscity.v1.CrossCityService/Submit",
        req,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("x-tongban-request-id"));
    assert_eq!(f.provider_calls("qingdao"), 0);
    assert_eq!(f.provider_calls("jinan"), 0);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_or_provider_down_is_unavailable_within_the_deadline() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    // Provider down behind a live peer node.
    let qd = f
        .fed
        .cities
        .iter_mut()
        .find(|c| c.city == "qingdao")
        .unwrap();
    let stopped = std::mem::replace(
        &mut qd.provider,
        RunningProvider::start("qingdao").await.unwrap(),
    );
    let stale_url = stopped.url();
    stopped.stop().await;
    // The registry still points at the stopped provider's address.
    assert_ne!(stale_url, f.fed.city("qingdao").unwrap().provider.url());
    let t = Instant::now();
    let e = f
        .submit("jinan", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("provider"), "{}", e.message());
    assert!(t.elapsed() < Duration::from_secs(5));

    // Peer node down.
    f.fed.stop_node("qingdao").await.unwrap();
    let t = Instant::now();
    let e = f
        .submit("jinan", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(t.elapsed() < Duration::from_secs(5));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_does_not_hang_the_caller() {
    // A "peer" that accepts TCP connections and never speaks: TLS cannot complete.
    let black_hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(
        &dir.path().join("certs"),
        &["jinan".into(), "qingdao".into()],
        false,
    )
    .unwrap();
    let config = node_config(
        &g,
        "jinan",
        dir.path(),
        vec![PeerConfig {
            city: "qingdao".into(),
            address: black_hole.local_addr().unwrap().to_string(),
            alternates: Vec::new(),
        }],
    );
    let node = tongban_gateway::RunningNode::launch(config.clone())
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.caller_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t = Instant::now();
    let e = raw_unary(
        channel,
        "/tongban.crosscity.v1.CrossCityService/Submit",
        req_from(&g, "jinan", "qingdao", Duration::from_millis(1500)),
    )
    .await
    .unwrap_err();
    // Never heard from: UNAVAILABLE at once rather than a hang.
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert!(!node.peer_up("qingdao"));
    node.shutdown().await;
}

fn node_config(
    g: &certs::Generated,
    city: &str,
    root: &std::path::Path,
    peers: Vec<PeerConfig>,
) -> NodeConfig {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    tongban_devkit::local::node_config(g, city, root, (any, any), peers, loopback_limits()).unwrap()
}

/// A call with a dev token of `city`'s hrss, for case handling.
fn req_from(g: &certs::Generated, city: &str, to: &str, timeout: Duration) -> Request<()> {
    let mut r = targeted((), Some(to), timeout);
    tongban_tests::authorize(
        &mut r,
        &tongban_devkit::local::dev_token(g, city, "hrss").unwrap(),
    );
    r.metadata_mut()
        .insert("x-tongban-purpose", "case-handling".parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_resource_exhausted_and_never_reach_the_provider() {
    let limits = Limits {
        max_message_bytes: 64 * 1024,
        ..loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    for to in ["qingdao", "jinan"] {
        let msg = SubmitRequest {
            catalog_code: "JQ-03".into(),
            fields: Default::default(),
            attachment: vec![1u8; 100 * 1024],
        };
        let e = f
            .crosscity("jinan")
            .await
            .submit(f.req("jinan", msg, Some(to), Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "to {to}: {e:?}");
        assert!(e.message().contains("65536"), "{}", e.message());
    }
    assert_eq!(f.provider_calls("qingdao"), 0);
    assert_eq!(f.provider_calls("jinan"), 0);
    // Just under the limit passes.
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        fields: Default::default(),
        attachment: vec![1u8; 60 * 1024],
    };
    let r = f
        .crosscity("jinan")
        .await
        .submit(f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(r.into_inner().provider_city, "qingdao");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_load_balanced_and_a_dead_one_is_skipped() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let second = RunningProvider::start("jinan").await.unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let first = f.fed.city("jinan").unwrap().provider.url();
    let mut registry = f.fed.registry("jinan", "hrss").await.unwrap();
    registry
        .register_service(RegisterServiceRequest {
            registration: Some(ServiceRegistration {
                organisation: "hrss".into(),
                service: CROSSCITY_SERVICE.into(),
                endpoints: vec![first, dead_url, second.url()],
                catalog_codes: vec!["JQ-03".into()],
                personal_data: false,
                description: String::new(),
            }),
        })
        .await
        .unwrap();
    for _ in 0..12 {
        let r = f.submit("qingdao", Some("jinan"), "JQ-03").await.unwrap();
        assert_eq!(r.provider_city, "jinan");
    }
    let a = f.provider_calls("jinan");
    let b = second.provider.calls();
    assert_eq!(a + b, 12);
    assert!(
        a >= 4 && b >= 4,
        "round robin over live endpoints: {a} / {b}"
    );
    second.stop().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_propagate_to_a_slow_provider() {
    // The node cuts every deadline to limits.max_timeout (800 ms here), so the node's own
    // deadline fires first, well before the caller's 10 s.
    let limits = Limits {
        max_timeout: Duration::from_millis(800),
        default_timeout: Duration::from_millis(800),
        ..loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    let mut slow = tongban_tests::SlowProvider::start().await;
    f.register("qingdao", "slow", &slow.url).await;
    let slow_request = |timeout| {
        let mut req = f.req(
            "jinan",
            SubmitRequest {
                catalog_code: "JQ-03".into(),
                ..Default::default()
            },
            Some("qingdao"),
            timeout,
        );
        req.metadata_mut()
            .insert("x-tongban-target-org", "slow".parse().unwrap());
        req
    };
    let mut client = f.crosscity("jinan").await;
    let t = Instant::now();
    let e = client
        .submit(slow_request(Duration::from_secs(10)))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.metadata().get("x-tongban-request-id").is_some());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let seen = tongban_gateway::grpc::parse_timeout(&slow.seen.recv().await.unwrap())
        .expect("provider got a grpc-timeout");
    assert!(
        seen <= Duration::from_millis(800) && seen > Duration::from_millis(100),
        "{seen:?}"
    );

    // A shorter caller deadline travels through both nodes to the provider.
    let e = client
        .submit(slow_request(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let seen = tongban_gateway::grpc::parse_timeout(&slow.seen.recv().await.unwrap())
        .expect("provider got a grpc-timeout");
    assert!(
        seen <= Duration::from_millis(500) && seen > Duration::from_millis(50),
        "{seen:?}"
    );
    slow.stop().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_node_and_each_peer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    let mut health = HealthClient::new(f.channel("jinan").await);
    let check = |service: String| HealthCheckRequest { service };
    let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
    assert_eq!(
        status(health.check(check(String::new())).await.unwrap()),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        status(
            health
                .check(check(peer_health_name("qingdao")))
                .await
                .unwrap()
        ),
        ServingStatus::Serving as i32
    );
    // When the peer goes, its health follows (watched, not polled).
    let mut watch = health
        .watch(check(peer_health_name("qingdao")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    f.fed.stop_node("qingdao").await.unwrap();
    let next = tokio::time::timeout(CONVERGE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // Reflection lists the node's own services.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(f.channel("jinan").await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no list services response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tongban.registry.v1.Registry".to_string()),
        "{names:?}"
    );
    // Open streams would hold the node's graceful shutdown for its grace period.
    drop((watch, resp));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certified_outside_the_trust_bundle_is_refused() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let jinan = f.fed.city("jinan").unwrap();

    // A rogue federation whose "qingdao" has a CA the real bundle does not list.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = certs::init(rogue_dir.path(), &["jinan".into(), "qingdao".into()], false).unwrap();
    let rogue_bundle = TrustBundle::load(&rogue.trust_bundle).unwrap();
    let rogue_files = rogue.city("qingdao").unwrap();
    let rogue_id = NodeIdentity::load(
        "qingdao",
        &rogue_files.node_cert,
        &rogue_files.node_key,
        &rogue_bundle,
    )
    .unwrap();

    // 1. As a client: the rogue presents its certificate to jinan's peer listener. Even
    //    trusting jinan's real CA itself, it cannot complete a federation handshake.
    let real_bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    let tls = rogue_id.peer_client_config(&real_bundle, "jinan").unwrap();
    let ep = Endpoint::peer(
        "jinan",
        &[jinan.config.peer_addr.to_string()],
        tls,
        real_bundle.node_name_of("jinan").unwrap(),
    )
    .unwrap();
    let mut client = FederationClient::new(EndpointChannel::new(
        std::sync::Arc::new(ep),
        Duration::from_secs(2),
    ));
    let hs = client
        .handshake(HandshakeRequest {
            city: "qingdao".into(),
            node_certificate: rogue_id.chain[0].to_vec(),
            protocol_version: "tongban-federation/1".into(),
        })
        .await;
    assert!(hs.is_err(), "rogue client was accepted");

    // 2. As a server: a jinan node configured to reach "qingdao" at the rogue's address
    //    refuses the rogue's server certificate and never routes to it.
    let listeners = Listeners {
        caller: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        peer: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        web: None,
    };
    let rogue_cfg = tongban_devkit::local::node_config(
        &rogue,
        "qingdao",
        &rogue_dir.path().join("run"),
        (
            listeners.caller.local_addr().unwrap(),
            listeners.peer.local_addr().unwrap(),
        ),
        vec![],
        loopback_limits(),
    )
    .unwrap();
    let rogue_node = PreparedNode::prepare(rogue_cfg.clone())
        .await
        .unwrap()
        .start(listeners)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jinan.config.clone();
    cfg.caller_addr = "127.0.0.1:0".parse().unwrap();
    cfg.peer_addr = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().join("jinan2");
    cfg.peers = vec![PeerConfig {
        city: "qingdao".into(),
        address: rogue_cfg.peer_addr.to_string(),
        alternates: Vec::new(),
    }];
    let victim = tongban_gateway::RunningNode::launch(cfg).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", victim.caller_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The victim's sync task keeps failing the TLS handshake, so no catalog ever arrives.
    let learned = victim
        .wait_for_catalog(Duration::from_secs(2), |s| s.peers.contains_key("qingdao"))
        .await;
    assert!(!learned, "a catalog was accepted from the rogue node");
    let e = raw_unary(
        channel,
        "/tongban.crosscity.v1.CrossCityService/Submit",
        req_from(&f.fed.certs, "jinan", "qingdao", Duration::from_secs(3)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(!victim.peer_up("qingdao"));
    victim.shutdown().await;
    rogue_node.shutdown().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_listener_serves_tls_and_can_require_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let files = g.city("jinan").unwrap();
    let mut config = node_config(&g, "jinan", dir.path(), vec![]);
    config.caller_tls = Some(tongban_gateway::config::CallerTls {
        cert: files.node_cert.clone(),
        key: files.node_key.clone(),
        client_ca: Some(files.ca_cert.clone()),
    });
    let node = tongban_gateway::RunningNode::launch(config).await.unwrap();
    let provider = RunningProvider::start("jinan").await.unwrap();
    let bundle = TrustBundle::load(&g.trust_bundle).unwrap();
    let id = NodeIdentity::load("jinan", &files.node_cert, &files.node_key, &bundle).unwrap();
    let name = bundle.node_name_of("jinan").unwrap();
    let addr = node.caller_addr.to_string();
    let token = tongban_devkit::local::dev_token(&g, "jinan", "hrss").unwrap();

    // With a client certificate from the configured CA: served.
    let tls = id.peer_client_config(&bundle, "jinan").unwrap();
    let ep = std::sync::Arc::new(
        Endpoint::peer("jinan", std::slice::from_ref(&addr), tls, name.clone()).unwrap(),
    );
    let channel = EndpointChannel::new(ep, Duration::from_secs(2));
    let mut reg = tonic::Request::new(RegisterServiceRequest {
        registration: Some(ServiceRegistration {
            organisation: "hrss".into(),
            service: CROSSCITY_SERVICE.into(),
            endpoints: vec![provider.url()],
            ..Default::default()
        }),
    });
    tongban_tests::authorize(&mut reg, &token);
    tongban_proto::registry::v1::registry_client::RegistryClient::new(channel.clone())
        .register_service(reg)
        .await
        .unwrap();
    let mut req = targeted(
        SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        },
        Some("jinan"),
        Duration::from_secs(5),
    );
    tongban_tests::authorize(&mut req, &token);
    req.metadata_mut()
        .insert("x-tongban-purpose", "case-handling".parse().unwrap());
    let mut client =
        tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient::new(
            channel,
        );
    assert_eq!(
        client.submit(req).await.unwrap().into_inner().provider_city,
        "jinan"
    );

    // Without a client certificate: the handshake is refused.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(&files.ca_cert).unwrap();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let mut anon = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anon.alpn_protocols = vec![b"h2".to_vec()];
    let ep = std::sync::Arc::new(
        Endpoint::peer(
            "jinan",
            std::slice::from_ref(&addr),
            std::sync::Arc::new(anon),
            name,
        )
        .unwrap(),
    );
    let mut anon_client =
        tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient::new(
            EndpointChannel::new(ep, Duration::from_secs(2)),
        );
    assert!(anon_client.submit(SubmitRequest::default()).await.is_err());

    // Plaintext h2c to a TLS listener: refused too.
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c =
            tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient::new(
                ch,
            );
        assert!(c.submit(SubmitRequest::default()).await.is_err());
    }
    assert_eq!(provider.provider.calls(), 1);
    node.shutdown().await;
    provider.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_ends_with_resource_exhausted() {
    // A limit between the request (~13 bytes) and the provider's answer (~42 bytes).
    let limits = Limits {
        max_message_bytes: 30,
        ..loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let e = f
        .crosscity("jinan")
        .await
        .submit(f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("response message"), "{}", e.message());
    assert_eq!(
        f.provider_calls("qingdao"),
        1,
        "the request itself was within the limit"
    );
    // Both nodes audited the exchange with the status the caller got.
    let rid = e
        .metadata()
        .get("x-tongban-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    for city in ["jinan", "qingdao"] {
        let auditor = f.fed.city(city).unwrap().node().unwrap().auditor().clone();
        let r = auditor.records_for_request(rid).await;
        assert_eq!(r.len(), 1, "{city}");
        assert_eq!(r[0].grpc_status, Code::ResourceExhausted as i32, "{city}");
    }
    f.shutdown().await;
}
