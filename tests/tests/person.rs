#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The person behind every call (issue: the principal, made once): two citizens signed in
//! through the same portal organisation try every id- or subject-taking RPC on each other's
//! data, in both cities, and are refused without a trace of the other's data changing; an
//! official's id reaches both cities' audit records and the citizen's access log; a consent
//! for one catalog item does not open another; a personal-data call whose token names
//! nobody is refused.

use std::time::Duration;

use tempfile::TempDir;
use tongban_catalog::Catalog;
use tongban_devkit::demo::{demo_subject, example_application, SERVICE_CENTRE};
use tongban_devkit::departments::{Departments, CROSSCITY_V2};
use tongban_devkit::local::{loopback_limits, LocalFederation};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::{AccessLogRequest, AuditRecord};
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::{ListRequest, RevokeRequest};
use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v2::{
    Application, GetStatusRequest, ListApplicationsRequest, State, WithdrawRequest,
};
use tongban_proto::metadata;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// The item the citizens' calls name (the portal names the item of the application).
const JQ03: Option<&str> = Some("JQ-03");

/// Steps so long that applications stay open (withdrawable) for the whole test.
const SLOW: Duration = Duration::from_secs(3600);

struct World {
    fed: LocalFederation,
    departments: Departments,
    catalog: Catalog,
    _dir: TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let fed = LocalFederation::start(dir.path(), &["jinan", "qingdao"], loopback_limits())
        .await
        .unwrap();
    let departments = Departments::start(&fed, SLOW).await.unwrap();
    World {
        fed,
        departments,
        catalog: Catalog::embedded().unwrap(),
        _dir: dir,
    }
}

/// Who calls: a token of `city`'s identity provider for `org`, with `roles` and `sub`.
struct Who<'a> {
    city: &'a str,
    token: String,
}

impl World {
    /// A citizen `id` of `city`, signed in at the city's portal (role `citizen`).
    fn citizen(&self, city: &'static str, id: &str) -> Who<'static> {
        let token = self
            .fed
            .idp(city)
            .unwrap()
            .issue("portal", &["citizen".into()], Duration::from_secs(600), id)
            .unwrap();
        Who { city, token }
    }

    /// An official `sub` of `org` of `city`.
    fn official(&self, city: &'static str, org: &str, sub: &str) -> Who<'static> {
        let token = self
            .fed
            .idp(city)
            .unwrap()
            .issue(org, &[], Duration::from_secs(600), sub)
            .unwrap();
        Who { city, token }
    }

    /// The consent of Jinan's citizen `subject` for Jinan's service centre, towards Qingdao,
    /// for case handling, naming `items`: its token.
    async fn centre_consent(
        &self,
        subject: &str,
        items: &[&str],
    ) -> Result<String, tongban_devkit::local::LocalError> {
        let grantee = format!("jinan/{SERVICE_CENTRE}");
        let grant = self.fed.grant_consent_for(
            CROSSCITY_V2,
            "jinan",
            subject,
            &grantee,
            ("qingdao", "case-handling"),
            items,
        );
        grant.await.map(|(_, token)| token)
    }

    async fn client(&self, city: &str) -> CrossCityServiceClient<tonic::transport::Channel> {
        CrossCityServiceClient::new(self.fed.channel(city).await.unwrap())
    }

    async fn records(&self, city: &str, rid: &str) -> Vec<AuditRecord> {
        let node = self.fed.city(city).unwrap().node().unwrap();
        node.auditor().records_for_request(rid).await
    }

    async fn shutdown(self) {
        self.departments.stop().await;
        self.fed.shutdown().await;
    }
}

/// A call by `who` to `target` for case handling, about `subject`, naming `code`.
fn call<T>(
    msg: T,
    who: &Who<'_>,
    target: &str,
    subject: Option<&str>,
    code: Option<&str>,
    consent: Option<&str>,
) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    let mut pairs = vec![
        ("authorization", format!("Bearer {}", who.token)),
        (metadata::TARGET_CITY, target.to_string()),
        (metadata::PURPOSE, "case-handling".to_string()),
    ];
    for (k, v) in [
        (metadata::SUBJECT, subject),
        (metadata::CATALOG_CODE, code),
        (metadata::CONSENT, consent),
    ] {
        if let Some(v) = v {
            pairs.push((k, v.to_string()));
        }
    }
    for (k, v) in pairs {
        r.metadata_mut()
            .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    r
}

/// A control-plane request of `who`.
fn authorised<T>(msg: T, who: &Who<'_>) -> Request<T> {
    let mut r = Request::new(msg);
    tongban_tests::authorize(&mut r, &who.token);
    r
}

fn rid_of_status(s: &Status) -> String {
    s.metadata()
        .get(metadata::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn reason(s: &Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// `citizen` submits `code` about themselves to `target` (their own data: no consent).
async fn submit_own(w: &World, who: &Who<'_>, id: &str, target: &str, code: &str) -> Application {
    let item = w.catalog.item(code).unwrap();
    let msg = example_application(item, id);
    w.client(who.city)
        .await
        .submit(call(msg, who, target, Some(id), Some(code), None))
        .await
        .unwrap()
        .into_inner()
}

/// A refusal that was audited on every node it passed: `nodes` each hold one record of the
/// exchange with the refusal's status, and the person of the caller.
async fn assert_audited_refusal(w: &World, e: &Status, nodes: &[&str], what: &str) {
    let rid = rid_of_status(e);
    assert!(!rid.is_empty(), "{what}: {e:?}");
    for city in nodes {
        let records = w.records(city, &rid).await;
        assert_eq!(records.len(), 1, "{what}: {city} records {records:?}");
        assert_eq!(records[0].grpc_status, e.code() as i32, "{what}: {city}");
        assert_eq!(records[0].caller_kind, "citizen", "{what}: {city}");
        assert!(!records[0].caller_person.is_empty(), "{what}: {city}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_citizens_of_one_portal_cannot_reach_each_others_data_in_either_city() {
    let w = world().await;
    for (home, other_city, a_id, b_id) in [
        (
            "jinan",
            "qingdao",
            demo_subject("37010219850312002"),
            demo_subject("37010219900101003"),
        ),
        (
            "qingdao",
            "jinan",
            demo_subject("37020219920704003"),
            demo_subject("37020219800202004"),
        ),
    ] {
        let a = w.citizen(home, &a_id);
        let b = w.citizen(home, &b_id);
        // Each citizen's applications, in the other city and in their own.
        for target in [other_city, home] {
            let what = format!("{home} citizens, {target}'s department");
            let b_app = submit_own(&w, &b, &b_id, target, "JQ-03").await;
            let a_app = submit_own(&w, &a, &a_id, target, "JQ-03").await;
            // Unguessable ids: a readable prefix, then 32 hex digits (122 random bits).
            for id in [&a_app.application_id, &b_app.application_id] {
                let tail = id.rsplit('-').next().unwrap();
                assert_eq!(tail.len(), 32, "{id}");
                assert!(tail.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
            }
            let nodes: &[&str] = if target == home {
                &[home]
            } else {
                &[home, target]
            };
            let b_req = || GetStatusRequest {
                application_id: b_app.application_id.clone(),
            };
            let unknown = GetStatusRequest {
                application_id: format!("{target}-hrss-{}", "0".repeat(32)),
            };
            // A, about themselves, names B's application: NOT_FOUND, exactly as an id
            // that does not exist.
            let mut client = w.client(home).await;
            let e = client
                .get_status(call(b_req(), &a, target, Some(&a_id), JQ03, None))
                .await
                .unwrap_err();
            let none = client
                .get_status(call(unknown, &a, target, Some(&a_id), JQ03, None))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}");
            assert_eq!((none.code(), reason(&none)), (e.code(), reason(&e)));
            assert_audited_refusal(&w, &e, nodes, &what).await;
            let e = client
                .watch_status(call(b_req(), &a, target, Some(&a_id), JQ03, None))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{what}: watch {e:?}");
            assert_audited_refusal(&w, &e, nodes, &what).await;
            let withdraw = WithdrawRequest {
                application_id: b_app.application_id.clone(),
                reason: "not mine".into(),
            };
            let e = client
                .withdraw(call(withdraw.clone(), &a, target, Some(&a_id), JQ03, None))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{what}: withdraw {e:?}");
            assert_audited_refusal(&w, &e, nodes, &what).await;
            // A's listing holds A's applications only.
            let list = client
                .list_applications(call(
                    ListApplicationsRequest::default(),
                    &a,
                    target,
                    Some(&a_id),
                    JQ03,
                    None,
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(!list.applications.is_empty(), "{what}");
            assert!(
                list.applications
                    .iter()
                    .all(|x| x.application_id != b_app.application_id),
                "{what}: {list:?}"
            );
            // A, naming B as the subject: refused at A's home node, before anything leaves.
            let e = client
                .get_status(call(b_req(), &a, target, Some(&b_id), JQ03, None))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
            assert_eq!(reason(&e), "NOT_OWN_SUBJECT");
            assert_audited_refusal(&w, &e, &[home], &what).await;
            let e = client
                .withdraw(call(withdraw, &a, target, Some(&b_id), JQ03, None))
                .await
                .unwrap_err();
            assert_eq!(reason(&e), "NOT_OWN_SUBJECT", "{what}: {e:?}");
            let e = client
                .list_applications(call(
                    ListApplicationsRequest::default(),
                    &a,
                    target,
                    Some(&b_id),
                    JQ03,
                    None,
                ))
                .await
                .unwrap_err();
            assert_eq!(reason(&e), "NOT_OWN_SUBJECT", "{what}: {e:?}");
            // Nothing of B's changed, and B still sees it.
            let mine = client
                .get_status(call(b_req(), &b, target, Some(&b_id), JQ03, None))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(mine.state(), State::Received, "{what}");
            assert_eq!(mine.history.len(), b_app.history.len(), "{what}");
            // A's own application: A sees it and may withdraw it.
            let own = client
                .withdraw(call(
                    WithdrawRequest {
                        application_id: a_app.application_id.clone(),
                        reason: String::new(),
                    },
                    &a,
                    target,
                    Some(&a_id),
                    JQ03,
                    None,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(own.state(), State::Withdrawn, "{what}");
        }

        // The node's own services: consents and the access log.
        let (b_consent, _) = w
            .fed
            .grant_consent_for(
                CROSSCITY_V2,
                home,
                &b_id,
                &format!("{home}/{SERVICE_CENTRE}"),
                (other_city, "case-handling"),
                &["JQ-03"],
            )
            .await
            .unwrap();
        let channel = w.fed.channel(home).await.unwrap();
        let mut consents = ConsentClient::new(channel.clone());
        let list = |subject: &str, who: &Who<'_>| {
            authorised(
                ListRequest {
                    subject: subject.to_string(),
                },
                who,
            )
        };
        let revoke = |subject: &str| {
            authorised(
                RevokeRequest {
                    subject: subject.to_string(),
                    id: b_consent.clone(),
                },
                &a,
            )
        };
        let e = consents.list(list(&b_id, &a)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{home}: list {e:?}");
        let e = consents.revoke(revoke(&b_id)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{home}: revoke {e:?}");
        // Revoking B's consent id as A's own: A has no such consent.
        let e = consents.revoke(revoke(&a_id)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{home}: revoke as own {e:?}");
        let still = consents.list(list(&b_id, &b)).await.unwrap().into_inner();
        let c = still.consents.iter().find(|c| c.id == b_consent).unwrap();
        assert!(!c.revoked, "{home}");
        assert_eq!(c.items, vec!["JQ-03".to_string()]);
        let e = AuditClient::new(channel)
            .access_log(authorised(
                AccessLogRequest {
                    subject: b_id.clone(),
                    limit: 10,
                    ..Default::default()
                },
                &a,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{home}: access log {e:?}");
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_is_in_both_audit_records_and_the_citizens_access_log() {
    let w = world().await;
    let citizen_id = demo_subject("37010219850312002");
    let consent = w.centre_consent(&citizen_id, &["JQ-03"]).await.unwrap();
    let official = w.official("jinan", SERVICE_CENTRE, "zhang.wei@zwfw");
    let msg = example_application(w.catalog.item("JQ-03").unwrap(), &citizen_id);
    let ok = w
        .client("jinan")
        .await
        .submit(call(
            msg,
            &official,
            "qingdao",
            Some(&citizen_id),
            Some("JQ-03"),
            Some(&consent),
        ))
        .await
        .unwrap();
    let rid = ok
        .metadata()
        .get(metadata::REQUEST_ID)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for city in ["jinan", "qingdao"] {
        let r = w.records(city, &rid).await;
        assert_eq!(r.len(), 1, "{city}");
        assert_eq!(r[0].caller_person, "zhang.wei@zwfw", "{city}");
        assert_eq!(r[0].caller_kind, "official", "{city}");
        assert_eq!(r[0].caller_org, SERVICE_CENTRE, "{city}");
    }
    // The citizen reads who looked at their data.
    let me = w.citizen("jinan", &citizen_id);
    let req = authorised(
        AccessLogRequest {
            subject: citizen_id.clone(),
            limit: 50,
            ..Default::default()
        },
        &me,
    );
    let log = AuditClient::new(w.fed.channel("jinan").await.unwrap())
        .access_log(req)
        .await
        .unwrap()
        .into_inner();
    let access = log
        .accesses
        .iter()
        .find(|a| a.request_id == rid)
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(
        (
            access.caller_city.as_str(),
            access.caller_org.as_str(),
            access.caller_person.as_str(),
            access.caller_kind.as_str(),
        ),
        ("jinan", SERVICE_CENTRE, "zhang.wei@zwfw", "official")
    );
    // No clear resident id anywhere in the records: a citizen is a pseudonym.
    let own = submit_own(&w, &me, &citizen_id, "qingdao", "JQ-03").await;
    assert!(!own.application_id.is_empty());
    for city in ["jinan", "qingdao"] {
        let auditor = w.fed.city(city).unwrap().node().unwrap().auditor();
        auditor.caught_up().await;
        let all: Vec<AuditRecord> = (1..=auditor.head().seq)
            .map(|seq| auditor.read(seq).unwrap())
            .collect();
        assert!(
            all.iter().any(|r| r.caller_kind == "citizen"),
            "{city}: {all:?}"
        );
        for r in &all {
            assert!(
                !r.caller_person.contains(&citizen_id[..17]),
                "{city}: {r:?}"
            );
        }
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_names_items_and_a_token_without_sub_is_refused_for_personal_data() {
    let w = world().await;
    let citizen_id = demo_subject("37010219850312002");
    let grantee = format!("jinan/{SERVICE_CENTRE}");
    let jq03 = w.centre_consent(&citizen_id, &["JQ-03"]).await.unwrap();
    let official = w.official("jinan", SERVICE_CENTRE, "li.na");
    let submit = |code: &str, consent: &str, who: &Who<'_>| {
        let msg = example_application(w.catalog.item(code).unwrap(), &citizen_id);
        call(
            msg,
            who,
            "qingdao",
            Some(&citizen_id),
            Some(code),
            Some(consent),
        )
    };
    let mut client = w.client("jinan").await;
    // JQ-16 (criminal record) and JQ-24 (marriage records) with the JQ-03 consent: refused.
    for code in ["JQ-16", "JQ-24"] {
        let e = client
            .submit(submit(code, &jq03, &official))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{code}: {e:?}");
        assert_eq!(reason(&e), "CONSENT_OUT_OF_SCOPE", "{code}");
        assert!(e.message().contains(code), "{}", e.message());
    }
    // JQ-03 with it: accepted.
    let app = client
        .submit(submit("JQ-03", &jq03, &official))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.catalog_code, "JQ-03");
    // The same official, consent in hand, reads the JQ-03 application, but not through
    // another item's name, and lists only the JQ-03 applications of the citizen.
    let get = |code: &str| {
        call(
            GetStatusRequest {
                application_id: app.application_id.clone(),
            },
            &official,
            "qingdao",
            Some(&citizen_id),
            Some(code),
            Some(&jq03),
        )
    };
    assert!(client.get_status(get("JQ-03")).await.is_ok());
    let e = client.get_status(get("JQ-16")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The organisation that submitted it reads it only about its applicant: with another
    // citizen's subject and consent, it is not found (an access is recorded under the
    // citizen whose data it touches, never under another).
    let someone = demo_subject("37010219700101001");
    let theirs = w.centre_consent(&someone, &["JQ-03"]).await.unwrap();
    let req = call(
        GetStatusRequest {
            application_id: app.application_id.clone(),
        },
        &official,
        "qingdao",
        Some(&someone),
        Some("JQ-03"),
        Some(&theirs),
    );
    let e = client.get_status(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A medical-treatment consent (data item MR-01 of the result registry) never opens a
    // criminal-record query (JQ-16), whatever purpose the call claims.
    let (_, medical) = w
        .fed
        .grant_consent_for(
            tongban_medical::SERVICE,
            "jinan",
            &citizen_id,
            &grantee,
            ("qingdao", "medical-treatment"),
            &[tongban_medical::READ_ITEM],
        )
        .await
        .unwrap();
    let e = client
        .submit(submit("JQ-16", &medical, &official))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "CONSENT_OUT_OF_SCOPE", "{e:?}");
    // Nor can a consent name MR-01 for another service than the registry's.
    let e = w
        .centre_consent(&citizen_id, &[tongban_medical::READ_ITEM])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("served by"), "{e}");
    // A whole-service consent (no item) never covers a personal-data item: the node has
    // no item to check it against, and the department refuses the unnamed item.
    let whole = w.centre_consent(&citizen_id, &[]).await.unwrap();
    let msg = example_application(w.catalog.item("JQ-16").unwrap(), &citizen_id);
    let mut unnamed = call(
        msg,
        &official,
        "qingdao",
        Some(&citizen_id),
        None,
        Some(&whole),
    );
    unnamed
        .metadata_mut()
        .insert(metadata::TARGET_ORG, MetadataValue::from_static("gaj"));
    let e = client.submit(unnamed).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "CATALOG_CODE_REQUIRED", "{e:?}");
    // A token that names nobody: refused for personal data, naming the claim.
    let nobody = w.official("jinan", SERVICE_CENTRE, "");
    let e = client
        .submit(submit("JQ-03", &jq03, &nobody))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("`sub`"), "{}", e.message());
    assert_eq!(reason(&e), "TOKEN_NO_PERSON");
    // Nor may a consent portal without a `sub` read a citizen's consents.
    let portal = w
        .fed
        .idp("jinan")
        .unwrap()
        .issue(
            "portal",
            &["consent-portal".into()],
            Duration::from_secs(600),
            "",
        )
        .unwrap();
    let nameless = Who {
        city: "jinan",
        token: portal,
    };
    let e = ConsentClient::new(w.fed.channel("jinan").await.unwrap())
        .list(authorised(
            ListRequest {
                subject: citizen_id.clone(),
            },
            &nameless,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "TOKEN_NO_PERSON");
    // ... and let through for an item without personal data.
    let msg = example_application(w.catalog.item("JQ-19").unwrap(), &citizen_id);
    let biz = call(
        msg,
        &nobody,
        "qingdao",
        Some(&citizen_id),
        Some("JQ-19"),
        None,
    );
    assert!(client.submit(biz).await.is_ok());
    w.shutdown().await;
}
