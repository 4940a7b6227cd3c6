//! Refusals carry `google.rpc` details (issue 8): an `ErrorInfo` with a stable reason and the
//! `tongban` domain on every refusal, `BadRequest` field violations naming the metadata at
//! fault, `RetryInfo` on a rate limit — from the proxy and from the control-plane APIs alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tongban_devkit::local::loopback_limits;
use tongban_gateway::config::Limits;
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::ListRequest;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{authorize, Fed};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn reason(s: &Status) -> String {
    let d = s.get_error_details();
    let info = d
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "tongban");
    info.reason.clone()
}

fn violated_fields(s: &Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn submit(f: &Fed, to: &str, edit: impl FnOnce(&mut tonic::metadata::MetadataMap)) -> Status {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = f.req("jinan", msg, Some(to), Duration::from_secs(5));
    edit(req.metadata_mut());
    f.crosscity("jinan")
        .await
        .submit(req)
        .await
        .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_error_info_field_violations_and_retry_info() {
    let mut limits: Limits = loopback_limits();
    (limits.caller_rate_per_s, limits.caller_burst) = (1, 5);
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;

    // A malformed purpose: INVALID_ARGUMENT, the field named.
    let s = submit(&f, "qingdao", |m| {
        m.insert(
            "x-tongban-purpose",
            MetadataValue::from_static("case handling!"),
        );
    })
    .await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(reason(&s), "INVALID_METADATA");
    assert_eq!(violated_fields(&s), ["x-tongban-purpose"]);

    // A bad subject id: the subject field.
    let s = submit(&f, "qingdao", |m| {
        m.insert("x-tongban-subject", MetadataValue::from_static("123"));
    })
    .await;
    assert_eq!(violated_fields(&s), ["x-tongban-subject"]);

    // An unknown city: NOT_FOUND with its reason, no field violation.
    let s = submit(&f, "beijing", |_| {}).await;
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "UNKNOWN_CITY")
    );
    assert!(violated_fields(&s).is_empty());

    // No token: UNAUTHENTICATED, TOKEN_MISSING.
    let s = submit(&f, "qingdao", |m| {
        m.remove("authorization");
    })
    .await;
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::Unauthenticated, "TOKEN_MISSING")
    );

    // Past the burst: RESOURCE_EXHAUSTED with a RetryInfo of at most a second (1 call/s).
    let mut limited = None;
    for _ in 0..10 {
        let s = submit(&f, "beijing", |_| {}).await;
        if s.code() == Code::ResourceExhausted {
            limited = Some(s);
            break;
        }
    }
    let s = limited.expect("the rate limit was reached");
    assert_eq!(reason(&s), "RATE_LIMITED");
    let delay = s
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");

    // The control plane speaks the same: a Consent API call without the role.
    let mut req = tonic::Request::new(ListRequest {
        subject: tongban_devkit::demo::demo_subject("37010219850312002"),
    });
    authorize(&mut req, &f.fed.token("jinan", "hrss").unwrap());
    let s = ConsentClient::new(f.channel("jinan").await)
        .list(req)
        .await
        .unwrap_err();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "NOT_ALLOWED")
    );
    // And a malformed subject there: the request field named.
    let mut req = tonic::Request::new(ListRequest {
        subject: "123".into(),
    });
    authorize(&mut req, &f.fed.token("jinan", "hrss").unwrap());
    let s = ConsentClient::new(f.channel("jinan").await)
        .list(req)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&s), ["subject"]);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_status_reads_the_details() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let addr = f.fed.city("jinan").unwrap().config.caller_addr.to_string();
    let token = f.fed.token("jinan", "hrss").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/status_details.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tongban_tests::python())
            .arg(script)
            .arg(addr)
            .arg(token)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["reason"], "INVALID_METADATA", "{v}");
    assert_eq!(v["domain"], "tongban", "{v}");
    assert_eq!(v["fields"], serde_json::json!(["x-tongban-purpose"]), "{v}");
    f.shutdown().await;
}
