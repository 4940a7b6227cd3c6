//! "One thing" bundles (高效办成一件事) end to end: two cities, their departments and their
//! bundle services on loopback. The moving bundle both ways; a field error of the third
//! item caught before anything is sent; a consent for fewer items refused; a department
//! down (back within the item's deadline, and not); withdrawal; another citizen's bundle.
//! The crash of the bundle service is in `bundle_crash.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tongban_bundle::Retry;
use tongban_devkit::bundles::{
    as_citizen, citizen_applications, example_form, grant, moving_request, Bundles,
};
use tongban_devkit::demo::demo_subject;
use tongban_devkit::departments::Departments;
use tongban_proto::bundle::v1::bundle_service_client::BundleServiceClient;
use tongban_proto::bundle::v1::{
    BundleState, BundleStatus, GetStatusRequest, ItemState, ListMineRequest, SubmitRequest,
    WithdrawRequest,
};
use tongban_proto::crosscity::v2::{Application, State};
use tongban_tests::Fed;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const MOVING: [&str; 4] = ["JQ-13", "JQ-03", "JQ-08", "JQ-11"];

struct World {
    f: Fed,
    departments: Departments,
    bundles: Bundles,
}

impl World {
    async fn start(step: Duration, retry: Retry) -> World {
        // The bundle service's and the nodes' warnings, shown with a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn,tongban_bundle=debug")
            .try_init();
        // Boxed: starting a federation is a large future.
        let f = Box::pin(Fed::start(&["jinan", "qingdao"])).await;
        let departments = Box::pin(Departments::start(&f.fed, step)).await.unwrap();
        let bundles = Box::pin(Bundles::start(&f.fed, retry)).await.unwrap();
        World {
            f,
            departments,
            bundles,
        }
    }

    async fn client(&self, city: &str) -> BundleServiceClient<Channel> {
        BundleServiceClient::new(self.f.channel(city).await)
    }

    async fn shutdown(self) {
        self.bundles.stop().await;
        self.departments.stop().await;
        self.f.shutdown().await;
    }
}

fn retry_for(d: Duration) -> Retry {
    Retry {
        retry_for: d,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
    }
}

/// The moving bundle of a citizen of `home` moving to `target`, with the example form.
fn moving(home: &str, target: &str, citizen: &str, consent: &str) -> SubmitRequest {
    let catalog = tongban_catalog::Catalog::embedded().unwrap();
    moving_request(&catalog, (home, target), citizen, consent).unwrap()
}

/// Follows bundle `id` until it is final (or `until` holds), as its citizen.
async fn follow_until(
    w: &World,
    home: &str,
    citizen: &str,
    id: &str,
    until: impl Fn(&BundleStatus) -> bool,
) -> BundleStatus {
    let mut client = w.client(home).await;
    let req = as_citizen(
        &w.f.fed,
        home,
        citizen,
        GetStatusRequest {
            bundle_id: id.into(),
        },
    )
    .unwrap();
    let mut stream = client.watch_status(req).await.unwrap().into_inner();
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = match stream.message().await {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => panic!("watching bundle {id} failed: {e:?}; last status {last:#?}"),
            };
            let done = until(&s) || s.state != BundleState::InProgress as i32;
            last = Some(s);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "bundle {id} did not get there: {last:#?}"
    );
    last.unwrap()
}

async fn follow(w: &World, home: &str, citizen: &str, id: &str) -> BundleStatus {
    follow_until(w, home, citizen, id, |_| false).await
}

/// The citizen's applications for item `code` at the department of `target`, as they see
/// them with their own token.
async fn applications(
    w: &World,
    home: &str,
    target: &str,
    citizen: &str,
    code: &str,
) -> Vec<Application> {
    citizen_applications(&w.f.fed, (home, target), citizen, code)
        .await
        .unwrap()
}

fn item<'a>(s: &'a BundleStatus, code: &str) -> &'a tongban_proto::bundle::v1::ItemStatus {
    s.items.iter().find(|i| i.code == code).unwrap()
}

async fn start_moving(w: &World, home: &str, target: &str, citizen: &str) -> BundleStatus {
    let (_, consent) = grant(&w.f.fed, home, citizen, target, &MOVING)
        .await
        .unwrap();
    let req = as_citizen(
        &w.f.fed,
        home,
        citizen,
        moving(home, target, citizen, &consent),
    )
    .unwrap();
    w.client(home).await.submit(req).await.unwrap().into_inner()
}

/// One form, one consent, one status: the four items of the move are submitted to the
/// target city's departments in order (household registration first), each completed with
/// its signed result; the due date is the latest of theirs; each department holds exactly
/// one application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moving_bundle_completes_both_ways() {
    let w = World::start(Duration::from_millis(20), Retry::default()).await;
    let trust = tongban_gateway::trust::TrustBundle::load(&w.f.fed.certs.trust_bundle).unwrap();
    let jinan_citizen = demo_subject("37010219850312002");
    let qingdao_citizen = demo_subject("37020219920704003");
    for (home, target, citizen) in [
        ("jinan", "qingdao", jinan_citizen.as_str()),
        ("qingdao", "jinan", qingdao_citizen.as_str()),
    ] {
        let started = start_moving(&w, home, target, citizen).await;
        assert_eq!(started.state, BundleState::InProgress as i32);
        assert_eq!(started.items.len(), 4);
        let s = follow(&w, home, citizen, &started.bundle_id).await;
        assert_eq!(s.state, BundleState::Completed as i32, "{s:#?}");
        assert!(s.action.is_empty(), "{:?}", s.action);
        let mut dues = Vec::new();
        for code in MOVING {
            let i = item(&s, code);
            assert_eq!(i.state, ItemState::Completed as i32, "{code}: {i:#?}");
            let app = i.application.as_ref().unwrap();
            assert_eq!(app.provider_city, target, "{code}");
            assert_eq!(app.state, State::Completed as i32);
            let doc = tongban_crosscity::ecert::verify(
                &app.result,
                &trust,
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
            assert_eq!(doc.item.code, code);
            assert_eq!(doc.issuer.city, target);
            dues.push(app.due_date.clone());
            // Exactly one application at the department, the bundle's.
            let at = applications(&w, home, target, citizen, code).await;
            assert_eq!(at.len(), 1, "{code}: {at:#?}");
            assert_eq!(at[0].application_id, app.application_id);
        }
        assert_eq!(s.due_date, dues.iter().max().unwrap().clone());
        // Household registration first: the others were received after it completed.
        let household = item(&s, "JQ-13").application.clone().unwrap();
        let completed_at = household.history.last().unwrap().at_ms;
        for code in ["JQ-03", "JQ-08", "JQ-11"] {
            let app = item(&s, code).application.clone().unwrap();
            assert!(
                app.received_at_ms >= completed_at,
                "{code} before JQ-13 completed"
            );
        }
        // The citizen's own list.
        let mine = w
            .client(home)
            .await
            .list_mine(as_citizen(&w.f.fed, home, citizen, ListMineRequest {}).unwrap())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.bundles.len(), 1);
        assert_eq!(mine.bundles[0].bundle_id, s.bundle_id);
    }
    w.shutdown().await;
}

/// Another citizen (OWASP API1) sees and withdraws nothing of someone else's bundle: the
/// answer is the same as for a bundle that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_citizen_neither_sees_nor_withdraws_a_bundle() {
    let w = World::start(Duration::from_millis(300), Retry::default()).await;
    let me = demo_subject("37010219850312002");
    let other = demo_subject("37010219900101003");
    let s = start_moving(&w, "jinan", "qingdao", &me).await;
    let mut client = w.client("jinan").await;
    let get = as_citizen(
        &w.f.fed,
        "jinan",
        &other,
        GetStatusRequest {
            bundle_id: s.bundle_id.clone(),
        },
    )
    .unwrap();
    let e = client.get_status(get).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let withdraw = as_citizen(
        &w.f.fed,
        "jinan",
        &other,
        WithdrawRequest {
            bundle_id: s.bundle_id.clone(),
            reason: String::new(),
        },
    )
    .unwrap();
    let e = client.withdraw(withdraw).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let mine = client
        .list_mine(as_citizen(&w.f.fed, "jinan", &other, ListMineRequest {}).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert!(mine.bundles.is_empty());
    // A system of the city naming the citizen, with no consent: the node refuses it.
    let mut req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        GetStatusRequest {
            bundle_id: s.bundle_id.clone(),
        },
    )
    .unwrap();
    let hrss = w.f.fed.token("jinan", "hrss").unwrap();
    req.metadata_mut()
        .insert("authorization", format!("Bearer {hrss}").parse().unwrap());
    let e = client.get_status(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The owner still sees it, and it is untouched.
    let mine = follow(&w, "jinan", &me, &s.bundle_id).await;
    assert_eq!(mine.state, BundleState::Completed as i32);
    w.shutdown().await;
}

/// A bad account number (a rule of JQ-08, the third item) and a missing material (of
/// JQ-13) are both reported, naming the item, before anything is submitted anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_error_of_the_third_item_is_caught_before_anything_is_sent() {
    let w = World::start(Duration::from_millis(20), Retry::default()).await;
    let me = demo_subject("37010219850312002");
    let (_, consent) = grant(&w.f.fed, "jinan", &me, "qingdao", &MOVING)
        .await
        .unwrap();
    let mut msg = moving("jinan", "qingdao", &me, &consent);
    msg.fields
        .insert("provident_fund_account".into(), "12AB".into());
    msg.fields.insert("shoe_size".into(), "42".into());
    msg.materials.retain(|m| m.kind != "housing-proof");
    let req = as_citizen(&w.f.fed, "jinan", &me, msg).unwrap();
    let e = w.client("jinan").await.submit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let details = e.get_error_details();
    let fields: Vec<(String, String)> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect();
    let named = |f: &str| fields.iter().find(|(x, _)| x == f).cloned();
    let (_, why) = named("JQ-08.account_number").unwrap_or_else(|| panic!("{fields:#?}"));
    assert!(why.contains("provident_fund_account"), "{why}");
    assert!(named("JQ-13.materials").is_some(), "{fields:#?}");
    assert!(named("fields.shoe_size").is_some(), "{fields:#?}");
    for code in MOVING {
        assert!(
            applications(&w, "jinan", "qingdao", &me, code)
                .await
                .is_empty(),
            "{code} was submitted"
        );
    }
    w.shutdown().await;
}

/// One consent naming exactly the bundle's items: one for fewer items (or more) is refused
/// before anything is sent, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_for_a_subset_of_the_items_is_refused() {
    let w = World::start(Duration::from_millis(20), Retry::default()).await;
    let me = demo_subject("37010219850312002");
    let mut client = w.client("jinan").await;
    let (_, subset) = grant(&w.f.fed, "jinan", &me, "qingdao", &["JQ-13", "JQ-03"])
        .await
        .unwrap();
    let req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        moving("jinan", "qingdao", &me, &subset),
    )
    .unwrap();
    let e = client.submit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("missing JQ-08, JQ-11"),
        "{}",
        e.message()
    );
    let (_, superset) = grant(
        &w.f.fed,
        "jinan",
        &me,
        "qingdao",
        &["JQ-13", "JQ-03", "JQ-08", "JQ-11", "JQ-12"],
    )
    .await
    .unwrap();
    let req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        moving("jinan", "qingdao", &me, &superset),
    )
    .unwrap();
    let e = client.submit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("JQ-12"), "{}", e.message());
    // Someone else's consent, and one for the other city.
    let other = demo_subject("37010219900101003");
    let (_, theirs) = grant(&w.f.fed, "jinan", &other, "qingdao", &MOVING)
        .await
        .unwrap();
    let req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        moving("jinan", "qingdao", &me, &theirs),
    )
    .unwrap();
    let e = client.submit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let (_, elsewhere) = grant(&w.f.fed, "jinan", &me, "jinan", &MOVING)
        .await
        .unwrap();
    let req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        moving("jinan", "qingdao", &me, &elsewhere),
    )
    .unwrap();
    let e = client.submit(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("target city"), "{}", e.message());
    for code in MOVING {
        assert!(applications(&w, "jinan", "qingdao", &me, code)
            .await
            .is_empty());
    }
    w.shutdown().await;
}

/// Qingdao's provident fund centre is down when its item is due: the bundle retries it
/// (its deadline is long), and once the centre is back the bundle completes, with one
/// application there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_down_mid_bundle_is_retried_until_it_returns() {
    let mut w = World::start(
        Duration::from_millis(20),
        retry_for(Duration::from_secs(60)),
    )
    .await;
    let me = demo_subject("37010219850312002");
    let gjj = w
        .departments
        .running
        .iter()
        .position(|d| d.city == "qingdao" && d.org == "gjj");
    w.departments.running.remove(gjj.unwrap()).stop().await;
    let s = start_moving(&w, "jinan", "qingdao", &me).await;
    // JQ-08 tried, and tried again.
    let retrying = follow_until(&w, "jinan", &me, &s.bundle_id, |s| {
        item(s, "JQ-08").attempts >= 2
    })
    .await;
    let i = item(&retrying, "JQ-08");
    assert_eq!(i.state, ItemState::Submitting as i32, "{i:#?}");
    assert!(i.reason.contains("not reached yet"), "{}", i.reason);
    assert_eq!(retrying.state, BundleState::InProgress as i32);
    // Back: a new process on the same store.
    let d = tongban_devkit::departments::RunningDepartment::start(
        &w.f.fed,
        "qingdao",
        "gjj",
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    tongban_devkit::departments::register(&w.f.fed, &d)
        .await
        .unwrap();
    w.departments.running.push(d);
    let s = follow(&w, "jinan", &me, &s.bundle_id).await;
    assert_eq!(s.state, BundleState::Completed as i32, "{s:#?}");
    assert_eq!(
        applications(&w, "jinan", "qingdao", &me, "JQ-08")
            .await
            .len(),
        1
    );
    w.shutdown().await;
}

/// The same department stays down past the item's deadline: the bundle ends partial, the
/// other items completed, JQ-08 failed with what the citizen must do; never "completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_down_past_the_deadline_leaves_the_bundle_partial() {
    let mut w = World::start(Duration::from_millis(20), retry_for(Duration::from_secs(1))).await;
    let me = demo_subject("37010219850312002");
    let gjj = w
        .departments
        .running
        .iter()
        .position(|d| d.city == "qingdao" && d.org == "gjj");
    w.departments.running.remove(gjj.unwrap()).stop().await;
    let s = start_moving(&w, "jinan", "qingdao", &me).await;
    let s = follow(&w, "jinan", &me, &s.bundle_id).await;
    assert_eq!(s.state, BundleState::Partial as i32, "{s:#?}");
    let failed = item(&s, "JQ-08");
    assert_eq!(failed.state, ItemState::Failed as i32, "{failed:#?}");
    assert!(failed.attempts >= 2, "{failed:#?}");
    assert!(
        failed.reason.contains("could not be reached"),
        "{}",
        failed.reason
    );
    assert!(
        failed.action.contains("apply for it again"),
        "{}",
        failed.action
    );
    assert!(
        s.action.iter().any(|a| a.starts_with("JQ-08:")),
        "{:?}",
        s.action
    );
    for code in ["JQ-13", "JQ-03", "JQ-11"] {
        assert_eq!(item(&s, code).state, ItemState::Completed as i32, "{code}");
    }
    w.shutdown().await;
}

/// Withdrawing a bundle mid-way withdraws the application already with its department and
/// sends nothing more; a second withdrawal is refused as final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_bundle_withdraws_what_was_sent_and_sends_nothing_more() {
    let w = World::start(Duration::from_millis(400), Retry::default()).await;
    let me = demo_subject("37010219850312002");
    let s = start_moving(&w, "jinan", "qingdao", &me).await;
    follow_until(&w, "jinan", &me, &s.bundle_id, |s| {
        item(s, "JQ-13").state == ItemState::Submitted as i32
    })
    .await;
    let mut client = w.client("jinan").await;
    let req = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        WithdrawRequest {
            bundle_id: s.bundle_id.clone(),
            reason: "moving cancelled".into(),
        },
    )
    .unwrap();
    let out = client.withdraw(req).await.unwrap().into_inner();
    assert_eq!(out.state, BundleState::Withdrawn as i32, "{out:#?}");
    let household = item(&out, "JQ-13");
    assert_eq!(
        household.state,
        ItemState::Withdrawn as i32,
        "{household:#?}"
    );
    let at = applications(&w, "jinan", "qingdao", &me, "JQ-13").await;
    assert_eq!(at.len(), 1);
    assert_eq!(at[0].state, State::Withdrawn as i32);
    assert!(at[0]
        .history
        .last()
        .unwrap()
        .note
        .contains("moving cancelled"));
    for code in ["JQ-03", "JQ-08", "JQ-11"] {
        assert_eq!(
            item(&out, code).state,
            ItemState::Withdrawn as i32,
            "{code}"
        );
        assert!(item(&out, code).application.is_none());
        assert!(applications(&w, "jinan", "qingdao", &me, code)
            .await
            .is_empty());
    }
    let again = as_citizen(
        &w.f.fed,
        "jinan",
        &me,
        WithdrawRequest {
            bundle_id: s.bundle_id.clone(),
            reason: String::new(),
        },
    )
    .unwrap();
    let e = client.withdraw(again).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    w.shutdown().await;
}

/// Opening a food business: JQ-22 takes the enterprise's credit code from JQ-19's signed
/// result (verified before it is used); without food, the optional JQ-22 is left out and
/// the consent names JQ-19 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_item_takes_a_field_from_an_earlier_result_and_optional_items_can_be_skipped() {
    let w = World::start(Duration::from_millis(20), Retry::default()).await;
    let me = demo_subject("37010219850312002");
    let catalog = tongban_catalog::Catalog::embedded().unwrap();
    let bundle = catalog.bundle("JQB-02").unwrap();
    let (fields, materials) = example_form(&catalog, bundle);
    let (_, consent) = grant(&w.f.fed, "jinan", &me, "qingdao", &["JQ-19", "JQ-22"])
        .await
        .unwrap();
    let msg = SubmitRequest {
        bundle_code: "JQB-02".into(),
        target_city: "qingdao".into(),
        applicant_id: me.clone(),
        fields: fields.clone(),
        materials: materials.clone(),
        skip: Vec::new(),
        consent,
        idempotency_key: String::new(),
    };
    let s = w
        .client("jinan")
        .await
        .submit(as_citizen(&w.f.fed, "jinan", &me, msg).unwrap())
        .await
        .unwrap()
        .into_inner();
    let s = follow(&w, "jinan", &me, &s.bundle_id).await;
    assert_eq!(s.state, BundleState::Completed as i32, "{s:#?}");
    let trust = tongban_gateway::trust::TrustBundle::load(&w.f.fed.certs.trust_bundle).unwrap();
    let registered = tongban_crosscity::ecert::verify(
        &item(&s, "JQ-19").application.as_ref().unwrap().result,
        &trust,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let code = registered.details["credit_code"].clone();
    let food = tongban_crosscity::ecert::verify(
        &item(&s, "JQ-22").application.as_ref().unwrap().result,
        &trust,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert_eq!(food.details["credit_code"], code);
    // No food: JQ-22 skipped, and a consent for JQ-19 alone.
    let (_, consent) = grant(&w.f.fed, "jinan", &me, "qingdao", &["JQ-19"])
        .await
        .unwrap();
    let msg = SubmitRequest {
        bundle_code: "JQB-02".into(),
        target_city: "qingdao".into(),
        applicant_id: me.clone(),
        fields: fields
            .into_iter()
            .filter(|(k, _)| !k.starts_with("food_"))
            .collect(),
        materials: materials
            .into_iter()
            .filter(|m| m.kind != "premises-layout" && m.kind != "food-safety-plan")
            .collect(),
        skip: vec!["JQ-22".into()],
        consent,
        idempotency_key: "business-2".into(),
    };
    let mut client = w.client("jinan").await;
    let first = client
        .submit(as_citizen(&w.f.fed, "jinan", &me, msg.clone()).unwrap())
        .await
        .unwrap()
        .into_inner();
    // The same key again: the same bundle, not a second one.
    let again = client
        .submit(as_citizen(&w.f.fed, "jinan", &me, msg).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.bundle_id, first.bundle_id);
    let s = follow(&w, "jinan", &me, &first.bundle_id).await;
    assert_eq!(s.state, BundleState::Completed as i32, "{s:#?}");
    assert_eq!(item(&s, "JQ-22").state, ItemState::Skipped as i32);
    assert_eq!(
        applications(&w, "jinan", "qingdao", &me, "JQ-19")
            .await
            .len(),
        2
    );
    w.shutdown().await;
}
