//! Every change of a node's state is a record in its chain, with the principal who made it:
//! the node started (with its catalog and policy, their digests), consents granted and
//! revoked (in the citizen's access log too), registrations added, changed and withdrawn,
//! the policy reloaded, the node stopped. And an Audit read that answers before the index
//! caught up says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sha2::Digest as _;
use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::dev_token_with_roles;
use tongban_gateway::audit::index::Filter;
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::{AccessLogRequest, AuditRecord, ChangeKind, QueryRequest, Side};
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{
    RegisterServiceRequest, ServiceRegistration, WithdrawServiceRequest,
};
use tongban_tests::{authorize, Fed};
use tonic::Request;

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    authorize(&mut r, token);
    r
}

fn kind(r: &AuditRecord) -> ChangeKind {
    r.state_change
        .as_ref()
        .and_then(|c| ChangeKind::try_from(c.kind).ok())
        .unwrap_or(ChangeKind::Unspecified)
}

/// `city`'s state-change records, oldest first.
async fn changes(f: &Fed, city: &str) -> Vec<AuditRecord> {
    let node = f.fed.city(city).unwrap().node().unwrap();
    let (mut records, _) = node
        .auditor()
        .query(&Filter {
            limit: 10_000,
            ..Default::default()
        })
        .await;
    records.retain(|r| r.side == Side::Node as i32);
    records.sort_by_key(|r| r.seq);
    records
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_is_a_record_with_who_made_it() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let jinan = f.fed.city("jinan").unwrap().node().unwrap();

    // Started: the node, its catalog and its policy, before anything else, by the node.
    let start = changes(&f, "jinan").await;
    let kinds: Vec<ChangeKind> = start.iter().take(3).map(kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::NodeStarted,
            ChangeKind::CatalogLoaded,
            ChangeKind::PolicyLoaded
        ]
    );
    assert_eq!(start[0].seq, 1, "the start is the chain's first record");
    for r in &start[..3] {
        assert_eq!(
            (r.caller_kind.as_str(), r.caller_city.as_str()),
            ("system", "jinan")
        );
    }
    let catalog = start[1].state_change.clone().unwrap();
    let embedded = tongban_catalog::Catalog::embedded().unwrap();
    assert_eq!(catalog.version, embedded.version);
    assert_eq!(catalog.digest, embedded.digest);
    assert_eq!(catalog.digest.len(), 64);
    let policy = start[2].state_change.clone().unwrap();
    let policy_path = std::path::PathBuf::from(&policy.object);
    let policy_text = std::fs::read(&policy_path).unwrap();
    assert_eq!(
        policy.digest,
        sha256_hex(&policy_text),
        "the digest of the file"
    );

    // Registrations: added, changed, withdrawn, each by the organisation's official. (The
    // test federation registered its providers already: the records from here on.)
    let mark = jinan.auditor().head().seq;
    let token = f.fed.token("jinan", "gjj").unwrap();
    let mut registry = RegistryClient::new(f.channel("jinan").await);
    let registration = |endpoint: &str| RegisterServiceRequest {
        registration: Some(ServiceRegistration {
            organisation: "gjj".into(),
            service: "tongban.crosscity.v1.CrossCityService".into(),
            endpoints: vec![endpoint.to_string()],
            catalog_codes: vec!["JQ-07".into()],
            ..Default::default()
        }),
    };
    for endpoint in ["http://127.0.0.1:9", "http://127.0.0.1:10"] {
        registry
            .register_service(with_token(registration(endpoint), &token))
            .await
            .unwrap();
    }
    registry
        .withdraw_service(with_token(
            WithdrawServiceRequest {
                organisation: "gjj".into(),
                service: "tongban.crosscity.v1.CrossCityService".into(),
            },
            &token,
        ))
        .await
        .unwrap();

    // A consent granted and revoked through the consent portal.
    let subject = demo_subject("37010219850312002");
    let (consent_id, _) = f
        .fed
        .grant_consent_for(
            "tongban.crosscity.v1.CrossCityService",
            "jinan",
            &subject,
            "qingdao/hrss",
            ("jinan", "case-handling"),
            &["JQ-03"],
        )
        .await
        .unwrap();
    f.fed
        .revoke_consent("jinan", &subject, &consent_id)
        .await
        .unwrap();

    // The policy file edited and reloaded: its new digest.
    let edited = format!(
        "{}\n[[rules]]\nname = \"nobody from nowhere\"\neffect = \"deny\"\ncallers = [\"nowhere/*\"]\nservices = [\"tongban.*\"]\npurposes = [\"case-handling\"]\n",
        String::from_utf8(policy_text).unwrap()
    );
    std::fs::write(&policy_path, &edited).unwrap();
    jinan.reload_policy().unwrap();

    let mut all = Vec::new();
    for _ in 0..100 {
        all = changes(&f, "jinan").await;
        if all
            .iter()
            .any(|r| kind(r) == ChangeKind::PolicyLoaded && r.seq > mark)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let later: Vec<&AuditRecord> = all.iter().filter(|r| r.seq > mark).collect();
    let kinds: Vec<ChangeKind> = later.iter().map(|r| kind(r)).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::RegistrationAdded,
            ChangeKind::RegistrationChanged,
            ChangeKind::RegistrationWithdrawn,
            ChangeKind::ConsentGranted,
            ChangeKind::ConsentRevoked,
            ChangeKind::PolicyLoaded,
        ],
        "{later:#?}"
    );
    for r in &later[..3] {
        let c = r.state_change.as_ref().unwrap();
        assert_eq!(c.object, "gjj/tongban.crosscity.v1.CrossCityService");
        assert_eq!(
            (r.caller_city.as_str(), r.caller_org.as_str()),
            ("jinan", "gjj")
        );
        assert_eq!(r.caller_kind, "official");
        assert!(!c.version.is_empty(), "the catalog version it made");
    }
    assert!(later[1]
        .state_change
        .as_ref()
        .unwrap()
        .detail
        .contains("http://127.0.0.1:10"));
    for r in &later[3..5] {
        assert_eq!(r.consent_id, consent_id);
        assert_eq!(r.caller_org, "portal");
        assert_eq!(r.catalog_code, "JQ-03");
        assert_eq!(r.purpose, "case-handling");
        assert!(!r.subject_pseudonym.is_empty());
        assert!(
            !format!("{r:?}").contains(&subject),
            "no clear resident id in the record"
        );
    }
    assert_eq!(
        later[5].state_change.as_ref().unwrap().digest,
        sha256_hex(edited.as_bytes())
    );

    // The chain verifies with them, and operators read them through the Audit API.
    let report = jinan.auditor().verify().unwrap();
    assert!(report.first_bad.is_none(), "{report:?}");
    let op = dev_token_with_roles(&f.fed.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut audit = AuditClient::new(f.channel("jinan").await);
    let q = audit
        .query(with_token(
            QueryRequest {
                service: "tongban.crosscity.v1.CrossCityService".into(),
                limit: 100,
                ..Default::default()
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(q.coverage.unwrap().complete);
    assert!(q
        .records
        .iter()
        .any(|r| kind(r) == ChangeKind::RegistrationWithdrawn));

    // The citizen sees their own consent events in their access log.
    let citizen = f
        .fed
        .idp("jinan")
        .unwrap()
        .issue(
            "portal",
            &["citizen".into()],
            Duration::from_secs(600),
            &subject,
        )
        .unwrap();
    let log = audit
        .access_log(with_token(
            AccessLogRequest {
                subject: subject.clone(),
                limit: 50,
                ..Default::default()
            },
            &citizen,
        ))
        .await
        .unwrap()
        .into_inner();
    let mine: Vec<(&str, &str)> = log
        .accesses
        .iter()
        .filter(|a| !a.change.is_empty())
        .map(|a| (a.change.as_str(), a.consent_id.as_str()))
        .collect();
    assert_eq!(
        mine,
        [
            ("consent_revoked", consent_id.as_str()),
            ("consent_granted", consent_id.as_str())
        ]
    );

    // Stopped: the last record of the chain, by the node.
    let audit_dir = f.fed.root.join("jinan").join("data").join("audit");
    f.fed.shutdown().await;
    let mut last = None;
    tongban_gateway::audit::log::verify_dir(&audit_dir, &[], |r| {
        last = r.entry.record.clone();
    })
    .unwrap();
    let last = last.unwrap();
    assert_eq!(kind(&last), ChangeKind::NodeStopped, "{last:?}");
    assert_eq!(last.caller_kind, "system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_before_the_index_caught_up_says_so() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let jinan = f.fed.city("jinan").unwrap().node().unwrap();
    let op = dev_token_with_roles(&f.fed.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut audit = AuditClient::new(f.channel("jinan").await);
    let query = || {
        with_token(
            QueryRequest {
                limit: 1000,
                ..Default::default()
            },
            &op,
        )
    };
    let before = audit.query(query()).await.unwrap().into_inner();
    let cov = before.coverage.unwrap();
    assert!(cov.complete, "{cov:?}");
    assert_eq!(cov.indexed_seq, cov.head_seq);

    // The index held: an exchange is committed (durable, answered) but not indexed yet.
    jinan.auditor().hold_index(true);
    let msg = tongban_proto::crosscity::v1::SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    f.crosscity("jinan").await.submit(req).await.unwrap();
    let held = audit.query(query()).await.unwrap().into_inner();
    let cov = held.coverage.unwrap();
    assert!(!cov.complete, "{cov:?}");
    assert!(cov.indexed_seq < cov.head_seq, "{cov:?}");
    assert_eq!(held.records.len(), before.records.len());

    // Released: the answer is whole again, and holds the exchange.
    jinan.auditor().hold_index(false);
    let after = audit.query(query()).await.unwrap().into_inner();
    assert!(after.coverage.unwrap().complete);
    assert_eq!(after.records.len(), before.records.len() + 1);
    f.fed.shutdown().await;
}
