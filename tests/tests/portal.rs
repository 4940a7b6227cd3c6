#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The citizens' portal in a real browser: `tongban demo --serve` runs the two-city
//! federation, the dev sign-in and the portal's site; `services/portal/e2e` drives Debian's
//! Chromium through the whole story (see that script); this test checks what it saw, verifies
//! the downloaded certificate with `tongban cert verify`, and greps the demo's logs for the
//! tokens and the clear resident id. Screenshots: `target/portal-screens/`.
//!
//! `tests/setup-portal.sh` (run by `tests/run.sh`) installs Chromium and builds the portal;
//! without Chromium the test says so and skips.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tongban_devkit::idp::{kid, DevIdp};
use tongban_devkit::oidc::dev_citizens;
use tongban_tests::tongban_bin;

const CHROMIUM: &str = "/usr/bin/chromium";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the demo printed that the browser test needs.
#[derive(Default, Debug)]
struct Printed {
    portal: Option<String>,
    qingdao_caller: Option<String>,
    certs: Option<String>,
}

fn parse(line: &str, p: &mut Printed) {
    if let Some(rest) = line.strip_prefix("citizens' portal of jinan") {
        p.portal = rest.split_whitespace().last().map(str::to_string);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"qingdao") && words.get(1) == Some(&"node:") {
        p.qingdao_caller = words.get(3).map(|a| format!("http://{a}"));
    }
    if let Some(i) = words.iter().position(|w| *w == "--certs") {
        p.certs = words.get(i + 1).map(|s| s.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED: no Chromium at {CHROMIUM} (tests/setup-portal.sh installs Debian's chromium)"
        );
        return;
    }
    let portal = root().join("services/portal");
    let e2e = portal.join(".e2e/portal.e2e.mjs");
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: no Node.js to build the portal and drive the browser (tests/setup-portal.sh installs Debian's nodejs)");
        return;
    }
    assert!(
        e2e.exists() && portal.join("dist/index.html").exists(),
        "the portal is not built: bash tests/setup-portal.sh"
    );
    // At debug level, so that the grep of its logs below has something to search.
    let mut demo = Command::new(tongban_bin())
        .args([
            "--log",
            "debug,h2=info,hyper=info,hyper_util=info,tower=info",
        ])
        // Slower back offices (400 ms a step): a bundle stays in progress long enough to be
        // withdrawn from the page.
        .args(["demo", "--serve", "--step-ms", "400", "--portal-dir"])
        .arg(portal.join("dist"))
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    let kept = logs.clone();
    let stderr = demo.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            kept.lock().unwrap().push_str(&line);
            kept.lock().unwrap().push('\n');
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    let out_lines = Arc::new(Mutex::new(String::new()));
    let out_kept = out_lines.clone();
    std::thread::spawn(move || {
        let mut p = Printed::default();
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out_kept.lock().unwrap().push_str(&line);
            out_kept.lock().unwrap().push('\n');
            parse(&line, &mut p);
            if !sent && p.portal.is_some() && p.qingdao_caller.is_some() && p.certs.is_some() {
                let _ = tx.send(std::mem::take(&mut p));
                sent = true;
            }
        }
    });
    let printed = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(p) => p,
        Err(e) => {
            let status = demo.try_wait();
            let log = logs.lock().unwrap().clone();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "the demo did not print the portal's address ({e}); demo {status:?}\nstdout:\n{}\nlast log lines:\n{}",
                out_lines.lock().unwrap(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    let certs = PathBuf::from(printed.certs.unwrap());

    // Qingdao's hrss token, and an expired citizen token (beyond the node's leeway).
    let out = Command::new(tongban_bin())
        .args(["token", "issue", "--certs"])
        .arg(&certs)
        .args(["--city", "qingdao", "--org", "hrss"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let qingdao_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let citizen = dev_citizens("jinan").remove(0).resident_id;
    let idp = DevIdp::load("jinan", &kid("jinan", 1), &certs.join("jinan/idp.key")).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = idp.claims("portal", &["citizen".into()], Duration::ZERO, &citizen);
    claims["iat"] = (now - 3600).into();
    claims["nbf"] = (now - 3600).into();
    claims["exp"] = (now - 600).into();
    let expired = idp.sign_claims(&claims).unwrap();

    let screens = root().join("target/portal-screens");
    let args = serde_json::json!({
        "portal": printed.portal.unwrap(),
        "qingdaoCaller": printed.qingdao_caller.unwrap(),
        "qingdaoToken": qingdao_token,
        "subject": citizen,
        "expiredToken": expired,
        "screens": screens,
        "chromium": CHROMIUM,
    });
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&e2e)
            .arg(args.to_string())
            .current_dir(root().join("services/portal"))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the browser test failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json from the e2e");
    eprintln!("{r:#}");

    assert_eq!(r["items"], 27, "{r}");
    assert!(r["who"].as_str().unwrap().contains("002X"), "{r}");
    // The provider's own message for the bad phone number, at the field.
    assert!(r["phoneError"].as_str().unwrap().contains("phone"), "{r}");
    assert!(r["history"].as_u64().unwrap() >= 4, "{r}");
    assert!(r["applications"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["consentsActive"], 1, "{r}");
    // A consent names its items: none chosen is refused in the page, and the row shows the
    // item by name.
    assert!(r["noItem"].as_str().unwrap().contains("事项"), "{r}");
    assert!(
        r["consentRow"]
            .as_str()
            .unwrap()
            .contains("企业职工基本养老保险关系转移接续 (JQ-03)"),
        "{r}"
    );
    // The access log names the official (the id Qingdao's identity provider issued), the
    // item by name and the purpose in the citizen's language.
    assert_eq!(r["allowedPerson"], "hrss-system", "{r}");
    assert_eq!(
        r["allowedItem"], "企业职工基本养老保险关系转移接续 (JQ-03)",
        "{r}"
    );
    assert_eq!(r["allowedPurpose"], "办理业务", "{r}");
    // The grant and the revocation the citizen made in the portal, recorded in Jinan's
    // chain, are in the log as the citizen's own acts ("本人"), beside the consents the demo's
    // service centre granted for them.
    let own = |key: &str, what: &str| {
        r[key]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_str())
            .filter(|x| x.contains("本人") && x.contains(what) && x.contains("(JQ-03)"))
            .count()
    };
    assert_eq!(own("grantRows", "您授予了此授权"), 1, "{r}");
    assert_eq!(own("revokeRows", "您撤回了此授权"), 1, "{r}");
    assert_eq!(r["allowed"]["ok"], true, "{r}");
    assert_eq!(r["refused"]["ok"], false, "{r}");
    assert_eq!(r["refused"]["code"], 7, "PERMISSION_DENIED: {r}");
    assert_eq!(
        r["refusedInLog"], 1,
        "the refused call is in the access log: {r}"
    );
    assert_eq!(r["english"], "Who looked at my data", "{r}");
    assert_eq!(
        r["storage"],
        serde_json::json!({"local": 0, "session": 0, "cookie": ""}),
        "{r}"
    );
    assert!(
        r["expired"].as_str().unwrap().contains("登录已过期")
            || r["expired"].as_str().unwrap().contains("expired"),
        "{r}"
    );
    // The second citizen sees nothing of the first's.
    assert!(r["secondWho"].as_str().unwrap().contains("0134"), "{r}");
    assert_eq!(r["secondApplications"], 0, "{r}");
    assert_eq!(r["secondConsents"], 0, "{r}");
    // Their access log may hold the portal's reads of their own data (consent `own-data`,
    // shown "本人"), and nothing else: no access to the first citizen's data.
    assert!(r["secondAccess"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["secondAccessNotOwn"], serde_json::json!([]), "{r}");
    assert_eq!(r["pageErrors"], serde_json::json!([]), "{r}");
    // axe-core finds no serious or critical WCAG 2 A/AA problem on any page.
    for (page, found) in r["accessibility"].as_object().unwrap() {
        assert_eq!(found, &serde_json::json!([]), "{page}: {found}");
    }
    assert_eq!(r["accessibility"].as_object().unwrap().len(), 5, "{r}");
    assert_eq!(r["steps"].as_array().unwrap().len(), 16, "{r}");
    // The bundles: the three of the catalog; the third service's rule named at the
    // bundle's field before anything was sent; one consent for the four services; all four
    // completed under one status; the second withdrawn, every service with it.
    assert_eq!(r["bundles"], 3, "{r}");
    assert!(
        r["bundleFieldError"]
            .as_str()
            .unwrap()
            .contains("[0-9]{9,15}"),
        "{r}"
    );
    assert_eq!(r["bundleConsentItems"], 4, "{r}");
    assert_eq!(r["bundleItemsCompleted"], 4, "{r}");
    assert_eq!(r["bundleStatus"], "已全部办结", "{r}");
    assert_eq!(r["withdrawnItems"], 4, "{r}");
    assert_eq!(r["myBundles"], 2, "{r}");

    // The certificate the citizen downloaded verifies with the federation's trust bundle.
    let verify = Command::new(tongban_bin())
        .args(["cert", "verify"])
        .arg(r["certificate"].as_str().unwrap())
        .arg("--trust-bundle")
        .arg(certs.join("trust-bundle.toml"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The node logs carry neither the tokens nor the clear resident id.
    let logs = logs.lock().unwrap();
    assert!(
        logs.lines().count() > 100,
        "too few log lines to check: {}",
        logs.lines().count()
    );
    assert!(!logs.contains(&citizen), "a clear resident id in the logs");
    assert!(!logs.contains(&qingdao_token), "a token in the logs");
    assert!(!logs.contains(&expired), "a token in the logs");
}
