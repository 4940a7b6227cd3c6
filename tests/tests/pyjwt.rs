//! Tokens made by an independent library (PyJWT) are accepted or refused exactly as the
//! Rust-made ones of the same case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tongban_devkit::idp;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{authorize, python, targeted, Fed};
use tonic::metadata::MetadataValue;
use tonic::Code;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn code_of(f: &Fed, token: &str) -> Code {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = targeted(msg, Some("qingdao"), Duration::from_secs(5));
    authorize(&mut req, token);
    req.metadata_mut().insert(
        "x-tongban-purpose",
        MetadataValue::from_static("case-handling"),
    );
    match f.crosscity("jinan").await.submit(req).await {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_tokens_get_the_same_answers_as_rust_tokens() {
    let python = python();
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let files = f.fed.certs.city("jinan").unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/make_tokens.py");
    let key = files.idp_key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(key)
            .arg(idp::kid("jinan", 1))
            .arg("jinan")
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    assert!(
        out.status.success(),
        "make_tokens.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();

    // The same cases, made by the gateway's own code.
    let idp = f.fed.idp("jinan").unwrap();
    let base = idp.claims("hrss", &[], Duration::from_secs(600), "rust-system");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base.clone();
        c[k] = v;
        idp.sign_claims(&c).unwrap()
    };
    let unsigned = |header: serde_json::Value| {
        use base64::Engine as _;
        let e = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.", e(&header), e(&base))
    };
    let mut rust: BTreeMap<&str, String> = BTreeMap::new();
    rust.insert("valid", idp.sign_claims(&base).unwrap());
    rust.insert("expired", with("exp", json!(now() - 3600)));
    rust.insert("not_yet_valid", with("nbf", json!(now() + 3600)));
    rust.insert("wrong_iss", with("iss", json!("https://idp.evil.example")));
    rust.insert("wrong_aud", with("aud", json!("tongban:elsewhere")));
    rust.insert("no_kid", unsigned(json!({"alg": "EdDSA", "typ": "JWT"})));
    let stranger =
        idp::DevIdp::generate("jinan", &format!("{}-retired", idp::kid("jinan", 1))).unwrap();
    rust.insert(
        "unknown_kid",
        stranger
            .issue("hrss", &[], Duration::from_secs(600), "x")
            .unwrap(),
    );
    rust.insert(
        "alg_none",
        unsigned(json!({"alg": "none", "kid": idp::kid("jinan", 1)})),
    );
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(idp::kid("jinan", 1));
    let x = idp.jwk()["x"].as_str().unwrap().to_string();
    rust.insert(
        "hs256_with_public_key",
        jsonwebtoken::encode(
            &hs,
            &base,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap(),
    );

    assert_eq!(
        py.keys().map(String::as_str).collect::<Vec<_>>(),
        rust.keys().copied().collect::<Vec<_>>()
    );
    for (case, py_token) in &py {
        let py_code = code_of(&f, py_token).await;
        let rust_code = code_of(&f, &rust[case.as_str()]).await;
        assert_eq!(
            py_code, rust_code,
            "case {case}: pyjwt {py_code:?}, rust {rust_code:?}"
        );
        let expected = if case == "valid" {
            Code::Ok
        } else {
            Code::Unauthenticated
        };
        assert_eq!(py_code, expected, "case {case}");
    }
    assert_eq!(
        f.provider_calls("qingdao"),
        2,
        "only the two valid tokens got through"
    );
    f.shutdown().await;
}
