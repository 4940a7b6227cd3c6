#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A citizen signed in with their own token (role `citizen`, `sub` = their resident id)
//! calls a personal-data service about themselves across the boundary without a consent:
//! it is their own data. About anyone else, the consent rules hold as for any caller.

use std::time::Duration;

use tongban_devkit::demo::demo_subject;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{authorize, request_id_of, Fed};
use tonic::metadata::MetadataValue;

fn citizen_call(token: &str, subject: &str) -> tonic::Request<SubmitRequest> {
    let mut req = tongban_tests::case_handling_submit("qingdao", token);
    let md = req.metadata_mut();
    md.insert("x-tongban-subject", subject.parse().unwrap());
    // JQ-03 handles personal data (the catalog says so).
    md.insert(
        "x-tongban-catalog-code",
        MetadataValue::from_static("JQ-03"),
    );
    req
}

/// A token of Jinan's identity provider for the citizen `id`, signed in at the portal.
fn citizen_token(f: &Fed, id: &str) -> String {
    f.fed
        .idp("jinan")
        .unwrap()
        .issue("portal", &["citizen".into()], Duration::from_secs(600), id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_needs_no_consent_for_their_own_data_only() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let me = demo_subject("37010219850312002");
    let other = demo_subject("37020219900101003");
    let token = citizen_token(&f, &me);
    // Their own application, in Qingdao: no consent needed.
    let mut client = f.crosscity("jinan").await;
    let ok = client.submit(citizen_call(&token, &me)).await.unwrap();
    let rid = request_id_of(&ok);
    assert_eq!(ok.into_inner().provider_city, "qingdao");
    // Both audits say why no consent was shown.
    for city in ["jinan", "qingdao"] {
        let node = f.fed.city(city).unwrap().node().unwrap();
        let records = node.auditor().records_for_request(&rid).await;
        assert_eq!(records.len(), 1, "{city}");
        assert_eq!(records[0].consent_id, "own-data", "{city}");
        assert_eq!(records[0].caller_org, "portal", "{city}");
    }
    // Someone else's: the consent rules hold (none was granted).
    let e = client
        .submit(citizen_call(&token, &other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("consent"), "{}", e.message());
    // A system of the city (not the citizen) about the citizen: a consent is needed too.
    let hrss = f.fed.token("jinan", "hrss").unwrap();
    let e = client.submit(citizen_call(&hrss, &me)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    f.shutdown().await;
}

/// A citizen's access log covers both cities: an access recorded only by Qingdao's node (a
/// Qingdao system calling Qingdao's own service about a Jinan citizen, with the citizen's
/// consent) shows up at Jinan, asked of Qingdao with Jinan's assertion; a cross-city
/// exchange, recorded by both nodes, shows once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizens_access_log_covers_both_cities() {
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::AccessLogRequest;
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let me = demo_subject("37010219850312002");
    // Qingdao's hrss, in Qingdao, about the Jinan citizen, with a consent from Jinan.
    let (_, consent) = f
        .fed
        .grant_consent(
            "jinan",
            &me,
            "qingdao/hrss",
            "qingdao",
            "case-handling",
            &["JQ-03"],
        )
        .await
        .unwrap();
    let qd = f.fed.token("qingdao", "hrss").unwrap();
    let mut local = citizen_call(&qd, &me);
    local
        .metadata_mut()
        .insert("x-tongban-consent", consent.parse().unwrap());
    let local_rid = request_id_of(&f.crosscity("qingdao").await.submit(local).await.unwrap());
    // The citizen's own cross-city call (recorded by both nodes).
    let token = citizen_token(&f, &me);
    let cross_rid = request_id_of(
        &f.crosscity("jinan")
            .await
            .submit(citizen_call(&token, &me))
            .await
            .unwrap(),
    );

    let mut req = tonic::Request::new(AccessLogRequest {
        subject: me.clone(),
        limit: 50,
        ..Default::default()
    });
    authorize(&mut req, &token);
    let log = AuditClient::new(f.channel("jinan").await)
        .access_log(req)
        .await
        .unwrap()
        .into_inner();
    assert!(log.unreachable.is_empty(), "{:?}", log.unreachable);
    let local: Vec<_> = log
        .accesses
        .iter()
        .filter(|a| a.request_id == local_rid)
        .collect();
    assert_eq!(local.len(), 1, "{log:?}");
    assert_eq!(local[0].node_city, "qingdao");
    assert_eq!(local[0].caller_city, "qingdao");
    assert!(!local[0].consent_id.is_empty());
    let cross = log
        .accesses
        .iter()
        .filter(|a| a.request_id == cross_rid)
        .count();
    assert_eq!(cross, 1, "a cross-city exchange shows once: {log:?}");

    // Another citizen's token cannot read this log, at home or through the peers.
    let other = citizen_token(&f, &demo_subject("37010219920704013"));
    let mut req = tonic::Request::new(AccessLogRequest {
        subject: me.clone(),
        limit: 50,
        ..Default::default()
    });
    authorize(&mut req, &other);
    let e = AuditClient::new(f.channel("jinan").await)
        .access_log(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    f.shutdown().await;
}
