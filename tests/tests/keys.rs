//! Keys an operator can handle with standard tools (issue 7): `tongban certs init` writes
//! PKCS#8 v1 private keys that OpenSSL reads, v1 and v2 both load, and a federation on
//! ECDSA P-256 node certificates (`--key-type p256`) runs cross-city calls with consent,
//! caller assertions and receipts signed with those keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::{loopback_limits, LocalFederation};
use tongban_gateway::trust::{NodeIdentity, NodeKeyType, TrustBundle};
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{tongban_bin, Fed, CONVERGE};
use tonic::metadata::MetadataValue;

fn openssl_reads(key: &Path) {
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(key)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl pkey refused {}: {}",
        key.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python_cryptography_reads(key: &Path) {
    let out = Command::new(tongban_tests::python())
        .args([
            "-c",
            "import sys; from cryptography.hazmat.primitives.serialization import load_pem_private_key; load_pem_private_key(open(sys.argv[1], 'rb').read(), None)",
        ])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python cryptography refused {}: {}",
        key.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DER inside a PEM file.
fn der_of(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn generated_keys_are_pkcs8_v1_and_openssl_reads_them() {
    for (kind, flag) in [
        (NodeKeyType::Ed25519, "ed25519"),
        (NodeKeyType::P256, "p256"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(tongban_bin())
            .args(["certs", "init", "--city", "jinan", "--city", "qingdao"])
            .args(["--key-type", flag, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        tongban_tests::assert_success(&out);
        let bundle = TrustBundle::load(&dir.path().join("trust-bundle.toml")).unwrap();
        for city in ["jinan", "qingdao"] {
            let d = dir.path().join(city);
            for key in ["node.key", "ca.key", "idp.key"] {
                openssl_reads(&d.join(key));
                python_cryptography_reads(&d.join(key));
                let der = der_of(&std::fs::read_to_string(d.join(key)).unwrap());
                // SEQUENCE { INTEGER version ...: version 0 is PKCS#8 v1 (RFC 5208).
                if kind == NodeKeyType::Ed25519 || key == "idp.key" {
                    assert_eq!(&der[2..5], &[0x02, 0x01, 0x00], "{flag} {city} {key}");
                    assert_eq!(der.len(), 48, "{flag} {city} {key}: seed only");
                }
            }
            let id = NodeIdentity::load(city, &d.join("node.pem"), &d.join("node.key"), &bundle)
                .unwrap();
            assert_eq!(id.key_type(), kind);
        }
    }
}

#[test]
fn node_keys_load_as_pkcs8_v1_and_v2() {
    let dir = tempfile::tempdir().unwrap();
    let g = tongban_devkit::certs::init(dir.path(), &["jinan".into()], false).unwrap();
    let f = g.city("jinan").unwrap();
    let bundle = TrustBundle::load(&g.trust_bundle).unwrap();
    let cert = std::fs::read(&f.node_cert).unwrap();
    let v1 = der_of(&std::fs::read_to_string(&f.node_key).unwrap());
    let v2 = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&v1)
        .unwrap()
        .to_pkcs8()
        .unwrap();
    assert_ne!(v2.as_ref(), v1.as_slice());
    for der in [v1.as_slice(), v2.as_ref()] {
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        NodeIdentity::from_pem("jinan", &cert, pem.as_bytes(), &bundle).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p256_federation_calls_across_the_boundary_with_consent_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let fed = LocalFederation::start_with_keys(
        dir.path(),
        &["jinan", "qingdao"],
        loopback_limits(),
        NodeKeyType::P256,
    )
    .await
    .unwrap();
    fed.register_crosscity("jinan", "hrss", &["JQ-03"], false)
        .await
        .unwrap();
    fed.register_crosscity("qingdao", "hrss", &["JQ-03"], true)
        .await
        .unwrap();
    // The signed catalogs (ECDSA) verified: each node sees the other's service.
    assert!(
        fed.wait_until_federated(CONVERGE, |_, p| !p.services.is_empty())
            .await
    );
    let f = Fed { fed, dir };
    let citizen = demo_subject("37010219850312002");
    // A consent signed (ES256) by jinan's node, checked by qingdao's.
    let grant = f.fed.grant_consent(
        "jinan",
        &citizen,
        "jinan/hrss",
        "qingdao",
        "case-handling",
        &[],
    );
    let (_, consent) = grant.await.unwrap();
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    let md = req.metadata_mut();
    md.insert(
        "x-tongban-subject",
        MetadataValue::try_from(&citizen).unwrap(),
    );
    md.insert(
        "x-tongban-consent",
        MetadataValue::try_from(&consent).unwrap(),
    );
    md.insert(
        "x-tongban-request-id",
        MetadataValue::from_static("p256-call-1"),
    );
    let answer = f.crosscity("jinan").await.submit(req).await.unwrap();
    assert_eq!(answer.into_inner().provider_city, "qingdao");
    // The caller assertion (ES256) was accepted by qingdao, and qingdao's receipt (ES256)
    // verified at jinan.
    let jinan = f.auditor("jinan");
    let records = jinan.records_for_request("p256-call-1").await;
    assert_eq!(records.len(), 1);
    assert!(!records[0].receipt.is_empty());
    assert!(records[0].receipt_verified, "the ES256 receipt verifies");
    f.shutdown().await;
}

/// gRPC's C core (Python grpcio) as a peer node: an mTLS handshake with the node's peer
/// listener using `kind` certificates, then a health check. Returns the script's JSON.
async fn grpc_core_as_peer(kind: NodeKeyType) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let fed = LocalFederation::start_with_keys(
        dir.path(),
        &["jinan", "qingdao"],
        loopback_limits(),
        kind,
    )
    .await
    .unwrap();
    let jinan = fed.certs.city("jinan").unwrap().clone();
    let qingdao = fed.certs.city("qingdao").unwrap().clone();
    let addr = fed.city("qingdao").unwrap().config.peer_addr.to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/peer_mtls_health.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tongban_tests::python())
            .arg(script)
            .arg(addr)
            .arg(&qingdao.ca_cert)
            .arg(&jinan.node_cert)
            .arg(&jinan.node_key)
            .arg("node.qingdao.tongban")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    fed.shutdown().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_c_core_completes_the_peer_handshake_with_p256_certificates() {
    let v = grpc_core_as_peer(NodeKeyType::P256).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["status"], 1, "SERVING: {v}");
    // The default Ed25519 certificates do not work with it: what the README states (if a
    // newer grpcio completes this handshake, the README's table must change).
    let ed = grpc_core_as_peer(NodeKeyType::Ed25519).await;
    assert_eq!(ed["ok"], false, "{ed}");
    assert!(ed["details"].as_str().unwrap().contains("andshake"), "{ed}");
}
