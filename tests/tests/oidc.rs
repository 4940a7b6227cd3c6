#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Citizen sign-in at the dev identity provider: OpenID Connect's authorization-code flow
//! with PKCE, run by an independent client (Python, urllib and PyJWT), and the token it gets
//! accepted by the city's node for the citizen's own consents, and no one else's.

use tongban_devkit::oidc::{dev_citizens, OidcSettings, RunningOidc, PORTAL_CLIENT_ID};
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::ListRequest;
use tongban_tests::{authorize, Fed};

const REDIRECT: &str = "http://127.0.0.1:5173/signed-in";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_signs_in_with_pkce_and_the_node_takes_the_token() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let users = dev_citizens("jinan");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let oidc = RunningOidc::start(
        listener,
        f.fed.idp("jinan").unwrap(),
        OidcSettings {
            client_id: PORTAL_CLIENT_ID.into(),
            redirect_uris: vec![REDIRECT.into()],
            org: "portal".into(),
            users: users.clone(),
            token_ttl: std::time::Duration::from_secs(900),
        },
    )
    .unwrap();
    let r = tongban_tests::run_python_json(
        "oidc_pkce.py",
        vec![
            oidc.url.clone(),
            PORTAL_CLIENT_ID.into(),
            REDIRECT.into(),
            "tongban:jinan".into(),
        ],
    )
    .await;
    assert_eq!(
        r["discovery"]["methods"],
        serde_json::json!(["S256"]),
        "{r}"
    );
    assert_eq!(r["sign_in"]["page_status"], 200, "{r}");
    assert_eq!(r["sign_in"]["users"].as_array().unwrap().len(), 2, "{r}");
    // The page shows masked ids only.
    let shown = r["sign_in"]["users"].to_string();
    assert!(!shown.contains(&users[0].resident_id), "{shown}");
    assert_eq!(r["sign_in"]["redirect_status"], 303, "{r}");
    assert_eq!(r["sign_in"]["to_redirect_uri"], true, "{r}");
    assert_eq!(r["sign_in"]["state"], "s-1", "{r}");
    let t = &r["token"];
    assert_eq!(t["status"], 200, "{r}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["sub"], users[0].resident_id.as_str());
    assert_eq!(t["roles"], serde_json::json!(["citizen"]));
    assert_eq!(t["org"], "portal");
    assert_eq!(t["cors"], "http://127.0.0.1:5173");
    for (case, error) in [
        ("reused", "invalid_grant"),
        ("wrong_verifier", "invalid_grant"),
    ] {
        assert_eq!(r[case]["status"], 400, "{case}: {r}");
        assert_eq!(r[case]["error"], error, "{case}: {r}");
    }
    assert!(r["wrong_verifier"]["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier"));
    assert_eq!(r["bad_redirect"]["status"], 400, "{r}");
    assert_eq!(r["bad_redirect"]["says"], true, "{r}");
    assert_eq!(r["no_pkce"]["status"], 400, "{r}");
    assert_eq!(r["no_pkce"]["says"], true, "{r}");
    assert!(r["cors_other"].is_null(), "{r}");

    // The node takes the token: the citizen lists their own consents, not another's.
    let token = t["access_token"].as_str().unwrap();
    let mut consents = ConsentClient::new(f.channel("jinan").await);
    let mut own = tonic::Request::new(ListRequest {
        subject: users[0].resident_id.clone(),
    });
    authorize(&mut own, token);
    consents.list(own).await.unwrap();
    let mut other = tonic::Request::new(ListRequest {
        subject: users[1].resident_id.clone(),
    });
    authorize(&mut other, token);
    let e = consents.list(other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    oidc.stop().await;
    f.shutdown().await;
}
