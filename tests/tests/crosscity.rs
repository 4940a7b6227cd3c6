#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The 27 cross-city services end to end: every item both ways to completion with its
//! certificate verified, the refusals (bad fields of every type, unknown and withdrawn codes,
//! another organisation's code, someone else's application, no consent), withdrawal, a
//! provider restart, and forged or edited certificates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tongban_catalog::Catalog;
use tongban_devkit::demo::{self, example_application, SERVICE_CENTRE};
use tongban_devkit::departments::{Departments, CROSSCITY_V2};
use tongban_devkit::local::{loopback_limits, LocalFederation};
use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v2::{
    Application, GetStatusRequest, ListApplicationsRequest, State, SubmitRequest, WithdrawRequest,
};
use tongban_proto::metadata;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A two-city federation with its twenty departments.
struct World {
    fed: LocalFederation,
    departments: Departments,
    catalog: Catalog,
    _dir: TempDir,
    /// A Jinan citizen, and their consent for Jinan's service centre towards Qingdao.
    citizen: String,
    consent: String,
}

/// Steps so long that an application stays `received` for the whole test.
const SLOW: Duration = Duration::from_secs(3600);

async fn world(step: Duration) -> World {
    let dir = tempfile::tempdir().unwrap();
    let fed = LocalFederation::start(dir.path(), &["jinan", "qingdao"], loopback_limits())
        .await
        .unwrap();
    let departments = Departments::start(&fed, step).await.unwrap();
    let citizen = demo::demo_subject("37010219850312002");
    let grantee = format!("jinan/{SERVICE_CENTRE}");
    // The citizen consents to every item of the catalog for the service centre, by name.
    let catalog = Catalog::embedded().unwrap();
    let codes: Vec<&str> = catalog.items().iter().map(|i| i.code.as_str()).collect();
    let (_, consent) = fed
        .grant_consent_for(
            CROSSCITY_V2,
            "jinan",
            &citizen,
            &grantee,
            ("qingdao", "case-handling"),
            &codes,
        )
        .await
        .unwrap();
    World {
        fed,
        departments,
        catalog: Catalog::embedded().unwrap(),
        _dir: dir,
        citizen,
        consent,
    }
}

impl World {
    async fn client(&self, city: &str) -> CrossCityServiceClient<tonic::transport::Channel> {
        CrossCityServiceClient::new(self.fed.channel(city).await.unwrap())
    }

    /// A call from `jinan/<org>` to Qingdao about `subject` (with `consent`), naming `code`.
    fn call<T>(
        &self,
        msg: T,
        org: &str,
        code: Option<&str>,
        subject: Option<&str>,
        consent: Option<&str>,
    ) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_secs(10));
        let token = self.fed.token("jinan", org).unwrap();
        let mut pairs = vec![
            ("authorization", format!("Bearer {token}")),
            (metadata::TARGET_CITY, "qingdao".to_string()),
            (metadata::PURPOSE, "case-handling".to_string()),
        ];
        if let Some(c) = code {
            pairs.push((metadata::CATALOG_CODE, c.to_string()));
        }
        if let Some(s) = subject {
            pairs.push((metadata::SUBJECT, s.to_string()));
        }
        if let Some(c) = consent {
            pairs.push((metadata::CONSENT, c.to_string()));
        }
        for (k, v) in pairs {
            r.metadata_mut()
                .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
        }
        r
    }

    /// The citizen's call through Jinan's service centre, with consent, naming `code`.
    fn as_centre<T>(&self, msg: T, code: &str) -> Request<T> {
        self.call(
            msg,
            SERVICE_CENTRE,
            Some(code),
            Some(&self.citizen),
            Some(&self.consent),
        )
    }

    async fn submit(&self, code: &str) -> Result<Application, Status> {
        let item = self.catalog.item(code).unwrap();
        let msg = example_application(item, &self.citizen);
        self.client("jinan")
            .await
            .submit(self.as_centre(msg, code))
            .await
            .map(|r| r.into_inner())
    }

    async fn status(&self, id: &str, code: &str) -> Application {
        let req = GetStatusRequest {
            application_id: id.to_string(),
        };
        self.client("jinan")
            .await
            .get_status(self.as_centre(req, code))
            .await
            .unwrap()
            .into_inner()
    }

    async fn shutdown(self) {
        self.departments.stop().await;
        self.fed.shutdown().await;
    }
}

fn state(a: &Application) -> State {
    State::try_from(a.state).unwrap()
}

/// The fields named in the status's google.rpc.BadRequest.
fn bad_fields(s: &Status) -> Vec<String> {
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_27_items_complete_both_ways_with_verified_certificates() {
    let w = world(Duration::from_millis(5)).await;
    let rows = demo::run_items(&w.fed).await.unwrap();
    assert_eq!(rows.len(), 27);
    for (row, item) in rows.iter().zip(w.catalog.items()) {
        assert_eq!(row.code, item.code);
        for (outcome, provider) in [
            (&row.jinan_to_qingdao, "qingdao"),
            (&row.qingdao_to_jinan, "jinan"),
        ] {
            assert_eq!(outcome.status, "completed", "{} → {provider}", row.code);
            // Issued by the providing city's organisation, verified with the bundle alone.
            let issuer = format!("{provider}/{}", item.provider_in(provider).unwrap());
            assert_eq!(outcome.certificate, Ok(issuer), "{}", row.code);
        }
    }
    demo::check_items(&rows).unwrap();
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_walks_its_states_with_a_working_day_due_date() {
    let w = world(Duration::from_millis(5)).await;
    let app = w.submit("JQ-08").await.unwrap();
    assert_eq!(state(&app), State::Received);
    assert_eq!(app.provider_city, "qingdao");
    assert_eq!(app.provider_org, "gjj");
    assert_eq!(app.origin_city, "jinan");
    assert_eq!(
        app.applicant_masked,
        "370***********002X".replace('X', &w.citizen[17..])
    );
    let expected_due = w
        .catalog
        .calendar
        .due_date(app.received_at_ms, 10)
        .to_string();
    assert_eq!(app.due_date, expected_due);
    let mut stream = w
        .client("jinan")
        .await
        .watch_status(w.as_centre(
            GetStatusRequest {
                application_id: app.application_id.clone(),
            },
            "JQ-08",
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(a) = stream.message().await.unwrap() {
        last = Some(a);
    }
    let done = last.unwrap();
    let states: Vec<State> = done
        .history
        .iter()
        .map(|t| State::try_from(t.state).unwrap())
        .collect();
    assert_eq!(
        states,
        [
            State::Received,
            State::Accepted,
            State::Processing,
            State::Completed
        ]
    );
    assert!(done.history.windows(2).all(|p| p[0].at_ms <= p[1].at_ms));
    assert_eq!(done.result_kind, "transfer-confirmation");
    // Withdrawing a completed application is refused.
    let e = w
        .client("jinan")
        .await
        .withdraw(w.as_centre(
            WithdrawRequest {
                application_id: done.application_id.clone(),
                reason: "changed my mind".into(),
            },
            "JQ-08",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("completed"), "{}", e.message());
    // Missing materials: received, then rejected with the reason.
    let item = w.catalog.item("JQ-09").unwrap();
    let mut msg = example_application(item, &w.citizen);
    msg.materials.retain(|m| m.kind != "invoice");
    let app = w
        .client("jinan")
        .await
        .submit(w.as_centre(msg, "JQ-09"))
        .await
        .unwrap()
        .into_inner();
    let mut a = app.clone();
    for _ in 0..200 {
        a = w.status(&app.application_id, "JQ-09").await;
        if state(&a) == State::Rejected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state(&a), State::Rejected);
    assert!(
        a.rejection_reason.contains("invoice"),
        "{}",
        a.rejection_reason
    );
    assert!(a.result.is_empty());
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_listing_restart_and_someone_elses_application() {
    let mut w = world(SLOW).await;
    let first = w.submit("JQ-08").await.unwrap();
    let second = w.submit("JQ-07").await.unwrap();
    // Someone else: another Jinan system, about another citizen (with that citizen's
    // consent), asks for the first application.
    let other = demo::demo_subject("37010219700101001");
    let (_, other_consent) = w
        .fed
        .grant_consent_for(
            CROSSCITY_V2,
            "jinan",
            &other,
            "jinan/mz",
            ("qingdao", "case-handling"),
            &["JQ-07", "JQ-08"],
        )
        .await
        .unwrap();
    let req = w.call(
        GetStatusRequest {
            application_id: first.application_id.clone(),
        },
        "mz",
        Some("JQ-08"),
        Some(&other),
        Some(&other_consent),
    );
    // Refused exactly like an id that does not exist: nothing tells that it does.
    let e = w.client("jinan").await.get_status(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let req = w.call(
        WithdrawRequest {
            application_id: first.application_id.clone(),
            reason: String::new(),
        },
        "mz",
        Some("JQ-08"),
        Some(&other),
        Some(&other_consent),
    );
    let e = w.client("jinan").await.withdraw(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // An unknown application id.
    let req = w.as_centre(
        GetStatusRequest {
            application_id: "qingdao-gjj-99999999".into(),
        },
        "JQ-08",
    );
    let e = w.client("jinan").await.get_status(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // The provider restarts: its applications are still there.
    w.departments
        .restart(&w.fed, "qingdao", "gjj")
        .await
        .unwrap();
    let qingdao = w.fed.city("qingdao").unwrap().node().unwrap();
    let url = w.departments.get("qingdao", "gjj").unwrap().url();
    assert!(
        qingdao
            .wait_for_catalog(Duration::from_secs(10), |s| s
                .local
                .iter()
                .any(|l| l.record.endpoints.contains(&url)))
            .await
    );
    let a = w.status(&first.application_id, "JQ-08").await;
    assert_eq!(state(&a), State::Received);
    assert_eq!(a.due_date, first.due_date);
    // The service centre's view of the citizen's applications at gjj: those of the item it
    // names (the one the consent was checked for), newest first, paged.
    let third = w.submit("JQ-08").await.unwrap();
    let list = |token: &str| {
        w.as_centre(
            ListApplicationsRequest {
                page_size: 1,
                page_token: token.to_string(),
            },
            "JQ-08",
        )
    };
    let p1 = w
        .client("jinan")
        .await
        .list_applications(list(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.applications.len(), 1);
    assert_eq!(p1.applications[0].application_id, third.application_id);
    let p2 = w
        .client("jinan")
        .await
        .list_applications(list(&p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.applications[0].application_id, first.application_id);
    assert!(
        p2.next_page_token.is_empty(),
        "the JQ-07 application is not listed"
    );
    let jq07 = w
        .client("jinan")
        .await
        .list_applications(w.as_centre(ListApplicationsRequest::default(), "JQ-07"))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = jq07
        .applications
        .iter()
        .map(|a| &a.application_id)
        .collect();
    assert_eq!(ids, vec![&second.application_id]);
    // Withdrawal by its submitter.
    let withdrawn = w
        .client("jinan")
        .await
        .withdraw(w.as_centre(
            WithdrawRequest {
                application_id: first.application_id.clone(),
                reason: "moved back".into(),
            },
            "JQ-08",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&withdrawn), State::Withdrawn);
    assert_eq!(
        state(&w.status(&first.application_id, "JQ-08").await),
        State::Withdrawn
    );
    let e = w
        .client("jinan")
        .await
        .withdraw(w.as_centre(
            WithdrawRequest {
                application_id: first.application_id.clone(),
                reason: String::new(),
            },
            "JQ-08",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    w.shutdown().await;
}

/// One malformed value per field type, and the field the refusal must name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_invalid_field_is_named() {
    let w = world(SLOW).await;
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        // (code, field, bad value or None to leave it out, what the field is)
        ("JQ-04", "bank_account", Some("6222-0216"), "text pattern"),
        (
            "JQ-01",
            "applicant_name",
            Some(&"张".repeat(31)),
            "text max_len",
        ),
        ("JQ-01", "card_bank", Some("hsbc"), "enum"),
        ("JQ-02", "period_from", Some("2020-02-30"), "date"),
        (
            "JQ-25",
            "mother_id",
            Some("370102199001011232"),
            "resident-id",
        ),
        (
            "JQ-20",
            "credit_code",
            Some("91370200163562681H"),
            "credit-code",
        ),
        (
            "JQ-01",
            "residence_division",
            Some("990102"),
            "division-code",
        ),
        (
            "JQ-08",
            "to_division",
            Some("379901"),
            "division-code not in GB/T 2260",
        ),
        ("JQ-01", "phone", Some("12805310001"), "phone"),
        ("JQ-09", "amount_yuan", Some("5000001"), "integer"),
        ("JQ-02", "period_to", None, "required"),
        ("JQ-02", "colour", Some("red"), "unknown field"),
        // Unclean text never reaches a signed certificate.
        (
            "JQ-01",
            "applicant_name",
            Some("王\u{0}秀\u{1b}[2J英"),
            "control characters",
        ),
        (
            "JQ-01",
            "applicant_name",
            Some("王\u{202E}英秀"),
            "bidirectional override",
        ),
    ];
    for (code, field, value, kind) in cases {
        let item = w.catalog.item(code).unwrap();
        let mut msg = example_application(item, &w.citizen);
        match value {
            Some(v) => {
                msg.fields.insert(field.to_string(), v.to_string());
            }
            None => {
                msg.fields.remove(*field);
            }
        }
        let e = w
            .client("jinan")
            .await
            .submit(w.as_centre(msg, code))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{kind}: {e:?}");
        assert_eq!(bad_fields(&e), [format!("fields.{field}")], "{kind}");
        assert!(e.message().contains(field), "{kind}: {}", e.message());
    }
    // Several at once, the applicant id and the materials too: every one is named.
    let item = w.catalog.item("JQ-03").unwrap();
    let mut msg = example_application(item, "37010219850312002");
    msg.fields.insert("to_division".into(), "37020".into());
    msg.materials[0].kind = "passport".into();
    msg.materials[1].sha256 = "abc".into();
    let e = w
        .client("jinan")
        .await
        .submit(w.as_centre(msg, "JQ-03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&e),
        [
            "applicant_id",
            "fields.to_division",
            "materials[0].kind",
            "materials[1].sha256"
        ]
    );
    // No stub: the catalog code is required.
    let e = w
        .client("jinan")
        .await
        .submit(w.as_centre(SubmitRequest::default(), "JQ-03"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&e), ["catalog_code"]);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_route_to_their_organisation_or_are_refused() {
    let w = world(SLOW).await;
    let item = w.catalog.item("JQ-08").unwrap();
    let msg = || example_application(item, &w.citizen);
    // Unknown to the federation catalog: the node refuses, naming the code.
    let e = w
        .client("jinan")
        .await
        .submit(w.as_centre(msg(), "JQ-99"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("JQ-99"), "{}", e.message());
    // The node authorised one item, the application is for another.
    let e = w
        .client("jinan")
        .await
        .submit(w.as_centre(msg(), "JQ-07"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Another organisation's item (routed to hrss by name, without a code, with a consent
    // for the whole service, which covers only calls naming no item): the provider
    // refuses it.
    let (_, whole_service) = w
        .fed
        .grant_consent_for(
            CROSSCITY_V2,
            "jinan",
            &w.citizen,
            &format!("jinan/{SERVICE_CENTRE}"),
            ("qingdao", "case-handling"),
            &[],
        )
        .await
        .unwrap();
    let mut req = w.call(
        msg(),
        SERVICE_CENTRE,
        None,
        Some(&w.citizen),
        Some(&whole_service),
    );
    req.metadata_mut()
        .insert(metadata::TARGET_ORG, MetadataValue::from_static("hrss"));
    let e = w.client("jinan").await.submit(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("gjj"), "{}", e.message());
    // An unknown code in the payload (no header): the provider's NOT_FOUND.
    let mut unknown = msg();
    unknown.catalog_code = "JQ-77".into();
    let mut req = w.call(
        unknown,
        SERVICE_CENTRE,
        None,
        Some(&w.citizen),
        Some(&whole_service),
    );
    req.metadata_mut()
        .insert(metadata::TARGET_ORG, MetadataValue::from_static("gjj"));
    let e = w.client("jinan").await.submit(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Personal data: no consent → refused by Qingdao; a non-personal item needs none.
    let req = w.call(msg(), SERVICE_CENTRE, Some("JQ-08"), Some(&w.citizen), None);
    let e = w.client("jinan").await.submit(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("consent"), "{}", e.message());
    let biz = example_application(w.catalog.item("JQ-19").unwrap(), &w.citizen);
    let req = w.call(biz, SERVICE_CENTRE, Some("JQ-19"), Some(&w.citizen), None);
    let app = w
        .client("jinan")
        .await
        .submit(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.provider_org, "scjg");
    assert!(w.submit("JQ-08").await.is_ok());

    // Qingdao's gjj withdraws its registration: the code is no longer offered there.
    let mut admin = w.fed.registry("qingdao", "gjj").await.unwrap();
    admin
        .withdraw_service(tongban_proto::registry::v1::WithdrawServiceRequest {
            organisation: "gjj".into(),
            service: CROSSCITY_V2.into(),
        })
        .await
        .unwrap();
    let jinan = w.fed.city("jinan").unwrap().node().unwrap();
    assert!(
        jinan
            .wait_for_catalog(Duration::from_secs(10), |s| !s.peer_offers_item(
                "qingdao",
                CROSSCITY_V2,
                Some("JQ-08")
            ))
            .await
    );
    let e = w.submit("JQ-08").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("JQ-08") && e.message().contains("qingdao"),
        "{}",
        e.message()
    );
    // A registration may list only catalog items.
    let mut reg = w.fed.registry("qingdao", "gjj").await.unwrap();
    let e = reg
        .register_service(tongban_proto::registry::v1::RegisterServiceRequest {
            registration: Some(tongban_proto::registry::v1::ServiceRegistration {
                organisation: "gjj".into(),
                service: CROSSCITY_V2.into(),
                endpoints: vec!["http://127.0.0.1:9".into()],
                catalog_codes: vec!["JQ-08".into(), "JQ-88".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&e), ["registration.catalog_codes[1]"]);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_the_catalog_items_and_where_they_are_offered() {
    let w = world(SLOW).await;
    let mut reg = w.fed.registry("jinan", "hrss").await.unwrap();
    let items = reg
        .list_catalog_items(tongban_proto::registry::v1::ListCatalogItemsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(items.federation, "jinan-qingdao");
    assert_eq!(items.items.len(), 27);
    let jq08 = items.items.iter().find(|i| i.code == "JQ-08").unwrap();
    assert_eq!(jq08.name_zh, "住房公积金异地转移接续");
    assert_eq!(
        jq08.providers.get("qingdao").map(String::as_str),
        Some("gjj")
    );
    assert_eq!(jq08.offered_in, ["jinan", "qingdao"]);
    assert_eq!(jq08.time_limit_days, 10);
    assert!(jq08.fields.iter().any(|f| f.r#type == "credit-code"));
    let fund = reg
        .list_catalog_items(tongban_proto::registry::v1::ListCatalogItemsRequest {
            category: "provident-fund".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fund.items.len(), 3);
    w.shutdown().await;
}

fn tongban_bin() -> PathBuf {
    std::env::var_os("TONGBAN_BIN")
        .map(PathBuf::from)
        .expect("TONGBAN_BIN (tests/run.sh builds the binary and sets it)")
}

/// Runs `tongban cert verify` on a document: (exit code, stdout).
fn cli_verify(doc: &[u8], bundle: &std::path::Path) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cert.json");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new(tongban_bin())
        .args(["cert", "verify"])
        .arg(&file)
        .arg("--trust-bundle")
        .arg(bundle)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_verify_anywhere_and_forgeries_do_not() {
    use tongban_crosscity::ecert::{self, Signed, VerifyError};
    let w = world(Duration::from_millis(5)).await;
    let app = w.submit("JQ-16").await.unwrap();
    let mut done = app.clone();
    for _ in 0..400 {
        done = w.status(&app.application_id, "JQ-16").await;
        if state(&done) == State::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state(&done), State::Completed);
    let doc = done.result.clone();
    let bundle_path = w.fed.certs.trust_bundle.clone();
    let bundle = tongban_gateway::trust::TrustBundle::load(&bundle_path).unwrap();
    let now = time::OffsetDateTime::now_utc();
    // Issued in Qingdao, verified with the bundle alone (the CLI too).
    let d = ecert::verify(&doc, &bundle, now).unwrap();
    assert_eq!(
        (d.issuer.city.as_str(), d.issuer.organisation.as_str()),
        ("qingdao", "gaj")
    );
    assert_eq!(d.item.code, "JQ-16");
    assert_eq!(d.holder.masked_id, done.applicant_masked);
    assert!(
        !String::from_utf8_lossy(&doc).contains(&w.citizen),
        "clear id in the certificate"
    );
    let (code, out) = cli_verify(&doc, &bundle_path);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("verified: JQ-16"), "{out}");

    let signed: Signed = serde_json::from_slice(&doc).unwrap();
    let reencode = |s: &Signed| serde_json::to_vec(s).unwrap();
    // Edited: the validity extended by hand.
    let mut edited = signed.clone();
    edited.document.valid_until = "2099-01-01T00:00:00Z".into();
    assert!(matches!(
        ecert::verify(&reencode(&edited), &bundle, now),
        Err(VerifyError::Edited { .. })
    ));
    let (code, out) = cli_verify(&reencode(&edited), &bundle_path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("edited"), "{out}");
    // Edited with the digest recomputed: the signature no longer matches.
    let mut redigested = edited.clone();
    let canonical = serde_json::to_vec(&redigested.document).unwrap();
    redigested.digest = format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &canonical
        ))
    );
    assert!(matches!(
        ecert::verify(&reencode(&redigested), &bundle, now),
        Err(VerifyError::BadSignature(_))
    ));
    // Forged: the same document signed by a "qingdao/gaj" key of another PKI.
    let other = tempfile::tempdir().unwrap();
    let forger = tongban_devkit::certs::init(other.path(), &["qingdao".into()], false).unwrap();
    let (cert, key) = &forger.city("qingdao").unwrap().orgs["gaj"];
    let forger_bundle = tongban_gateway::trust::TrustBundle::load(&forger.trust_bundle).unwrap();
    let forger_key =
        tongban_gateway::trust::NodeIdentity::load_org("qingdao", "gaj", cert, key, &forger_bundle)
            .unwrap();
    let forged = ecert::sign(signed.document.clone(), &forger_key).unwrap();
    assert!(ecert::verify(&forged, &forger_bundle, now).is_ok());
    // Named for what it is: an unknown issuer, of an organisation signing certificate.
    let e = ecert::verify(&forged, &bundle, now).unwrap_err();
    assert!(matches!(e, VerifyError::UnknownIssuer(_)), "{e}");
    let (code, out) = cli_verify(&forged, &bundle_path);
    assert_eq!(code, 1);
    assert!(out.contains("unknown issuer"), "{out}");
    assert!(
        out.contains("organisation signing certificate of qingdao/gaj"),
        "{out}"
    );
    assert!(!out.contains("peer"), "{out}");
    // A city outside the federation.
    let mut foreign = signed.clone();
    foreign.document.issuer.city = "beijing".into();
    assert_eq!(
        ecert::verify(&reencode(&foreign), &bundle, now).unwrap_err(),
        VerifyError::UnknownCity("beijing".into())
    );
    // Expired: verified after its validity.
    let later = now + time::Duration::days(91);
    assert!(matches!(
        ecert::verify(&doc, &bundle, later),
        Err(VerifyError::Expired(_))
    ));
    // Not a certificate at all.
    let (code, out) = cli_verify(b"{\"hello\": 1}", &bundle_path);
    assert_eq!(code, 1);
    assert!(out.contains("malformed"), "{out}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_reads_the_bad_request_of_an_application() {
    let w = world(SLOW).await;
    let addr = w.fed.city("jinan").unwrap().config.caller_addr.to_string();
    let token = w.fed.token("jinan", SERVICE_CENTRE).unwrap();
    let args = vec![
        tongban_tests::proto_root(),
        addr,
        token,
        w.citizen.clone(),
        w.consent.clone(),
    ];
    let v = tongban_tests::run_python_json("crosscity_v2_bad_input.py", args).await;
    assert_eq!(v["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["reason"], "INVALID_APPLICATION", "{v}");
    let fields: BTreeMap<String, String> = serde_json::from_value(v["fields"].clone()).unwrap();
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "fields.account_number",
            "fields.amount_yuan",
            "fields.property_division",
            "fields.purchase_contract_number",
            "materials[0].kind",
            "materials[0].sha256"
        ],
        "{v}"
    );
    assert!(fields["fields.account_number"].contains("required"), "{v}");
    w.shutdown().await;
}

#[test]
fn a_bad_catalog_file_is_refused_naming_the_item_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.toml");
    let text = tongban_catalog::EMBEDDED.replacen("type = \"date\"", "type = \"datetime\"", 1);
    std::fs::write(&file, text).unwrap();
    let out = Command::new(tongban_bin())
        .args(["catalog", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JQ-02") && err.contains("fields[0].type") && err.contains("datetime"),
        "{err}"
    );
    let ok = Command::new(tongban_bin())
        .args(["catalog", "check", "../deploy/catalog/jinan-qingdao.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// `SubmitRequest` as bytes on the wire, so that a test can send a form value that is not
/// UTF-8 (no stub can).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSubmit {
    #[prost(string, tag = "1")]
    catalog_code: String,
    #[prost(string, tag = "2")]
    applicant_id: String,
    #[prost(map = "string, bytes", tag = "3")]
    fields: std::collections::HashMap<String, Vec<u8>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_value_that_is_not_utf8_is_invalid_argument_naming_the_field() {
    let w = world(SLOW).await;
    let item = w.catalog.item("JQ-01").unwrap();
    let ok = example_application(item, &w.citizen);
    let mut fields: std::collections::HashMap<String, Vec<u8>> = ok
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    // "王" cut after its first byte, then Latin-1 bytes.
    fields.insert("applicant_name".into(), vec![0xe7, 0x8e, b'x', 0xff, 0xfe]);
    let raw = RawSubmit {
        catalog_code: "JQ-01".into(),
        applicant_id: w.citizen.clone(),
        fields,
    };
    let req = w.as_centre(raw, "JQ-01");
    let mut grpc = tonic::client::Grpc::new(w.fed.channel("jinan").await.unwrap());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawSubmit, Application>::default();
    let e = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/tongban.crosscity.v2.CrossCityService/Submit"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(bad_fields(&e), ["fields"], "{e:?}");
    assert!(e.message().contains("UTF-8"), "{}", e.message());
    w.shutdown().await;
}

/// A department honours an idempotency key on `Submit`: the same submission again (a retry
/// after a timeout, an orchestrator resuming after a crash) returns the first application;
/// the same key with another submission is refused; a new key is a new application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_repeated_submission_return_the_first_application() {
    let w = world(SLOW).await;
    let item = w.catalog.item("JQ-08").unwrap();
    let keyed = |key: &str| {
        let mut m = example_application(item, &w.citizen);
        m.idempotency_key = key.to_string();
        m
    };
    // Bad keys first: too long, or with a space.
    for bad in ["k".repeat(129), "two words".to_string()] {
        let e = w
            .client("jinan")
            .await
            .submit(w.as_centre(keyed(&bad), "JQ-08"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(bad_fields(&e), ["idempotency_key"]);
    }
    let first = w
        .client("jinan")
        .await
        .submit(w.as_centre(keyed("move-2026-001"), "JQ-08"))
        .await
        .unwrap()
        .into_inner();
    // Again, twice at once: the same application, not a second or third.
    let (a, b) = tokio::join!(
        async {
            w.client("jinan")
                .await
                .submit(w.as_centre(keyed("move-2026-001"), "JQ-08"))
                .await
        },
        async {
            w.client("jinan")
                .await
                .submit(w.as_centre(keyed("move-2026-001"), "JQ-08"))
                .await
        }
    );
    assert_eq!(a.unwrap().into_inner().application_id, first.application_id);
    assert_eq!(b.unwrap().into_inner().application_id, first.application_id);
    let listed = w
        .client("jinan")
        .await
        .list_applications(w.as_centre(ListApplicationsRequest::default(), "JQ-08"))
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(listed.len(), 1, "{listed:?}");
    // The same key with another submission: refused, naming the first application.
    let mut other = keyed("move-2026-001");
    other
        .fields
        .insert("account_number".into(), "370100999999999".into());
    let e = w
        .client("jinan")
        .await
        .submit(w.as_centre(other, "JQ-08"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&first.application_id),
        "{}",
        e.message()
    );
    // A new key is a new application; no key is always new.
    let second = w
        .client("jinan")
        .await
        .submit(w.as_centre(keyed("move-2026-002"), "JQ-08"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.application_id, first.application_id);
    let unkeyed = w.submit("JQ-08").await.unwrap();
    assert_ne!(unkeyed.application_id, first.application_id);
    w.shutdown().await;
}
