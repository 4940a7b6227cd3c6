//! Consents: the Consent API on the subject's home node, and the providing node's checks on
//! calls to a personal-data service. Every refusal asserts its code and that the provider
//! received nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::{dev_token_with_roles, CROSSCITY_SERVICE};
use tongban_gateway::consent::{subject_digest, ConsentClaims};
use tongban_gateway::trust::{NodeIdentity, TrustBundle};
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::{GrantRequest, ListRequest, RevokeRequest};
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{authorize, Fed};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn personal_data_federation() -> Fed {
    let f = Box::pin(Fed::start(&["jinan", "qingdao"])).await;
    // Qingdao's provider now handles personal data: calls need a consent.
    f.fed
        .register_crosscity("qingdao", "hrss", &["JQ-03"], true)
        .await
        .unwrap();
    f
}

/// jinan/hrss → qingdao, for case handling, about `subject` with `consent`.
async fn call(f: &Fed, subject: Option<&str>, consent: Option<&str>) -> Result<(), tonic::Status> {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    if let Some(s) = subject {
        req.metadata_mut()
            .insert("x-tongban-subject", MetadataValue::try_from(s).unwrap());
    }
    if let Some(c) = consent {
        req.metadata_mut()
            .insert("x-tongban-consent", MetadataValue::try_from(c).unwrap());
    }
    f.crosscity("jinan").await.submit(req).await.map(|_| ())
}

/// A consent token signed with `city`'s node key (as if that node had issued it).
fn forge(f: &Fed, signer_city: &str, claims: &ConsentClaims) -> String {
    let files = f.fed.certs.city(signer_city).unwrap();
    let bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    let id = NodeIdentity::load(signer_city, &files.node_cert, &files.node_key, &bundle).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(id.key_pkcs8()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providing_node_checks_every_part_of_the_consent() {
    let f = personal_data_federation().await;
    let citizen = demo_subject("37010219850312002");
    let other_citizen = demo_subject("37010219700101005");
    let grant = |grantee: &'static str, target: &'static str, purpose: &'static str| {
        let citizen = citizen.clone();
        let f = &f;
        async move {
            f.fed
                .grant_consent("jinan", &citizen, grantee, target, purpose, &[])
                .await
                .unwrap()
        }
    };
    let (good_id, good) = grant("jinan/hrss", "qingdao", "case-handling").await;
    let (_, other_grantee) = grant("jinan/ybj", "qingdao", "case-handling").await;
    let (_, other_purpose) = grant("jinan/hrss", "qingdao", "medical-treatment").await;
    let (_, other_city) = grant("jinan/hrss", "jinan", "case-handling").await;
    // A consent for another service, through the API directly.
    let mut consent_api = ConsentClient::new(f.channel("jinan").await);
    let mut req = Request::new(GrantRequest {
        subject: citizen.clone(),
        grantee: "jinan/hrss".into(),
        target_city: "qingdao".into(),
        service: "tongban.medical.v1.ResultRegistry".into(),
        purpose: "case-handling".into(),
        expires_at_ms: now_ms() + 3_600_000,
        items: Vec::new(),
    });
    authorize(
        &mut req,
        &dev_token_with_roles(&f.fed.certs, "jinan", "portal", &["consent-portal"]).unwrap(),
    );
    let other_service = consent_api.grant(req).await.unwrap().into_inner().token;

    let now = now_ms() as u64 / 1000;
    let claims = |id: &str, iss: &str, exp: u64| ConsentClaims {
        iss: iss.into(),
        jti: id.into(),
        sbj: subject_digest(id, &citizen),
        gnt: "jinan/hrss".into(),
        tgt: "qingdao".into(),
        svc: CROSSCITY_SERVICE.into(),
        itm: Vec::new(),
        pur: "case-handling".into(),
        iat: now - 7200,
        exp,
    };
    let expired = forge(&f, "jinan", &claims("c-expired", "jinan", now - 3600));
    let forged = forge(&f, "qingdao", &claims("c-forged", "jinan", now + 3600));
    let unknown_issuer = forge(&f, "jinan", &claims("c-zibo", "zibo", now + 3600));
    // Sanity: the same hand-made claims signed by the right node do pass.
    let handmade = forge(&f, "jinan", &claims("c-handmade", "jinan", now + 3600));

    let cases: Vec<(&str, Option<&str>, Option<&str>, Code)> = vec![
        (
            "missing consent",
            Some(&citizen),
            None,
            Code::PermissionDenied,
        ),
        ("missing subject", None, Some(&good), Code::InvalidArgument),
        (
            "another subject",
            Some(&other_citizen),
            Some(&good),
            Code::PermissionDenied,
        ),
        (
            "another grantee",
            Some(&citizen),
            Some(&other_grantee),
            Code::PermissionDenied,
        ),
        (
            "another purpose",
            Some(&citizen),
            Some(&other_purpose),
            Code::PermissionDenied,
        ),
        (
            "another target city",
            Some(&citizen),
            Some(&other_city),
            Code::PermissionDenied,
        ),
        (
            "another service",
            Some(&citizen),
            Some(&other_service),
            Code::PermissionDenied,
        ),
        (
            "expired consent",
            Some(&citizen),
            Some(&expired),
            Code::PermissionDenied,
        ),
        (
            "forged consent",
            Some(&citizen),
            Some(&forged),
            Code::PermissionDenied,
        ),
        (
            "unknown issuer",
            Some(&citizen),
            Some(&unknown_issuer),
            Code::PermissionDenied,
        ),
        (
            "garbage consent",
            Some(&citizen),
            Some("a.b.c"),
            Code::PermissionDenied,
        ),
    ];
    for (name, subject, consent, code) in cases {
        let e = call(&f, subject, consent).await.unwrap_err();
        assert_eq!(e.code(), code, "{name}: {}", e.message());
        assert_eq!(
            f.provider_calls("qingdao"),
            0,
            "{name} reached the provider"
        );
    }
    call(&f, Some(&citizen), Some(&handmade)).await.unwrap();
    call(&f, Some(&citizen), Some(&good)).await.unwrap();
    assert_eq!(f.provider_calls("qingdao"), 2);

    // Revocation on the home node reaches the providing node within 5 s.
    f.fed
        .revoke_consent("jinan", &citizen, &good_id)
        .await
        .unwrap();
    let t = Instant::now();
    let qingdao = f.fed.city("qingdao").unwrap().node().unwrap();
    assert!(
        qingdao
            .wait_for_catalog(Duration::from_secs(5), |s| s
                .consent_revoked("jinan", &good_id))
            .await,
        "revocation did not reach qingdao within 5 s"
    );
    eprintln!("revocation reached qingdao after {:?}", t.elapsed());
    let e = call(&f, Some(&citizen), Some(&good)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("revoked"), "{}", e.message());
    assert_eq!(f.provider_calls("qingdao"), 2);

    // The subject id never reaches the disk in clear.
    for city in ["jinan", "qingdao"] {
        let dir = f.fed.city(city).unwrap().config.data_dir.clone();
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap();
            let found = bytes
                .windows(citizen.len())
                .any(|w| w == citizen.as_bytes());
            assert!(!found, "clear subject id in {}", entry.display());
        }
    }
    f.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_portal_or_the_citizen_manages_consents() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let citizen = demo_subject("37010219850312002");
    let other = demo_subject("37010219700101005");
    let mut api = ConsentClient::new(f.channel("jinan").await);
    let grant = |subject: &str, expires_at_ms: i64| GrantRequest {
        subject: subject.into(),
        grantee: "qingdao/hrss".into(),
        target_city: "jinan".into(),
        service: CROSSCITY_SERVICE.into(),
        purpose: "case-handling".into(),
        expires_at_ms,
        items: Vec::new(),
    };
    let later = now_ms() + 3_600_000;
    let with = |msg: GrantRequest, token: Option<String>| {
        let mut r = Request::new(msg);
        if let Some(t) = token {
            authorize(&mut r, &t);
        }
        r
    };
    let certs = &f.fed.certs;
    let portal = dev_token_with_roles(certs, "jinan", "portal", &["consent-portal"]).unwrap();
    let hrss = dev_token_with_roles(certs, "jinan", "hrss", &[]).unwrap();
    let idp = f.fed.idp("jinan").unwrap();
    let citizen_token = idp
        .issue(
            "citizens",
            &["citizen".to_string()],
            Duration::from_secs(600),
            &citizen,
        )
        .unwrap();

    let e = api
        .grant(with(grant(&citizen, later), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = api
        .grant(with(grant(&citizen, later), Some(hrss)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = api
        .grant(with(grant(&other, later), Some(citizen_token.clone())))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "a citizen acts only for itself"
    );
    let e = api
        .grant(with(grant("12345", later), Some(portal.clone())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = api
        .grant(with(grant(&citizen, now_ms() - 1), Some(portal.clone())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mine = api
        .grant(with(grant(&citizen, later), Some(citizen_token.clone())))
        .await
        .unwrap()
        .into_inner();
    let id = mine.consent.unwrap().id;
    let list = |subject: &str, token: &str| {
        let mut r = Request::new(ListRequest {
            subject: subject.into(),
        });
        authorize(&mut r, token);
        r
    };
    let listed = api
        .list(list(&citizen, &citizen_token))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(!listed[0].revoked);
    let e = api.list(list(&other, &citizen_token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(api
        .list(list(&other, &portal))
        .await
        .unwrap()
        .into_inner()
        .consents
        .is_empty());

    let revoke = |id: &str, token: &str| {
        let mut r = Request::new(RevokeRequest {
            subject: citizen.clone(),
            id: id.into(),
        });
        authorize(&mut r, token);
        r
    };
    let e = api.revoke(revoke("no-such-id", &portal)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    api.revoke(revoke(&id, &citizen_token)).await.unwrap();
    let listed = api
        .list(list(&citizen, &portal))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert!(listed[0].revoked);
    f.shutdown().await;
}
