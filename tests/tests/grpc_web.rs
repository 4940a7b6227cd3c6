#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web listener: gRPC-Web, binary and text, from an independent client (Python, framed
//! by hand over HTTP/1.1), for the registry's listing and a cross-city service through the
//! proxy; what browsers may not call is refused; CORS answers only the configured origin.

use tongban_devkit::local::dev_token;
use tongban_tests::process::TwoCities;

const PORTAL: &str = "http://127.0.0.1:5173";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_reach_the_node_over_grpc_web_with_cors() {
    let two = TwoCities::start(&format!("[web]\nallowed_origins = [\"{PORTAL}\"]\n")).await;
    two.wait_until_federated().await;
    let token = dev_token(&two.certs, "jinan", "hrss").unwrap();
    let r = tongban_tests::run_python_json(
        "grpc_web_client.py",
        vec![
            tongban_tests::proto_root(),
            two.jinan.web.clone(),
            token,
            PORTAL.to_string(),
        ],
    )
    .await;
    for (key, ct) in [
        ("list_binary", "application/grpc-web+proto"),
        ("list_text", "application/grpc-web-text"),
    ] {
        assert_eq!(r[key]["status"], 0, "{r}");
        assert!(
            r[key]["content_type"].as_str().unwrap().starts_with(ct),
            "{r}"
        );
        assert_eq!(r[key]["cities"], serde_json::json!(["qingdao"]), "{r}");
        assert_eq!(r[key]["allow_origin"], PORTAL, "{r}");
    }
    // Through the transparent proxy, answered by Qingdao's provider.
    assert_eq!(r["submit"]["status"], 0, "{r}");
    assert_eq!(r["submit"]["provider_city"], "qingdao", "{r}");
    assert!(r["submit"]["request_id"].is_string(), "{r}");
    // Registration is not for browsers.
    assert_eq!(r["register"]["status"], 7, "{r}");
    assert!(
        r["register"]["message"]
            .as_str()
            .unwrap()
            .contains("not offered on the web listener"),
        "{r}"
    );
    // A bad token: UNAUTHENTICATED with the reason.
    assert_eq!(r["bad_token"]["status"], 16, "{r}");
    // CORS: the portal's origin is allowed, with the headers a gRPC-Web page sends, and
    // never with credentials; another origin gets no allowance.
    let allowed = &r["preflight_allowed"]["headers"];
    assert_eq!(allowed["access-control-allow-origin"], PORTAL, "{r}");
    let headers = allowed["access-control-allow-headers"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["authorization", "x-grpc-web", "x-tongban-target-city"] {
        assert!(headers.contains(h), "{headers}");
    }
    assert!(
        allowed.get("access-control-allow-credentials").is_none(),
        "{r}"
    );
    let other = &r["preflight_other"]["headers"];
    assert!(other.get("access-control-allow-origin").is_none(), "{r}");
    two.stop().await;
}
