//! The refusals of the trust path, table-driven: each case asserts the exact gRPC code and
//! that no provider received anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};
use tongban_devkit::idp::{self, DevIdp};
use tongban_devkit::local::loopback_limits;
use tongban_gateway::assertion::{AssertionClaims, Signer};
use tongban_gateway::config::Limits;
use tongban_gateway::subject::check_digit;
use tongban_gateway::trust::{NodeIdentity, TrustBundle};
use tongban_gateway::upstream::{Endpoint, EndpointChannel};
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{targeted, Fed};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token with an arbitrary header and claims and a garbage signature.
fn unsigned(header: Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn submit() -> SubmitRequest {
    SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    }
}

/// A valid subject id.
fn subject() -> String {
    let first = "37010219900101123";
    format!("{first}{}", check_digit(first).unwrap())
}

struct Case {
    name: &'static str,
    /// `authorization` value, or None for no header.
    authorization: Option<String>,
    /// Metadata added (or, with an empty value, removed).
    metadata: Vec<(&'static str, String)>,
    expect: Code,
}

fn case(name: &'static str, token: Option<String>, expect: Code) -> Case {
    Case {
        name,
        authorization: token.map(|t| format!("Bearer {t}")),
        metadata: vec![],
        expect,
    }
}

fn with(mut c: Case, k: &'static str, v: impl Into<String>) -> Case {
    c.metadata.push((k, v.into()));
    c
}

async fn run(f: &Fed, c: &Case) {
    let mut req = targeted(submit(), Some("qingdao"), Duration::from_secs(5));
    let md = req.metadata_mut();
    md.insert(
        "x-tongban-purpose",
        MetadataValue::from_static("case-handling"),
    );
    if let Some(a) = &c.authorization {
        md.insert(
            "authorization",
            MetadataValue::try_from(a.as_str()).unwrap(),
        );
    }
    for (k, v) in &c.metadata {
        if v.is_empty() {
            md.remove(*k);
        } else {
            md.insert(*k, MetadataValue::try_from(v.as_str()).unwrap());
        }
    }
    let got = f.crosscity("jinan").await.submit(req).await;
    match got {
        Ok(_) => panic!("case `{}`: the call passed", c.name),
        Err(e) => {
            assert_eq!(e.code(), c.expect, "case `{}`: {}", c.name, e.message());
            assert!(!e.message().is_empty(), "case `{}` has no message", c.name);
            assert!(
                e.metadata().get("x-tongban-request-id").is_some(),
                "case `{}` has no request id",
                c.name
            );
        }
    }
    assert_eq!(
        f.provider_calls("qingdao"),
        0,
        "case `{}` reached qingdao's provider",
        c.name
    );
    assert_eq!(
        f.provider_calls("jinan"),
        0,
        "case `{}` reached jinan's provider",
        c.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_request_refusals() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let jinan = f.fed.idp("jinan").unwrap();
    let good = |ttl| jinan.claims("hrss", &[], Duration::from_secs(ttl), "hrss-system");
    let sign = |claims: &Value| jinan.sign_claims(claims).unwrap();
    let valid = sign(&good(600));
    let kid = idp::kid("jinan", 1);

    let mut expired = good(600);
    expired["exp"] = json!(now() - 3600);
    let mut future = good(600);
    future["nbf"] = json!(now() + 3600);
    let mut wrong_iss = good(600);
    wrong_iss["iss"] = json!("https://idp.evil.example");
    let mut wrong_aud = good(600);
    wrong_aud["aud"] = json!("tongban:qingdao");
    let mut string_exp = good(600);
    string_exp["exp"] = json!((now() + 600).to_string());
    let mut no_exp = good(600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut bad_org = good(600);
    bad_org["org"] = json!("HRSS; drop");
    let mut no_org = good(600);
    no_org.as_object_mut().unwrap().remove("org");

    // alg none, and an HMAC token keyed with the public key (algorithm confusion).
    let none = unsigned(
        json!({"alg": "none", "typ": "JWT", "kid": kid}),
        &good(600),
        "",
    );
    let x = jinan.jwk()["x"].as_str().unwrap().to_string();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let confused = jsonwebtoken::encode(
        &hs,
        &good(600),
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    let confused_raw = jsonwebtoken::encode(
        &hs,
        &good(600),
        &jsonwebtoken::EncodingKey::from_secret(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&x)
                .unwrap(),
        ),
    )
    .unwrap();
    // Not a kid of the key set; and a token without kid.
    let stranger = DevIdp::generate("jinan", "jinan-dev-99").unwrap();
    let unknown_kid = stranger
        .issue("hrss", &[], Duration::from_secs(600), "x")
        .unwrap();
    let mut no_kid_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    no_kid_header.kid = None;
    let no_kid = unsigned(
        serde_json::to_value(&no_kid_header).unwrap(),
        &good(600),
        "AAAA",
    );
    // Tampering.
    let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
    let sig = parts[2].clone();
    // Change the first signature character (never to itself).
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let flipped = format!("{first}{}", sig.get(1..).unwrap_or_default());
    parts[2] = flipped;
    let tampered_sig = parts.join(".");
    let mut other_claims = good(600);
    other_claims["org"] = json!("ybj");
    let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
    parts[1] = b64(other_claims.to_string().as_bytes());
    let tampered_claims = parts.join(".");
    // Qingdao's token presented at Jinan.
    let qingdao_token = f.fed.token("qingdao", "hrss").unwrap();

    let mut bad_subject = subject();
    bad_subject.replace_range(17..18, if bad_subject.ends_with('0') { "1" } else { "0" });

    let cases = vec![
        case("missing token", None, Code::Unauthenticated),
        case(
            "garbage token",
            Some("not-a-jwt".into()),
            Code::Unauthenticated,
        ),
        case(
            "truncated token",
            Some(valid[..valid.len() - 12].to_string()),
            Code::Unauthenticated,
        ),
        Case {
            authorization: Some(format!("Basic {valid}")),
            ..case("not bearer", None, Code::Unauthenticated)
        },
        case("alg none", Some(none), Code::Unauthenticated),
        case(
            "hmac keyed with the public key (b64)",
            Some(confused),
            Code::Unauthenticated,
        ),
        case(
            "hmac keyed with the public key (raw)",
            Some(confused_raw),
            Code::Unauthenticated,
        ),
        case("expired", Some(sign(&expired)), Code::Unauthenticated),
        case("not yet valid", Some(sign(&future)), Code::Unauthenticated),
        case("wrong iss", Some(sign(&wrong_iss)), Code::Unauthenticated),
        case("wrong aud", Some(sign(&wrong_aud)), Code::Unauthenticated),
        case(
            "non-numeric exp",
            Some(sign(&string_exp)),
            Code::Unauthenticated,
        ),
        case("missing exp", Some(sign(&no_exp)), Code::Unauthenticated),
        case("unknown kid", Some(unknown_kid), Code::Unauthenticated),
        case("missing kid", Some(no_kid), Code::Unauthenticated),
        case(
            "tampered signature",
            Some(tampered_sig),
            Code::Unauthenticated,
        ),
        case(
            "tampered claims",
            Some(tampered_claims),
            Code::Unauthenticated,
        ),
        case(
            "another city's token",
            Some(qingdao_token),
            Code::Unauthenticated,
        ),
        case(
            "invalid org claim",
            Some(sign(&bad_org)),
            Code::Unauthenticated,
        ),
        case(
            "missing org claim",
            Some(sign(&no_org)),
            Code::Unauthenticated,
        ),
        with(
            case(
                "missing purpose",
                Some(valid.clone()),
                Code::InvalidArgument,
            ),
            "x-tongban-purpose",
            "",
        ),
        with(
            case(
                "malformed purpose",
                Some(valid.clone()),
                Code::InvalidArgument,
            ),
            "x-tongban-purpose",
            "Case Handling",
        ),
        with(
            case(
                "wrong purpose (home policy)",
                Some(valid.clone()),
                Code::PermissionDenied,
            ),
            "x-tongban-purpose",
            "marketing",
        ),
        with(
            case(
                "bad id checksum",
                Some(valid.clone()),
                Code::InvalidArgument,
            ),
            "x-tongban-subject",
            bad_subject,
        ),
        with(
            case("short id", Some(valid.clone()), Code::InvalidArgument),
            "x-tongban-subject",
            "3701021990",
        ),
        with(
            case(
                "bad catalog code",
                Some(valid.clone()),
                Code::InvalidArgument,
            ),
            "x-tongban-catalog-code",
            "jq hrss",
        ),
        with(
            case("bad request id", Some(valid.clone()), Code::InvalidArgument),
            "x-tongban-request-id",
            "a b",
        ),
        with(
            case(
                "oversized metadata",
                Some(valid.clone()),
                Code::ResourceExhausted,
            ),
            "x-filler",
            "x".repeat(9000),
        ),
    ];
    assert!(cases.len() >= 28);
    for c in &cases {
        run(&f, c).await;
    }
    // The valid token itself passes (so the refusals above are about what each case changed).
    let mut req = targeted(submit(), Some("qingdao"), Duration::from_secs(5));
    tongban_tests::authorize(&mut req, &valid);
    req.metadata_mut().insert(
        "x-tongban-purpose",
        MetadataValue::from_static("case-handling"),
    );
    req.metadata_mut().insert(
        "x-tongban-subject",
        MetadataValue::try_from(subject()).unwrap(),
    );
    f.crosscity("jinan").await.submit(req).await.unwrap();
    assert_eq!(f.provider_calls("qingdao"), 1);
    f.shutdown().await;
}

fn write_policy(f: &Fed, city: &str, text: &str) {
    let node = f.fed.city(city).unwrap();
    std::fs::write(&node.config.policy_file, text).unwrap();
    node.node().unwrap().reload_policy().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providing_city_has_the_final_say() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    // Jinan lets its callers out for statistics too; Qingdao lets in only jinan/hrss, for
    // case handling, and never WatchStatus.
    write_policy(
        &f,
        "jinan",
        r#"
[[rules]]
name = "jinan out"
effect = "allow"
callers = ["jinan/*"]
services = ["*"]
purposes = ["case-handling", "statistics"]
"#,
    );
    write_policy(
        &f,
        "qingdao",
        r#"
[[rules]]
name = "jinan hrss in"
effect = "allow"
callers = ["jinan/hrss"]
target_cities = ["qingdao"]
services = ["tongban.crosscity.v1.CrossCityService"]
purposes = ["case-handling"]

[[rules]]
name = "no status streams"
effect = "deny"
callers = ["*"]
services = ["*"]
methods = ["WatchStatus"]
purposes = ["*"]
"#,
    );
    let f = &f;
    let call = |org: &'static str, purpose: &'static str| {
        let token = f.fed.token("jinan", org).unwrap();
        async move {
            let mut req = targeted(submit(), Some("qingdao"), Duration::from_secs(5));
            tongban_tests::authorize(&mut req, &token);
            req.metadata_mut()
                .insert("x-tongban-purpose", MetadataValue::from_static(purpose));
            f.crosscity("jinan").await.submit(req).await
        }
    };
    let e = call("hrss", "statistics").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().starts_with("qingdao:"),
        "decided by the provider: {}",
        e.message()
    );
    let e = call("ybj", "case-handling").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("jinan/ybj"), "{}", e.message());
    assert_eq!(f.provider_calls("qingdao"), 0);
    call("hrss", "case-handling").await.unwrap();
    assert_eq!(f.provider_calls("qingdao"), 1);
    let e = f
        .watch("jinan", "qingdao", "qingdao-000001")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no status streams"), "{}", e.message());
    assert_eq!(f.provider_calls("qingdao"), 1);
    // A broken policy edit is refused; the previous policy stays in force.
    let node = f.fed.city("qingdao").unwrap();
    std::fs::write(&node.config.policy_file, "[[rules]]\nname = 1\n").unwrap();
    assert!(node.node().unwrap().reload_policy().is_err());
    call("hrss", "case-handling").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_caller() {
    let limits = Limits {
        caller_rate_per_s: 1,
        caller_burst: 3,
        ..loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    // A burst of 3 then 1 call/s: of 8 quick calls, the first 3 pass and most of the rest
    // are refused (one may slip through if the machine is slow enough to refill a token).
    let (mut passed, mut refused) = (0, 0);
    for i in 0..8 {
        match f.submit("jinan", Some("qingdao"), "JQ-03").await {
            Ok(_) => passed += 1,
            Err(e) => {
                assert!(i >= 3, "call {i} of the burst was refused: {e:?}");
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(e.message().contains("jinan/hrss"), "{}", e.message());
                refused += 1;
            }
        }
    }
    assert!(refused >= 3, "passed {passed}, refused {refused}");
    assert_eq!(
        f.provider_calls("qingdao"),
        passed,
        "refused calls never reach the provider"
    );
    // Another city's callers have their own buckets.
    f.submit("qingdao", Some("jinan"), "JQ-03").await.unwrap();
    f.shutdown().await;
}

/// Straight to Qingdao's peer listener as the Jinan node (its real certificate), with
/// hand-made caller assertions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_assertion_refusals() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let files = f.fed.certs.city("jinan").unwrap();
    let bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    let jinan_id = NodeIdentity::load("jinan", &files.node_cert, &files.node_key, &bundle).unwrap();
    let qd = f.fed.city("qingdao").unwrap();
    let ep = Endpoint::peer(
        "qingdao",
        &[qd.config.peer_addr.to_string()],
        jinan_id.peer_client_config(&bundle, "qingdao").unwrap(),
        bundle.node_name_of("qingdao").unwrap(),
    )
    .unwrap();
    let ep = Arc::new(ep);
    // The connection the calls go on (the channel uses the endpoint's one connection), whose
    // channel binding the assertions name.
    let binding = ep
        .ready_conn(Duration::from_secs(2))
        .await
        .unwrap()
        .binding
        .unwrap()
        .as_str()
        .to_string();
    let mut client =
        CrossCityServiceClient::new(EndpointChannel::new(ep.clone(), Duration::from_secs(2)));
    let signer = Signer::new(jinan_id.key_pkcs8());
    // Qingdao's node key is not Jinan's: a forgery.
    let qfiles = f.fed.certs.city("qingdao").unwrap();
    let forger = Signer::new(
        NodeIdentity::load("qingdao", &qfiles.node_cert, &qfiles.node_key, &bundle)
            .unwrap()
            .key_pkcs8(),
    );

    let claims = |rid: &str| AssertionClaims {
        jti: format!("jti-{rid}"),
        chb: binding.clone(),
        ..AssertionClaims::official(
            "jinan",
            "qingdao",
            "hrss",
            "zhang.wei",
            rid,
            "tongban.crosscity.v1.CrossCityService",
            "Submit",
        )
    };
    let send = |assertion: Option<String>, rid: &str| {
        let mut req = Request::new(submit());
        req.set_timeout(Duration::from_secs(5));
        let md = req.metadata_mut();
        md.insert(
            "x-tongban-request-id",
            MetadataValue::try_from(rid).unwrap(),
        );
        md.insert(
            "x-tongban-target-city",
            MetadataValue::from_static("qingdao"),
        );
        if let Some(a) = assertion {
            md.insert(
                "x-tongban-caller-assertion",
                MetadataValue::try_from(a).unwrap(),
            );
        }
        req
    };

    let expired = AssertionClaims {
        iat: now() - 120,
        exp: now() - 60,
        ..claims("r-expired")
    };
    let too_long = AssertionClaims {
        exp: now() + 3600,
        ..claims("r-long")
    };
    let wrong_iss = AssertionClaims {
        iss: "zibo".into(),
        ..claims("r-iss")
    };
    let wrong_aud = AssertionClaims {
        aud: "jinan".into(),
        ..claims("r-aud")
    };
    let unbound = AssertionClaims {
        chb: String::new(),
        ..claims("r-unbound")
    };
    let other_connection = AssertionClaims {
        chb: "bm90LXRoaXMtY29ubmVjdGlvbg".into(),
        ..claims("r-conn")
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "assertion bound to no connection",
            Some(signer.sign(&unbound).unwrap()),
            "r-unbound",
        ),
        (
            "assertion for another connection",
            Some(signer.sign(&other_connection).unwrap()),
            "r-conn",
        ),
        ("missing assertion", None, "r-missing"),
        ("garbage assertion", Some("x.y.z".into()), "r-garbage"),
        (
            "forged assertion",
            Some(forger.sign(&claims("r-forged")).unwrap()),
            "r-forged",
        ),
        (
            "expired assertion",
            Some(signer.sign(&expired).unwrap()),
            "r-expired",
        ),
        (
            "assertion living too long",
            Some(signer.sign(&too_long).unwrap()),
            "r-long",
        ),
        (
            "assertion for another request",
            Some(signer.sign(&claims("r-other")).unwrap()),
            "r-this",
        ),
        (
            "assertion from another city",
            Some(signer.sign(&wrong_iss).unwrap()),
            "r-iss",
        ),
        (
            "assertion for another city",
            Some(signer.sign(&wrong_aud).unwrap()),
            "r-aud",
        ),
    ];
    for (name, a, rid) in cases {
        let e = client.submit(send(a, rid)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{name}: {}", e.message());
        assert_eq!(
            f.provider_calls("qingdao"),
            0,
            "{name} reached the provider"
        );
    }
    // A good assertion passes once; the same assertion again is a replay.
    let good = signer.sign(&claims("r-good")).unwrap();
    let ok = client
        .submit(send(Some(good.clone()), "r-good"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.origin_city, "jinan");
    assert_eq!(f.provider_calls("qingdao"), 1);
    let e = client.submit(send(Some(good), "r-good")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("replay"), "{}", e.message());
    assert_eq!(f.provider_calls("qingdao"), 1);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_per_peer_are_capped() {
    let limits = Limits {
        max_streams_per_peer: 1,
        ..loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    let mut slow = tongban_tests::SlowProvider::start().await;
    f.register("qingdao", "slow", &slow.url).await;
    // One call from jinan is held by the slow provider ...
    let mut held = f.req("jinan", submit(), Some("qingdao"), Duration::from_secs(10));
    held.metadata_mut()
        .insert("x-tongban-target-org", MetadataValue::from_static("slow"));
    let mut client = f.crosscity("jinan").await;
    let first = tokio::spawn(async move { client.submit(held).await });
    slow.seen.recv().await.unwrap();
    // ... so the next one from jinan finds no slot at qingdao.
    let mut next = f.req("jinan", submit(), Some("qingdao"), Duration::from_secs(5));
    next.metadata_mut()
        .insert("x-tongban-target-org", MetadataValue::from_static("hrss"));
    let e = f.crosscity("jinan").await.submit(next).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max_streams_per_peer"),
        "{}",
        e.message()
    );
    assert_eq!(f.provider_calls("qingdao"), 0);
    // Released, the slot is free again.
    slow.release();
    let _ = first.await.unwrap();
    let mut again = f.req("jinan", submit(), Some("qingdao"), Duration::from_secs(5));
    again
        .metadata_mut()
        .insert("x-tongban-target-org", MetadataValue::from_static("hrss"));
    f.crosscity("jinan").await.submit(again).await.unwrap();
    assert_eq!(f.provider_calls("qingdao"), 1);
    slow.stop().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_edit_applies_without_restart() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    let qd = f.fed.city("qingdao").unwrap();
    let mut changes = qd.node().unwrap().policy_changes();
    changes.borrow_and_update();
    // The operator closes Qingdao to everyone by editing the file; the watcher installs it.
    std::fs::write(&qd.config.policy_file, "# closed\n").unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    let e = f
        .submit("jinan", Some("qingdao"), "JQ-03")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("deny by default"), "{}", e.message());
    assert_eq!(f.provider_calls("qingdao"), 1);
    f.shutdown().await;
}
