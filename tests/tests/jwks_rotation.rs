//! Key rotation at the identity provider, with the JWKS served over HTTPS by a test server:
//! a token from a new key is accepted after one rate-limited refresh, without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tongban_devkit::certs;
use tongban_devkit::idp::{self, DevIdp};
use tongban_devkit::local::{loopback_limits, node_config, RunningProvider, CROSSCITY_SERVICE};
use tongban_gateway::RunningNode;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};
use tongban_tests::{authorize, targeted};
use tonic::metadata::MetadataValue;
use tonic::Code;

/// An HTTPS server for one JWKS document that can be swapped; counts the fetches.
struct JwksServer {
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    url: String,
    ca_file: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn jwks_server(dir: &std::path::Path, doc: String) -> JwksServer {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_file = dir.join("idp-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/jwks.json",
        listener.local_addr().unwrap().port()
    );
    let doc = Arc::new(Mutex::new(doc));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (d, n) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => r.unwrap(),
                _ = &mut stopped => return,
            };
            let (acceptor, d, n) = (acceptor.clone(), d.clone(), n.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    n.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    JwksServer {
        doc,
        fetches,
        url,
        ca_file,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_restart_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs::init(&dir.path().join("certs"), &["jinan".into()], false).unwrap();
    let key1 = DevIdp::load(
        "jinan",
        &idp::kid("jinan", 1),
        &g.city("jinan").unwrap().idp_key,
    )
    .unwrap();
    let key2 = DevIdp::generate("jinan", &idp::kid("jinan", 2)).unwrap();
    let key3 = DevIdp::generate("jinan", &idp::kid("jinan", 3)).unwrap();
    let server = jwks_server(dir.path(), DevIdp::jwks(&[&key1])).await;

    let any = "127.0.0.1:0".parse().unwrap();
    let mut config = node_config(
        &g,
        "jinan",
        dir.path(),
        (any, any),
        vec![],
        loopback_limits(),
    )
    .unwrap();
    config.auth.jwks_file = None;
    config.auth.jwks_url = Some(server.url.clone());
    config.auth.jwks_ca_file = Some(server.ca_file.clone());
    let node = RunningNode::launch(config).await.unwrap();
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "fetched once at start"
    );

    let provider = RunningProvider::start("jinan").await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.caller_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut registry = RegistryClient::new(channel.clone());
    let mut reg = tonic::Request::new(RegisterServiceRequest {
        registration: Some(ServiceRegistration {
            organisation: "hrss".into(),
            service: CROSSCITY_SERVICE.into(),
            endpoints: vec![provider.url()],
            ..Default::default()
        }),
    });
    authorize(
        &mut reg,
        &key1
            .issue("hrss", &[], Duration::from_secs(600), "ops")
            .unwrap(),
    );
    registry.register_service(reg).await.unwrap();

    let mut client = CrossCityServiceClient::new(channel);
    let call = |token: String| {
        let mut req = targeted(
            SubmitRequest {
                catalog_code: "JQ-03".into(),
                ..Default::default()
            },
            Some("jinan"),
            Duration::from_secs(5),
        );
        authorize(&mut req, &token);
        req.metadata_mut().insert(
            "x-tongban-purpose",
            MetadataValue::from_static("case-handling"),
        );
        req
    };
    let token =
        |k: &DevIdp, sub: &str| k.issue("hrss", &[], Duration::from_secs(600), sub).unwrap();

    client.submit(call(token(&key1, "a"))).await.unwrap();

    // The provider rotates: key 2 is published next to key 1.
    *server.doc.lock().unwrap() = DevIdp::jwks(&[&key1, &key2]);
    client.submit(call(token(&key2, "b"))).await.unwrap();
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "one refresh for the unknown kid"
    );

    // Another unknown kid right after: refused without hammering the provider.
    let e = client.submit(call(token(&key3, "c"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("jinan-dev-3"), "{}", e.message());
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "refresh is rate-limited"
    );

    // Key 1 retired: after the next refresh its new tokens no longer pass.
    *server.doc.lock().unwrap() = DevIdp::jwks(&[&key2]);
    assert_eq!(node.refresh_jwks().await.unwrap(), 1);
    let e = client.submit(call(token(&key1, "d"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    client.submit(call(token(&key2, "e"))).await.unwrap();
    assert_eq!(provider.provider.calls(), 3);

    // Both rotations are records in the node's chain, with the key ids in force after each.
    let mut rotated = Vec::new();
    for _ in 0..100 {
        let (records, _) = node
            .auditor()
            .query(&tongban_gateway::audit::index::Filter {
                limit: 1000,
                ..Default::default()
            })
            .await;
        rotated = records
            .into_iter()
            .filter_map(|r| r.state_change)
            .filter(|c| c.kind == tongban_proto::audit::v1::ChangeKind::KeysRotated as i32)
            .map(|c| c.detail)
            .collect::<Vec<_>>();
        if rotated.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rotated.sort();
    assert_eq!(
        rotated,
        [
            format!("key ids {},{}", idp::kid("jinan", 1), idp::kid("jinan", 2)),
            format!("key ids {}", idp::kid("jinan", 2)),
        ]
    );

    node.shutdown().await;
    provider.stop().await;
    let _ = server.stop.send(());
}
