//! Two replicas of Jinan's node on one real etcd (Debian's etcd-server on loopback, over TLS
//! with a client certificate), with Qingdao beside them: what one replica writes, the other
//! serves within a second.
//! - a service registered on replica A is in replica B's catalog, at the same version;
//! - a consent granted on A is listed and honoured on B (a call through B with it passes);
//! - revoked on B, A's published catalog carries the revocation, Qingdao (which checks
//!   consents) has it within a second, and calls with it through either replica are refused;
//! - Qingdao lists both replicas' addresses: with A gone, it reaches Jinan through B;
//! - each replica keeps its own audit chain: B starts beside A without tripping the rollback
//!   check that A's checkpoints held by Qingdao would otherwise set off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tongban_devkit::demo::demo_subject;
use tongban_devkit::etcd::LocalEtcd;
use tongban_gateway::node::{Listeners, PreparedNode, RunningNode};
use tongban_gateway::store::SharedBackend;
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::{ListRequest, RevokeRequest};
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::Fed;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const WITHIN: Duration = Duration::from_secs(1);

struct Replicas {
    f: Fed,
    b: RunningNode,
    b_url: String,
    /// B's config with the addresses it got (to restart it on them).
    b_config: tongban_gateway::config::NodeConfig,
    /// How the replicas reach etcd over TLS.
    backend_tls: Option<tongban_gateway::store::EtcdTls>,
    _etcd: LocalEtcd,
}

/// Jinan's node (A) moved onto etcd, a second Jinan replica (B) beside it with its own data
/// dir and listeners and the same pseudonym secret, and Qingdao.
async fn start() -> Replicas {
    Box::pin(start_with(LocalEtcd::start_tls())).await
}

/// The same, with etcd started by `etcd`.
async fn start_with(
    etcd: impl std::future::Future<Output = Result<LocalEtcd, tongban_devkit::etcd::EtcdError>>,
) -> Replicas {
    // etcd over TLS, requiring a client certificate, as a city would run it.
    let etcd = etcd.await.unwrap();
    let files = etcd.tls.clone().unwrap();
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    let backend_tls = Some(tongban_gateway::store::EtcdTls {
        ca: files.ca,
        client: Some((files.client_cert, files.client_key)),
    });
    let backend = SharedBackend::Etcd {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: "/tongban/jinan/".into(),
        timeout: Duration::from_secs(2),
        tls: backend_tls.clone(),
    };
    f.fed.stop_node("jinan").await.unwrap();
    let a = f.fed.cities.iter_mut().find(|c| c.city == "jinan").unwrap();
    a.config.shared_store = backend;
    a.config.replica = "a".into();
    // One pseudonym secret for the city, provisioned (here: the key A made on its first start).
    a.config.secret_file = Some(a.config.data_dir.join("subject.key"));
    let mut b_config = a.config.clone();
    b_config.replica = "b".into();
    f.fed.restart_node("jinan").await.unwrap();
    // The registrations were in A's sled store: registered again, now into etcd.
    f.fed
        .register_crosscity("jinan", "hrss", &["JQ-03", "JQ-07"], false)
        .await
        .unwrap();

    b_config.data_dir = f.fed.root.join("jinan-b").join("data");
    std::fs::create_dir_all(&b_config.data_dir).unwrap();
    b_config.caller_addr = "127.0.0.1:0".parse().unwrap();
    b_config.peer_addr = "127.0.0.1:0".parse().unwrap();
    b_config.admin_addr = "127.0.0.1:0".parse().unwrap();
    b_config.web = None;
    let listeners = Listeners::bind(&b_config).await.unwrap();
    b_config.caller_addr = listeners.caller.local_addr().unwrap();
    b_config.peer_addr = listeners.peer.local_addr().unwrap();
    b_config.admin_addr = listeners.admin.local_addr().unwrap();
    let prepared = PreparedNode::prepare(b_config.clone()).await.unwrap();
    let b_url = format!("http://{}", listeners.caller.local_addr().unwrap());
    let b_peer = listeners.peer.local_addr().unwrap().to_string();
    let b = prepared.start(listeners).await.unwrap();
    // Qingdao lists both replicas of Jinan.
    f.fed.stop_node("qingdao").await.unwrap();
    let q = f
        .fed
        .cities
        .iter_mut()
        .find(|c| c.city == "qingdao")
        .unwrap();
    let jinan = q
        .config
        .peers
        .iter_mut()
        .find(|p| p.city == "jinan")
        .unwrap();
    jinan.alternates = vec![b_peer];
    f.fed.restart_node("qingdao").await.unwrap();
    assert!(
        f.fed
            .wait_until_federated(Duration::from_secs(10), |_, p| !p.services.is_empty())
            .await
    );
    assert!(
        b.wait_for_catalog(Duration::from_secs(10), |s| s
            .peers
            .get("qingdao")
            .is_some_and(|p| !p.services.is_empty()))
            .await,
        "replica B federates with qingdao"
    );
    Replicas {
        f,
        b,
        b_url,
        b_config,
        backend_tls,
        _etcd: etcd,
    }
}

/// A token of Jinan's identity provider for `org` with `roles`.
fn jinan_token(f: &Fed, org: &str, roles: &[&str]) -> String {
    tongban_devkit::local::dev_token_with_roles(&f.fed.certs, "jinan", org, roles).unwrap()
}

/// `citizen`'s consent for jinan/hrss towards Qingdao, case handling, JQ-03: (id, token).
async fn grant_jq03(
    f: &Fed,
    citizen: &str,
) -> Result<(String, String), tongban_devkit::local::LocalError> {
    f.fed
        .grant_consent(
            "jinan",
            citizen,
            "jinan/hrss",
            "qingdao",
            "case-handling",
            &["JQ-03"],
        )
        .await
}

/// `msg` with `authorization: Bearer <token>`.
fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    tongban_tests::authorize(&mut req, token);
    req
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// jinan/hrss → qingdao, Submit JQ-03 about `subject` with `consent`, through `node_url`.
async fn submit(r: &Replicas, node_url: &str, subject: &str, consent: &str) -> tonic::Code {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req =
        r.f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    for (k, v) in [
        ("x-tongban-subject", subject),
        ("x-tongban-consent", consent),
        ("x-tongban-catalog-code", "JQ-03"),
    ] {
        req.metadata_mut()
            .insert(k, MetadataValue::try_from(v).unwrap());
    }
    match CrossCityServiceClient::new(channel(node_url).await)
        .submit(req)
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => {
            eprintln!("through {node_url}: {:?} {}", s.code(), s.message());
            s.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_etcd_serve_one_registry_and_one_set_of_consents() {
    let r = Box::pin(start()).await;
    let a_url = r.f.fed.city("jinan").unwrap().caller_url();
    let a = r.f.fed.city("jinan").unwrap().node().unwrap();

    // Registered on A: in B's catalog within a second, at A's version.
    let v =
        r.f.fed
            .register_crosscity("jinan", "gjj", &["JQ-08"], false)
            .await
            .unwrap();
    assert!(
        r.b.wait_for_catalog(WITHIN, |s| s.local_version == v
            && s.local.iter().any(|l| l.record.organisation == "gjj"))
            .await,
        "B serves A's registration (version {v}) within {WITHIN:?}"
    );
    assert_eq!(a.snapshot().local_version, v);
    let names = |s: &tongban_gateway::catalog::Snapshot| -> Vec<String> {
        s.local
            .iter()
            .map(|l| format!("{}/{}", l.record.organisation, l.record.service))
            .collect()
    };
    assert_eq!(names(&a.snapshot()), names(&r.b.snapshot()));

    // A consent granted on A: B lists it and a call through B with it passes.
    let citizen = demo_subject("37010219850312002");
    let (id, token) = grant_jq03(&r.f, &citizen).await.unwrap();
    let portal = jinan_token(&r.f, "portal", &["consent-portal"]);
    let mut b_consents = ConsentClient::new(channel(&r.b_url).await);
    let listed = b_consents
        .list(with(
            &portal,
            ListRequest {
                subject: citizen.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.consents.iter().any(|c| c.id == id), "{listed:?}");
    assert_eq!(
        submit(&r, &r.b_url, &citizen, &token).await,
        tonic::Code::Ok
    );

    // The citizen's access log, asked of A by an operator (no other city asked), has the
    // exchange B served: A fans out to the replicas in the city's directory.
    let op = jinan_token(&r.f, "ops", &["audit-operator"]);
    let log_req = with(
        &op,
        tongban_proto::audit::v1::AccessLogRequest {
            subject: citizen.clone(),
            limit: 100,
            with_proofs: false,
        },
    );
    let log = tongban_proto::audit::v1::audit_client::AuditClient::new(channel(&a_url).await)
        .access_log(log_req)
        .await
        .unwrap()
        .into_inner();
    assert!(log.unreachable.is_empty(), "{:?}", log.unreachable);
    let mut from_b = 0;
    for access in &log.accesses {
        if !access.request_id.is_empty()
            && a.auditor()
                .records_for_request(&access.request_id)
                .await
                .is_empty()
        {
            from_b += 1;
        }
    }
    assert!(
        from_b >= 1,
        "no access from B's log in A's answer: {:?}",
        log.accesses
    );

    // Revoked on B: A's catalog carries the revocation within a second, and A refuses it.
    b_consents
        .revoke(with(
            &portal,
            RevokeRequest {
                subject: citizen.clone(),
                id: id.clone(),
            },
        ))
        .await
        .unwrap();
    assert!(
        a.wait_for_catalog(WITHIN, |s| s.revoked_consents.contains(&id))
            .await,
        "A publishes B's revocation within {WITHIN:?}"
    );
    // Qingdao, which checks consents on its side, has it from A's catalog stream.
    let qingdao = r.f.fed.city("qingdao").unwrap().node().unwrap();
    assert!(
        qingdao
            .wait_for_catalog(WITHIN, |s| s.consent_revoked("jinan", &id))
            .await,
        "qingdao learns of the revocation within {WITHIN:?}"
    );
    assert_eq!(
        submit(&r, &a_url, &citizen, &token).await,
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        submit(&r, &r.b_url, &citizen, &token).await,
        tonic::Code::PermissionDenied
    );

    // Each replica's own chain: its id in its records and in the checkpoints it signs.
    for (node, replica) in [(a, "a"), (&r.b, "b")] {
        let auditor = node.auditor();
        auditor.caught_up().await;
        let last = auditor.read(auditor.head().seq).unwrap();
        assert_eq!(last.replica, replica, "{last:?}");
        let signed = auditor.checkpoint_now().unwrap().unwrap();
        let cp = <tongban_proto::audit::v1::Checkpoint as prost::Message>::decode(
            signed.checkpoint.as_slice(),
        )
        .unwrap();
        assert_eq!((cp.city.as_str(), cp.replica.as_str()), ("jinan", replica));
    }

    // The checkpoints held of Qingdao are the city's, in etcd: both replicas read the
    // newest either of them received.
    let held = |node: &RunningNode| {
        node.auditor()
            .peer_checkpoint("qingdao")
            .map(|s| prost::Message::encode_to_vec(&s))
    };
    let etcd_kv =
        tongban_gateway::store::etcd::EtcdKv::connect(&tongban_gateway::store::etcd::EtcdConfig {
            endpoints: vec![r._etcd.endpoint.clone()],
            prefix: "/tongban/jinan/".into(),
            timeout: Duration::from_secs(2),
            tls: r.backend_tls.clone(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        use tongban_gateway::store::kv::KvStore as _;
        let in_etcd = etcd_kv
            .get(b"audit/peer_checkpoints/qingdao")
            .await
            .unwrap()
            .map(|kv| kv.value);
        if in_etcd.is_some() && in_etcd == held(a) && in_etcd == held(&r.b) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint held of qingdao: etcd {:?}, A {:?}, B {:?}",
            in_etcd.map(|v| v.len()),
            held(a).map(|v| v.len()),
            held(&r.b).map(|v| v.len())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Replica A goes away: Qingdao reaches Jinan through B, the other address it lists.
    let mut r = r;
    r.f.fed.stop_node("jinan").await.unwrap();
    let started = std::time::Instant::now();
    let answered = loop {
        let msg = SubmitRequest {
            catalog_code: "JQ-07".into(),
            ..Default::default()
        };
        let mut req =
            r.f.req("qingdao", msg, Some("jinan"), Duration::from_secs(5));
        req.metadata_mut()
            .insert("x-tongban-target-org", MetadataValue::from_static("hrss"));
        match r.f.crosscity("qingdao").await.submit(req).await {
            Ok(resp) => break resp.into_inner(),
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && started.elapsed() < Duration::from_secs(15) =>
            {
                eprintln!("not yet through B: {:?} {}", s.code(), s.message());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("qingdao did not reach jinan through replica B: {s:?}"),
        }
    };
    assert_eq!(answered.provider_city, "jinan", "{answered:?}");
    eprintln!("through replica B after {:?}", started.elapsed());
    r.b.shutdown().await;
    r.f.fed.shutdown().await;
}

/// etcd stops answering (SIGSTOP: its sockets stay open, as in a partition): the replicas
/// refuse writes with UNAVAILABLE naming etcd, keep routing and checking from their
/// snapshot, and write again by themselves once etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_unreachable_writes_are_refused_and_calls_go_on() {
    let r = Box::pin(start()).await;
    r._etcd.freeze().await.unwrap();
    etcd_away_then_back(r, |r| r._etcd.thaw().unwrap()).await;
}

/// The same with a real partition: etcd on a host of its own (a network namespace), the
/// network to it cut (its route black-holed, packets lost silently) and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_partitioned_away_writes_are_refused_and_calls_go_on() {
    let r = Box::pin(start_with(LocalEtcd::start_tls_elsewhere())).await;
    let host = r._etcd.netns.as_ref().expect("etcd on a host of its own");
    host.partition().unwrap();
    etcd_away_then_back(r, |r| r._etcd.netns.as_ref().unwrap().heal().unwrap()).await;
}

/// With etcd away (`r` as the test left it): writes refused naming etcd, calls through both
/// replicas served; then `back`, and writes go through again and B follows.
async fn etcd_away_then_back(r: Replicas, back: impl FnOnce(&Replicas)) {
    let at = format!("etcd at {}", r._etcd.endpoint);
    let unavailable = |e: tongban_devkit::local::LocalError| {
        let tongban_devkit::local::LocalError::Registry(status) = e else {
            panic!("{e}")
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&at), "{status:?}");
    };
    unavailable(
        r.f.fed
            .register_crosscity("jinan", "gjj", &["JQ-08"], false)
            .await
            .unwrap_err(),
    );
    let citizen = demo_subject("37010219850312002");
    unavailable(grant_jq03(&r.f, &citizen).await.unwrap_err());
    // The data path needs no etcd: a call through either replica goes through.
    for url in [r.f.fed.city("jinan").unwrap().caller_url(), r.b_url.clone()] {
        let msg = SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        };
        let req =
            r.f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
        CrossCityServiceClient::new(channel(&url).await)
            .submit(req)
            .await
            .unwrap_or_else(|s| panic!("through {url} with etcd away: {s:?}"));
    }
    // Back: the registration goes through, and B serves it.
    back(&r);
    let started = std::time::Instant::now();
    let v = loop {
        match r
            .f
            .fed
            .register_crosscity("jinan", "gjj", &["JQ-08"], false)
            .await
        {
            Ok(v) => break v,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                eprintln!("etcd not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no write after etcd returned: {e}"),
        }
    };
    assert!(
        r.b.wait_for_catalog(Duration::from_secs(5), |s| s.local_version >= v)
            .await,
        "B follows again after etcd returned"
    );
    r.b.shutdown().await;
    r.f.fed.shutdown().await;
}

/// Waits until `node` serves: its audit log confirmed by Qingdao and Qingdao's catalog held
/// (what a readiness probe waits for).
async fn ready(node: &RunningNode) {
    let mut anchor = node.auditor().watch_anchor();
    tokio::time::timeout(Duration::from_secs(20), anchor.wait_for(|a| a.confirmed()))
        .await
        .expect("anchored")
        .unwrap();
    assert!(
        node.wait_for_catalog(Duration::from_secs(20), |s| s
            .peers
            .get("qingdao")
            .is_some_and(|p| !p.services.is_empty()))
            .await
    );
}

/// Both replicas restarted one after the other under a steady load through a TCP balancer
/// (and from Qingdao, whose node lists both replicas' addresses): each is taken out of the
/// balancer, drained (GOAWAY, calls in flight finished), started again and put back once
/// ready. No call fails: Qingdao's node sends again a call the draining replica did not
/// process (its stream above the GOAWAY's last), and a call tonic hands back unsent (queued
/// for a connection that the GOAWAY closed) is sent again by the test's callers, as a client
/// with gRPC's transparent retry does by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_both_replicas_fails_no_call() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let Replicas {
        mut f,
        b,
        b_config,
        _etcd,
        ..
    } = Box::pin(start()).await;
    let a_addr = f.fed.city("jinan").unwrap().config.caller_addr;
    let lb = tongban_tests::balancer::Balancer::start(vec![a_addr, b_config.caller_addr])
        .await
        .unwrap();
    let url = format!("http://{}", lb.addr);
    let qingdao_url = format!(
        "http://{}",
        f.fed.city("qingdao").unwrap().config.caller_addr
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let unsent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Four callers of Jinan through the balancer, each on its own connection; two of Qingdao
    // calling Jinan, whose node reaches the replicas at the addresses it lists.
    let mut load = Vec::new();
    for i in 0..6 {
        let (from, to, code, url) = if i < 4 {
            ("jinan", "qingdao", "JQ-03", url.clone())
        } else {
            ("qingdao", "jinan", "JQ-07", qingdao_url.clone())
        };
        let token = f.fed.token(from, "hrss").unwrap();
        let (stop, failures, unsent) = (stop.clone(), failures.clone(), unsent.clone());
        load.push(tokio::spawn(async move {
            let mut client = CrossCityServiceClient::new(channel(&url).await);
            let mut ok = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut req = tonic::Request::new(SubmitRequest {
                    catalog_code: code.into(),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(10));
                for (k, v) in [
                    ("authorization", format!("Bearer {token}")),
                    ("x-tongban-target-city", to.to_string()),
                    ("x-tongban-target-org", "hrss".to_string()),
                    ("x-tongban-purpose", "case-handling".to_string()),
                ] {
                    req.metadata_mut()
                        .insert(k, MetadataValue::try_from(v).unwrap());
                }
                match client.submit(req).await {
                    Ok(_) => ok += 1,
                    // The transparent retry tonic lacks: sent again on the next turn.
                    Err(s) if tongban_tests::never_sent(&s) => {
                        unsent.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => failures.lock().unwrap().push(format!(
                        "{from} → {to}: {:?}: {}",
                        s.code(),
                        s.message()
                    )),
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A: out of the balancer, drained and stopped, started again, back once ready.
    lb.set_ready(0, false);
    f.fed.stop_node("jinan").await.unwrap();
    f.fed.restart_node("jinan").await.unwrap();
    ready(f.fed.city("jinan").unwrap().node().unwrap()).await;
    lb.set_ready(0, true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B, the same.
    lb.set_ready(1, false);
    b.shutdown().await;
    let b = RunningNode::launch(b_config.clone()).await.unwrap();
    ready(&b).await;
    lb.set_ready(1, true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::SeqCst);
    let mut ok = 0;
    for l in load {
        ok += l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "rolling restart: {ok} calls answered, {} failed, {} handed back unsent and sent again",
        failures.len(),
        unsent.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} failed calls: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok >= 50, "only {ok} calls during the restarts");
    // Both replicas had callers, and took over the other's when it drained.
    let (to_a, to_b) = (lb.connections(0), lb.connections(1));
    eprintln!("connections: {to_a} to A, {to_b} to B");
    assert!(to_a >= 2 && to_b >= 2, "A {to_a}, B {to_b}");
    b.shutdown().await;
    f.fed.shutdown().await;
}

/// A caller assertion that replica A accepted, sent again: to replica B, to A on a new
/// connection (as after a restart), and to A on the same connection. Each is refused: the
/// assertion names the TLS connection it was made for (a digest of its exporter), and a
/// connection's own replays are in the replica's replay cache. The test acts as Qingdao's
/// node, with its certificate and key: the only one who can present its assertions at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_accepted_by_one_replica_is_refused_by_the_other() {
    use http_body_util::BodyExt as _;
    use tongban_gateway::assertion::{AssertionClaims, Signer, HEADER};
    use tongban_gateway::trust::{NodeIdentity, TrustBundle};
    use tongban_gateway::upstream::{Conn, Endpoint};

    let r = Box::pin(start()).await;
    let q = r.f.fed.city("qingdao").unwrap().config.clone();
    let a_peer = r.f.fed.city("jinan").unwrap().config.peer_addr.to_string();
    let b_peer = r.b_config.peer_addr.to_string();
    let bundle = TrustBundle::load(&q.trust_bundle_path).unwrap();
    let qingdao = NodeIdentity::load("qingdao", &q.cert_path, &q.key_path, &bundle).unwrap();
    let signer = Signer::new(qingdao.key_pkcs8());
    let connect = |addr: String| {
        let tls = qingdao.peer_client_config(&bundle, "jinan").unwrap();
        let name = bundle.node_name_of("jinan").unwrap();
        async move {
            // An endpoint of its own: a connection of its own.
            let ep = Endpoint::peer("jinan", &[addr], tls, name).unwrap();
            ep.ready_conn(Duration::from_secs(5)).await.unwrap()
        }
    };
    let authority = bundle.node_name_of("jinan").unwrap().to_str().to_string();
    let rid = tongban_telemetry::trace::unique_id();
    let conn_a = connect(a_peer.clone()).await;
    let claims = AssertionClaims {
        chb: conn_a
            .binding
            .as_ref()
            .expect("a tls connection has a binding")
            .as_str()
            .to_string(),
        ..AssertionClaims::official(
            "qingdao",
            "jinan",
            "hrss",
            "li.na",
            &rid,
            "tongban.crosscity.v1.CrossCityService",
            "Submit",
        )
    };
    let token = signer.sign(&claims).unwrap();
    // One Submit of JQ-07 as Qingdao's node sends it: its status.
    let submit = |conn: Conn| {
        let (token, rid, addr) = (token.clone(), rid.clone(), authority.clone());
        async move {
            let msg = prost::Message::encode_to_vec(&SubmitRequest {
                catalog_code: "JQ-07".into(),
                ..Default::default()
            });
            let mut frame = vec![0u8];
            frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
            frame.extend_from_slice(&msg);
            let req = http::Request::builder()
                .method("POST")
                .uri(format!(
                    "https://{addr}/tongban.crosscity.v1.CrossCityService/Submit"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", "5S")
                .header("x-tongban-request-id", rid)
                .header("x-tongban-purpose", "case-handling")
                .header("x-tongban-target-city", "jinan")
                .header("x-tongban-target-org", "hrss")
                .header(HEADER, token)
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    bytes::Bytes::from(frame),
                )))
                .unwrap();
            let mut sender = conn.sender;
            let resp = sender.send_request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or(parts.headers);
            match tonic::Status::from_header_map(&trailers) {
                Some(s) => (s.code(), s.message().to_string()),
                None => (tonic::Code::Ok, String::new()),
            }
        }
    };
    let (status, message) = submit(conn_a.clone()).await;
    assert_eq!(
        status,
        tonic::Code::Ok,
        "replica A accepts the assertion: {message}"
    );
    // To replica B: another connection, another binding.
    let (status, message) = submit(connect(b_peer).await).await;
    assert_eq!(status, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("another tls connection"), "{message}");
    // To replica A on a new connection.
    let (status, message) = submit(connect(a_peer).await).await;
    assert_eq!(status, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("another tls connection"), "{message}");
    // To replica A on the connection it was made for: a replay.
    let (status, message) = submit(conn_a).await;
    assert_eq!(status, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("replay"), "{message}");
    r.b.shutdown().await;
    r.f.fed.shutdown().await;
}

/// The Audit API of one replica answers for the city's replicas: `Query` pages through the
/// records of both (oldest first, each record naming its replica), `Get` finds a request B
/// served, `Verify` verifies B's chain too; and a citizen's access log asked in Qingdao has
/// what replica B alone recorded (Qingdao asks Jinan at every address it lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_api_of_one_replica_answers_for_all_of_them() {
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::{AccessLogRequest, GetRequest, QueryRequest, VerifyRequest};
    use tongban_proto::consent::v1::GrantRequest;

    let r = Box::pin(start()).await;
    let a_url = r.f.fed.city("jinan").unwrap().caller_url();
    let since = tongban_gateway::assertion::now_s() as i64 * 1000 - 1000;
    // Three calls through each replica.
    let mut served = Vec::new();
    for url in [&a_url, &r.b_url, &a_url, &r.b_url, &a_url, &r.b_url] {
        let msg = SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        };
        let req =
            r.f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
        let resp = CrossCityServiceClient::new(channel(url).await)
            .submit(req)
            .await
            .unwrap();
        served.push((url.clone(), tongban_tests::request_id_of(&resp)));
    }
    let op = jinan_token(&r.f, "ops", &["audit-operator"]);
    let mut audit = AuditClient::new(channel(&a_url).await);

    // Query, two records a page, through both replicas' records.
    let mut token = String::new();
    let mut seen: Vec<(String, i64, String)> = Vec::new();
    for page in 0.. {
        assert!(page < 100, "the pages never end");
        let resp = audit
            .query(with(
                &op,
                QueryRequest {
                    from_ms: since,
                    service: "tongban.crosscity.v1.CrossCityService".into(),
                    page_token: token.clone(),
                    limit: 2,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(resp.unreachable.is_empty(), "{:?}", resp.unreachable);
        assert!(resp.records.len() <= 2);
        seen.extend(
            resp.records
                .iter()
                .map(|r| (r.request_id.clone(), r.started_at_ms, r.replica.clone())),
        );
        token = resp.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    for (url, rid) in &served {
        let replica = if *url == a_url { "a" } else { "b" };
        let found: Vec<_> = seen.iter().filter(|(id, _, _)| id == rid).collect();
        assert_eq!(found.len(), 1, "{rid} once in the pages: {seen:?}");
        assert_eq!(found[0].2, replica, "{rid} recorded by replica {replica}");
    }
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "oldest first across pages: {seen:?}"
    );

    // Get of a request B served, asked of A.
    let (_, b_rid) = served.iter().find(|(u, _)| *u == r.b_url).unwrap();
    let got = audit
        .get(with(
            &op,
            GetRequest {
                request_id: b_rid.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.unreachable.is_empty(), "{:?}", got.unreachable);
    assert!(
        got.local.iter().any(|x| x.replica == "b"),
        "B's record of {b_rid}: {:?}",
        got.local
    );

    // Verify: A's chain and B's.
    let v = audit
        .verify(with(&op, VerifyRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.replicas.len(), 1, "{v:?}");
    assert_eq!(v.replicas[0].replica, "b");
    assert!(v.replicas[0].ok && v.replicas[0].records >= 3, "{v:?}");

    // A consent granted through B is recorded by B alone; its citizen, signed in at
    // Qingdao, sees it in the access log Qingdao gathers.
    let citizen = demo_subject("37020219900101003");
    let portal = jinan_token(&r.f, "portal", &["consent-portal"]);
    let grant = with(
        &portal,
        GrantRequest {
            subject: citizen.clone(),
            grantee: "jinan/hrss".into(),
            target_city: "qingdao".into(),
            service: "tongban.crosscity.v2.CrossCityService".into(),
            purpose: "case-handling".into(),
            expires_at_ms: since + 24 * 3600 * 1000,
            items: vec!["JQ-03".into()],
        },
    );
    let granted = ConsentClient::new(channel(&r.b_url).await)
        .grant(grant)
        .await
        .unwrap()
        .into_inner();
    let consent_id = granted.consent.unwrap().id;
    let me =
        r.f.fed
            .idp("qingdao")
            .unwrap()
            .issue(
                "portal",
                &["citizen".into()],
                Duration::from_secs(600),
                &citizen,
            )
            .unwrap();
    let ask = with(
        &me,
        AccessLogRequest {
            subject: citizen.clone(),
            limit: 100,
            with_proofs: false,
        },
    );
    let log = AuditClient::new(r.f.channel("qingdao").await)
        .access_log(ask)
        .await
        .unwrap()
        .into_inner();
    assert!(log.unreachable.is_empty(), "{:?}", log.unreachable);
    assert!(
        log.accesses
            .iter()
            .any(|a| a.change == "consent_granted" && a.consent_id == consent_id),
        "the grant B recorded: {:?}",
        log.accesses
    );
    r.b.shutdown().await;
    r.f.fed.shutdown().await;
}

/// Replicas whose caller listeners serve TLS (the caller certificate shared by the city's
/// replicas): the Audit API of A still answers for B, reaching B's TLS listener with the
/// shared certificate pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_fan_out_reaches_replicas_behind_tls() {
    use tongban_gateway::trust::{NodeIdentity, TrustBundle};
    use tongban_gateway::upstream::{Endpoint, EndpointChannel};
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::QueryRequest;

    let Replicas {
        mut f,
        b,
        mut b_config,
        _etcd,
        ..
    } = Box::pin(start()).await;
    let files = f.fed.certs.city("jinan").unwrap().clone();
    let caller_tls = tongban_gateway::config::CallerTls {
        cert: files.node_cert.clone(),
        key: files.node_key.clone(),
        client_ca: None,
    };
    f.fed.stop_node("jinan").await.unwrap();
    f.fed
        .cities
        .iter_mut()
        .find(|c| c.city == "jinan")
        .unwrap()
        .config
        .caller_tls = Some(caller_tls.clone());
    f.fed.restart_node("jinan").await.unwrap();
    b.shutdown().await;
    b_config.caller_tls = Some(caller_tls);
    let b = RunningNode::launch(b_config.clone()).await.unwrap();
    ready(&b).await;

    // A city system with a certificate of Jinan's CA (here the node's own), over TLS.
    let bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    let id = NodeIdentity::load("jinan", &files.node_cert, &files.node_key, &bundle).unwrap();
    let over_tls = |addr: std::net::SocketAddr| {
        let ep = Endpoint::peer(
            "jinan",
            &[addr.to_string()],
            id.peer_client_config(&bundle, "jinan").unwrap(),
            bundle.node_name_of("jinan").unwrap(),
        )
        .unwrap();
        EndpointChannel::new(std::sync::Arc::new(ep), Duration::from_secs(2))
    };
    let since = tongban_gateway::assertion::now_s() as i64 * 1000 - 1000;
    let token = f.fed.token("jinan", "hrss").unwrap();
    let mut req = with(
        &token,
        SubmitRequest {
            catalog_code: "JQ-03".into(),
            ..Default::default()
        },
    );
    for (k, v) in [
        ("x-tongban-target-city", "qingdao"),
        ("x-tongban-purpose", "case-handling"),
    ] {
        req.metadata_mut().insert(k, MetadataValue::from_static(v));
    }
    let via_b = CrossCityServiceClient::new(over_tls(b_config.caller_addr))
        .submit(req)
        .await
        .unwrap();
    let b_rid = tongban_tests::request_id_of(&via_b);

    let op = jinan_token(&f, "ops", &["audit-operator"]);
    let a_addr = f.fed.city("jinan").unwrap().config.caller_addr;
    let page = AuditClient::new(over_tls(a_addr))
        .query(with(
            &op,
            QueryRequest {
                from_ms: since,
                service: "tongban.crosscity.v1.CrossCityService".into(),
                limit: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(page.unreachable.is_empty(), "{:?}", page.unreachable);
    assert!(
        page.records
            .iter()
            .any(|r| r.request_id == b_rid && r.replica == "b"),
        "B's record of {b_rid} in A's answer: {:?}",
        page.records
    );
    b.shutdown().await;
    f.fed.shutdown().await;
}
