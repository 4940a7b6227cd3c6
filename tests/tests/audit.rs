//! The audit of a running federation: records on both sides, receipts, the Audit API
//! (operators and citizens) and checkpoints between nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::{dev_token_with_roles, CROSSCITY_SERVICE};
use tongban_gateway::audit::receipt;
use tongban_gateway::trust::{NodeIdentity, TrustBundle};
use tongban_gateway::upstream::{Endpoint, EndpointChannel};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::{
    AccessLogRequest, Checkpoint, GetRequest, QueryRequest, Side, VerifyRequest,
};
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_proto::federation::v1::federation_client::FederationClient;
use tongban_proto::federation::v1::GetCheckpointRequest;
use tongban_tests::{authorize, Fed};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn operator(f: &Fed, city: &str) -> String {
    dev_token_with_roles(&f.fed.certs, city, "ops", &["audit-operator"]).unwrap()
}

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    authorize(&mut r, token);
    r
}

/// jinan/hrss → qingdao Submit; returns the request id.
async fn submit(f: &Fed, subject: Option<(&str, &str)>) -> String {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    if let Some((s, consent)) = subject {
        req.metadata_mut()
            .insert("x-tongban-subject", MetadataValue::try_from(s).unwrap());
        req.metadata_mut().insert(
            "x-tongban-consent",
            MetadataValue::try_from(consent).unwrap(),
        );
        req.metadata_mut().insert(
            "x-tongban-catalog-code",
            MetadataValue::from_static("JQ-03"),
        );
    }
    let resp = f.crosscity("jinan").await.submit(req).await.unwrap();
    resp.metadata()
        .get("x-tongban-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

fn identity(f: &Fed, city: &str) -> NodeIdentity {
    let files = f.fed.certs.city(city).unwrap();
    let bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    NodeIdentity::load(city, &files.node_cert, &files.node_key, &bundle).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_record_the_exchange_and_receipts_verify() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let rid = submit(&f, None).await;
    let jinan = f
        .fed
        .city("jinan")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .clone();
    let qingdao = f
        .fed
        .city("qingdao")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .clone();

    // Both records exist as soon as the caller has its answer (durable before release).
    let home = jinan.records_for_request(&rid).await;
    let provider = qingdao.records_for_request(&rid).await;
    assert_eq!((home.len(), provider.len()), (1, 1));
    let (home, provider) = (&home[0], &provider[0]);
    assert_eq!(home.side, Side::Home as i32);
    assert_eq!(provider.side, Side::Provider as i32);
    for r in [home, provider] {
        assert_eq!(r.caller_city, "jinan");
        assert_eq!(r.caller_org, "hrss");
        assert_eq!(r.target_city, "qingdao");
        assert_eq!(r.service, CROSSCITY_SERVICE);
        assert_eq!(r.method, "Submit");
        assert_eq!(r.purpose, "case-handling");
        assert_eq!(r.grpc_status, 0);
        assert_eq!(r.request_digest.len(), 32);
        assert!(r.request_bytes > 0 && r.response_bytes > 0);
    }
    assert_eq!(
        home.request_digest, provider.request_digest,
        "same request bytes on both sides"
    );
    assert_eq!(home.response_digest, provider.response_digest);

    // The home side kept the provider's receipt, and it verifies with Qingdao's node key.
    assert!(home.receipt_verified);
    let q_key = tongban_gateway::trust::public_key_of(&identity(&f, "qingdao").chain[0]).unwrap();
    let claims = receipt::verify(&home.receipt, "qingdao", &q_key).unwrap();
    assert_eq!(claims.rid, rid);
    assert_eq!(claims.seq, provider.seq);
    assert_eq!(claims.rsd, hex::encode(&provider.response_digest));
    // A receipt signed by anyone else (here Jinan's own key) does not verify as Qingdao's.
    let forged = receipt::sign(
        &jsonwebtoken::EncodingKey::from_ed_der(identity(&f, "jinan").key_pkcs8()),
        &claims,
    )
    .unwrap();
    assert!(receipt::verify(&forged, "qingdao", &q_key).is_err());
    // ... nor one whose claims were edited.
    let mut parts: Vec<String> = home.receipt.split('.').map(String::from).collect();
    let mut edited = claims.clone();
    edited.st = 7;
    use base64::Engine as _;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&edited).unwrap());
    assert!(receipt::verify(&parts.join("."), "qingdao", &q_key).is_err());

    // An operator of Jinan sees both sides through the Audit API.
    let mut api = AuditClient::new(f.channel("jinan").await);
    let got = api
        .get(with_token(
            GetRequest {
                request_id: rid.clone(),
            },
            &operator(&f, "jinan"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.local.len(), 1);
    assert_eq!(got.peer.len(), 1, "peer error: {}", got.peer_error);
    assert_eq!(got.peer[0].node_city, "qingdao");

    // Refusals are audited too, with the status the caller got.
    let e = f
        .submit("jinan", Some("beijing"), "JQ-03")
        .await
        .unwrap_err();
    let rid = e
        .metadata()
        .get("x-tongban-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    let refused = jinan.records_for_request(rid).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].grpc_status, Code::NotFound as i32);
    assert_eq!(refused[0].target_city, "beijing");

    let v = api
        .verify(with_token(VerifyRequest::default(), &operator(&f, "jinan")))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{}", v.reason);
    assert!(v.records >= 2);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citizens_see_who_accessed_their_data_and_only_theirs() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    f.fed
        .register_crosscity("qingdao", "hrss", &["JQ-03"], true)
        .await
        .unwrap();
    let citizen = demo_subject("37010219850312002");
    let other = demo_subject("37010219700101005");
    let (_, consent) = f
        .fed
        .grant_consent(
            "jinan",
            &citizen,
            "jinan/hrss",
            "qingdao",
            "case-handling",
            &["JQ-03"],
        )
        .await
        .unwrap();
    let rid = submit(&f, Some((&citizen, &consent))).await;

    let idp = f.fed.idp("jinan").unwrap();
    let token = |sub: &str| {
        idp.issue(
            "citizens",
            &["citizen".to_string()],
            Duration::from_secs(600),
            sub,
        )
        .unwrap()
    };
    let mut api = AuditClient::new(f.channel("jinan").await);
    let log = api
        .access_log(with_token(
            AccessLogRequest {
                subject: citizen.clone(),
                limit: 10,
                ..Default::default()
            },
            &token(&citizen),
        ))
        .await
        .unwrap()
        .into_inner()
        .accesses;
    // One access, and the grant of the consent it was checked against (the citizen's own
    // consent events are in their log too).
    let changes: Vec<(&str, &str)> = log
        .iter()
        .filter(|a| !a.change.is_empty())
        .map(|a| (a.change.as_str(), a.consent_id.as_str()))
        .collect();
    assert_eq!(changes.len(), 1, "{log:?}");
    assert_eq!(changes[0].0, "consent_granted");
    let granted = changes[0].1.to_string();
    let log: Vec<_> = log.into_iter().filter(|a| a.change.is_empty()).collect();
    assert_eq!(log.len(), 1);
    let a = &log[0];
    assert_eq!(
        a.consent_id, granted,
        "the access was checked against that consent"
    );
    assert_eq!(
        (a.caller_city.as_str(), a.caller_org.as_str()),
        ("jinan", "hrss")
    );
    assert_eq!(a.target_city, "qingdao");
    assert_eq!(a.purpose, "case-handling");
    assert_eq!(a.catalog_code, "JQ-03");
    assert_eq!(a.request_id, rid);

    // Another citizen's log is not theirs to read; an operator may.
    let e = api
        .access_log(with_token(
            AccessLogRequest {
                subject: other.clone(),
                limit: 10,
                ..Default::default()
            },
            &token(&citizen),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let theirs = api
        .access_log(with_token(
            AccessLogRequest {
                subject: other,
                limit: 10,
                ..Default::default()
            },
            &operator(&f, "jinan"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.accesses.is_empty());
    // The stored record holds a pseudonym, never the clear id.
    let rec = &f
        .fed
        .city("jinan")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .records_for_request(&rid)
        .await[0];
    assert_eq!(rec.subject_pseudonym.len(), 32);
    assert!(!rec
        .encode_to_vec()
        .windows(citizen.len())
        .any(|w| w == citizen.as_bytes()));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_query_by_service_and_time_with_pages() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let before = tongban_gateway::audit::now_ms();
    for _ in 0..5 {
        submit(&f, None).await;
    }
    let after = tongban_gateway::audit::now_ms();
    let mut api = AuditClient::new(f.channel("jinan").await);
    let op = operator(&f, "jinan");
    let q = |page_token: String, service: &str| QueryRequest {
        from_ms: before,
        to_ms: after,
        caller: String::new(),
        service: service.into(),
        page_token,
        limit: 2,
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .query(with_token(q(token.clone(), CROSSCITY_SERVICE), &op))
            .await
            .unwrap()
            .into_inner();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.into_iter().map(|r| r.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "no record twice across pages");
    let none = api
        .query(with_token(
            q(String::new(), "tongban.other.v1.Nothing"),
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.records.is_empty());
    // By caller.
    let mut by_caller = q(String::new(), "");
    by_caller.caller = "jinan/hrss".into();
    by_caller.limit = 100;
    let r = api
        .query(with_token(by_caller, &op))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.records.len(), 5);
    // Verify over a range: the walk starts at seq 1, the report covers 2..=3.
    let v = api
        .verify(with_token(
            VerifyRequest {
                from_seq: 2,
                to_seq: 3,
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{}", v.reason);
    assert_eq!((v.records, v.head_seq), (2, 3));
    let e = api
        .verify(with_token(
            VerifyRequest {
                from_seq: 3,
                to_seq: 2,
            },
            &op,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Not an operator: refused.
    let e = api
        .query(with_token(
            q(String::new(), ""),
            &f.fed.token("jinan", "hrss").unwrap(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = api
        .query(Request::new(q(String::new(), "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_hold_each_others_signed_checkpoints_and_see_a_rewrite() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    for _ in 0..3 {
        submit(&f, None).await;
    }
    // As Jinan's node, over the mTLS channel, ask Qingdao for its checkpoint.
    let jinan_id = identity(&f, "jinan");
    let bundle = TrustBundle::load(&f.fed.certs.trust_bundle).unwrap();
    let qd = f.fed.city("qingdao").unwrap();
    let ep = Endpoint::peer(
        "qingdao",
        &[qd.config.peer_addr.to_string()],
        jinan_id.peer_client_config(&bundle, "qingdao").unwrap(),
        bundle.node_name_of("qingdao").unwrap(),
    )
    .unwrap();
    let mut fed_client =
        FederationClient::new(EndpointChannel::new(Arc::new(ep), Duration::from_secs(2)));
    let signed = fed_client
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let q_cert = identity(&f, "qingdao").chain[0].clone();
    tongban_gateway::trust::verify_signature(&q_cert, &signed.checkpoint, &signed.signature)
        .unwrap();
    let cp = Checkpoint::decode(signed.checkpoint.as_slice()).unwrap();
    let q_auditor = qd.node().unwrap().auditor().clone();
    assert_eq!(cp.city, "qingdao");
    assert_eq!(cp.seq, q_auditor.head().seq);
    assert_eq!(cp.head_hash, q_auditor.head().hash.to_vec());

    // Jinan keeps it; a later checkpoint for the same seq with another hash (a rewritten
    // history) is refused and kept as evidence.
    let j_auditor = f
        .fed
        .city("jinan")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .clone();
    // (Jinan may hold an older one of qingdao's already, fetched when it connected: then the
    // new one comes with its consistency proof.)
    let first_proof = match j_auditor.consistency_needed("qingdao", &signed) {
        None => None,
        Some((from_seq, to_seq)) => Some(
            fed_client
                .prove_consistency(tongban_proto::audit::v1::ConsistencyRequest {
                    from_seq,
                    to_seq,
                })
                .await
                .unwrap()
                .into_inner()
                .hashes,
        ),
    };
    j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &signed, first_proof.as_deref())
        .await
        .unwrap();
    let mut rewritten = cp.clone();
    rewritten.head_hash = vec![7; 32];
    let bytes = rewritten.encode_to_vec();
    let q_id = identity(&f, "qingdao");
    let lie = tongban_proto::audit::v1::SignedCheckpoint {
        signature: q_id.sign(&bytes),
        checkpoint: bytes,
        timestamp_token: Vec::new(),
    };
    let e = j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &lie, None)
        .await
        .unwrap_err();
    assert!(e.contains("rewritten"), "{e}");
    assert_eq!(j_auditor.conflicts(), 1);
    // A forged signature is refused outright.
    let mut forged = signed.clone();
    forged.signature[0] ^= 1;
    assert!(j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &forged, None)
        .await
        .is_err());

    // Qingdao's log grows; its newer checkpoint is kept only with a consistency proof from
    // the one held (RFC 6962), which qingdao gives over the federation channel.
    submit(&f, None).await;
    submit(&f, None).await;
    let newer = fed_client
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let newer_cp = Checkpoint::decode(newer.checkpoint.as_slice()).unwrap();
    assert!(newer_cp.seq > cp.seq);
    assert_eq!(newer_cp.tree_root.len(), 32);
    assert_eq!(
        j_auditor.consistency_needed("qingdao", &newer),
        Some((cp.seq, newer_cp.seq))
    );
    let e = j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &newer, None)
        .await
        .unwrap_err();
    assert!(e.contains("needs a consistency proof"), "{e}");
    let proof = fed_client
        .prove_consistency(tongban_proto::audit::v1::ConsistencyRequest {
            from_seq: cp.seq,
            to_seq: newer_cp.seq,
        })
        .await
        .unwrap()
        .into_inner();
    // A fork: qingdao's key signs a head of the same size over another history. Its
    // genuine proof does not lead there: refused, and kept as evidence.
    let mut fork = newer_cp.clone();
    fork.tree_root = vec![9; 32];
    let bytes = fork.encode_to_vec();
    let forked = tongban_proto::audit::v1::SignedCheckpoint {
        signature: q_id.sign(&bytes),
        checkpoint: bytes,
        timestamp_token: Vec::new(),
    };
    let e = j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &forked, Some(&proof.hashes))
        .await
        .unwrap_err();
    assert!(e.contains("forked"), "{e}");
    assert_eq!(j_auditor.conflicts(), 2);
    // The genuine one, with its proof: kept.
    j_auditor
        .store_peer_checkpoint("qingdao", &q_cert, &newer, Some(&proof.hashes))
        .await
        .unwrap();
    // Qingdao's own chain still verifies against its checkpoints.
    let report = q_auditor.verify().unwrap();
    assert_eq!(report.first_bad, None);
    f.shutdown().await;
}

/// Waits until `auditor` has a record of `rid` (appended in the background), or 5 s.
async fn wait_for_record(
    auditor: &tongban_gateway::audit::Auditor,
    rid: &str,
) -> Vec<tongban_proto::audit::v1::AuditRecord> {
    let mut heads = auditor.subscribe();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = auditor.records_for_request(rid).await;
            if !r.is_empty() {
                return r;
            }
            if heads.changed().await.is_err() {
                return r;
            }
        }
    })
    .await;
    found.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_caller_abandons_is_still_audited_on_both_nodes() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let mut slow = tongban_tests::SlowProvider::start().await;
    f.register("qingdao", "slow", &slow.url).await;
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    // The caller drops the call (its client resets the stream) while the provider works.
    let mut req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(30));
    let md = req.metadata_mut();
    md.insert("x-tongban-target-org", MetadataValue::from_static("slow"));
    md.insert(
        "x-tongban-request-id",
        MetadataValue::from_static("abandoned-1"),
    );
    md.remove("grpc-timeout");
    let mut client = f.crosscity("jinan").await;
    let call = tokio::spawn(async move { client.submit(req).await });
    slow.seen.recv().await.unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    for city in ["jinan", "qingdao"] {
        let auditor = f.fed.city(city).unwrap().node().unwrap().auditor().clone();
        let records = wait_for_record(&auditor, "abandoned-1").await;
        assert_eq!(
            records.len(),
            1,
            "{city} has no record of the abandoned call"
        );
        assert_eq!(records[0].grpc_status, Code::Cancelled as i32, "{city}");
        assert!(auditor.verify().unwrap().first_bad.is_none());
    }
    slow.stop().await;
    f.shutdown().await;
}
