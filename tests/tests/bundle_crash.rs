//! The bundle service as a process (`tongban provider bundle`), killed mid-bundle: once
//! right after a department took an item and before the bundle recorded it (abort, as
//! kill -9: the window the idempotency keys exist for), once with SIGKILL while items are
//! with their departments. Each restart resumes from the store; in the end the bundle is
//! complete and every department holds exactly one application of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::time::Duration;

use tongban_devkit::bundles::{
    as_citizen, citizen_applications, grant, moving_request, BUNDLE_ORG,
};
use tongban_devkit::demo::demo_subject;
use tongban_devkit::departments::Departments;
use tongban_proto::bundle::v1::bundle_service_client::BundleServiceClient;
use tongban_proto::bundle::v1::{
    BundleState, BundleStatus, GetStatusRequest, ItemState, ListBundlesRequest,
};
use tongban_proto::crosscity::v2::Application;
use tongban_tests::process::ChildProcess;
use tongban_tests::Fed;

const MOVING: [&str; 4] = ["JQ-13", "JQ-03", "JQ-08", "JQ-11"];

fn start_service(f: &Fed, fault: Option<&str>) -> ChildProcess {
    let data = f.dir.path().join("bundle-process");
    let certs = f.dir.path().join("certs");
    let node = f.fed.city("jinan").unwrap().caller_url();
    let token = f.fed.token("jinan", BUNDLE_ORG).unwrap();
    let args: Vec<&OsStr> = vec![
        OsStr::new("provider"),
        OsStr::new("bundle"),
        OsStr::new("--city"),
        OsStr::new("jinan"),
        OsStr::new("--org"),
        OsStr::new(BUNDLE_ORG),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--certs"),
        certs.as_os_str(),
        OsStr::new("--node"),
        OsStr::new(&node),
        OsStr::new("--retry-for-s"),
        OsStr::new("60"),
    ];
    let mut env = vec![("TONGBAN_TOKEN", token.as_str())];
    if let Some(code) = fault {
        env.push(("TONGBAN_FAULT_ABORT_AFTER_SUBMIT", code));
    }
    ChildProcess::spawn_env(&args, &env, "bundle service started")
}

/// Retries `call` until the node routes it to the (re)started service, for up to 20 s.
async fn until_served<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::NotFound),
                    "{s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("the bundle service was not reachable: {s:?}"),
        }
    }
}

async fn status(f: &Fed, me: &str, id: &str) -> BundleStatus {
    let client = BundleServiceClient::new(f.channel("jinan").await);
    until_served(|| {
        let req = as_citizen(
            &f.fed,
            "jinan",
            me,
            GetStatusRequest {
                bundle_id: id.to_string(),
            },
        )
        .unwrap();
        let mut c = client.clone();
        async move { c.get_status(req).await.map(|r| r.into_inner()) }
    })
    .await
}

/// Polls the status until `pred` holds (at most 30 s).
async fn wait_for(
    f: &Fed,
    me: &str,
    id: &str,
    pred: impl Fn(&BundleStatus) -> bool,
) -> BundleStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(f, me, id).await;
        if pred(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn item_state(s: &BundleStatus, code: &str) -> i32 {
    s.items.iter().find(|i| i.code == code).unwrap().state
}

async fn applications(f: &Fed, me: &str, code: &str) -> Vec<Application> {
    citizen_applications(&f.fed, ("jinan", "qingdao"), me, code)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_bundle_it_resumes_and_submits_no_item_twice() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let departments = Departments::start(&f.fed, Duration::from_millis(150))
        .await
        .unwrap();
    let me = demo_subject("37010219850312002");

    // 1. The service aborts right after Qingdao's hrss took JQ-03.
    let mut first = start_service(&f, Some("JQ-03"));
    let client = BundleServiceClient::new(f.channel("jinan").await);
    until_served(|| {
        let req = as_citizen(&f.fed, "jinan", &me, ListBundlesRequest {}).unwrap();
        let mut c = client.clone();
        async move { c.list_bundles(req).await }
    })
    .await;
    let (_, consent) = grant(&f.fed, "jinan", &me, "qingdao", &MOVING)
        .await
        .unwrap();
    let catalog = tongban_catalog::Catalog::embedded().unwrap();
    let msg = moving_request(&catalog, ("jinan", "qingdao"), &me, &consent).unwrap();
    let started = client
        .clone()
        .submit(as_citizen(&f.fed, "jinan", &me, msg).unwrap())
        .await
        .unwrap()
        .into_inner();
    let id = started.bundle_id;
    let exit = tokio::task::spawn_blocking(move || {
        let s = first.child.wait().unwrap();
        drop(first);
        s
    });
    let exit = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("the fault point was reached")
        .unwrap();
    assert!(!exit.success(), "{exit:?}");
    // The department has it; the bundle's store does not know yet.
    let taken = applications(&f, &me, "JQ-03").await;
    assert_eq!(taken.len(), 1);

    // 2. Restarted: it submits JQ-03 again with the same key and gets the same
    // application. Killed with SIGKILL while the items are with their departments.
    let mut second = start_service(&f, None);
    let s = wait_for(&f, &me, &id, |s| {
        item_state(s, "JQ-03") >= ItemState::Submitted as i32
    })
    .await;
    let jq03 = s.items.iter().find(|i| i.code == "JQ-03").unwrap();
    assert_eq!(
        jq03.application.as_ref().unwrap().application_id,
        taken[0].application_id
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    drop(second);

    // 3. Restarted again: the bundle completes.
    let _third = start_service(&f, None);
    let s = wait_for(&f, &me, &id, |s| s.state != BundleState::InProgress as i32).await;
    assert_eq!(s.state, BundleState::Completed as i32, "{s:#?}");
    for code in MOVING {
        let at = applications(&f, &me, code).await;
        assert_eq!(at.len(), 1, "{code}: {at:#?}");
        let i = s.items.iter().find(|i| i.code == code).unwrap();
        assert_eq!(
            i.application.as_ref().unwrap().application_id,
            at[0].application_id
        );
    }
    departments.stop().await;
    f.shutdown().await;
}
