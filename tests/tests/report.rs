//! The regulators' report (监测评估) on synthetic traffic with known counts: every indicator
//! equals what was sent, the audit's side reconciles with `tongban audit query`, cells of
//! fewer than five citizens are suppressed, and the CLI writes the same figures as CSV, JSON
//! (checked against `docs/report.schema.json`) and a self-contained HTML page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tongban_devkit::bundles::as_citizen;
use tongban_devkit::demo::{demo_subject, example_application};
use tongban_devkit::departments::Departments;
use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v2::{GetStatusRequest, State, WithdrawRequest};
use tongban_report::{render, sources, Period, Report};
use tongban_tests::{tongban_bin, Fed};

/// A citizen of `home` applies for `code` in `target` with their own token; the request.
fn own(
    f: &Fed,
    (home, target): (&str, &str),
    citizen: &str,
    code: &str,
    drop_material: Option<&str>,
) -> tonic::Request<tongban_proto::crosscity::v2::SubmitRequest> {
    let catalog = tongban_catalog::Catalog::embedded().unwrap();
    let mut msg = example_application(catalog.item(code).unwrap(), citizen);
    if let Some(kind) = drop_material {
        msg.materials.retain(|m| m.kind != kind);
    }
    let mut req = as_citizen(&f.fed, home, citizen, msg).unwrap();
    req.metadata_mut()
        .insert("x-tongban-target-city", target.parse().unwrap());
    req.metadata_mut()
        .insert("x-tongban-catalog-code", code.parse().unwrap());
    req
}

/// Follows an application to its end, as its citizen.
async fn settle(f: &Fed, (home, target): (&str, &str), citizen: &str, code: &str, id: &str) -> i32 {
    let mut client = CrossCityServiceClient::new(f.channel(home).await);
    let mut req = as_citizen(
        &f.fed,
        home,
        citizen,
        GetStatusRequest {
            application_id: id.into(),
        },
    )
    .unwrap();
    req.metadata_mut()
        .insert("x-tongban-target-city", target.parse().unwrap());
    req.metadata_mut()
        .insert("x-tongban-catalog-code", code.parse().unwrap());
    let mut stream = client.watch_status(req).await.unwrap().into_inner();
    let mut last = 0;
    while let Some(a) = stream.message().await.unwrap() {
        last = a.state;
    }
    last
}

fn citizen(city: &str, i: u32) -> String {
    let prefix = if city == "jinan" { "370102" } else { "370202" };
    demo_subject(&format!("{prefix}19900101{:03}", 100 + i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_indicator_equals_the_traffic_and_reconciles_with_the_audit() {
    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    let departments = Departments::start(&f.fed, Duration::from_millis(150))
        .await
        .unwrap();
    let jq = ("jinan", "qingdao");
    let qj = ("qingdao", "jinan");
    let mut client = CrossCityServiceClient::new(f.channel("jinan").await);
    let mut qclient = CrossCityServiceClient::new(f.channel("qingdao").await);
    let mut pending = Vec::new();
    // 6 Jinan citizens: JQ-03 in Qingdao, completed.
    for i in 0..6 {
        let c = citizen("jinan", i);
        let a = client
            .submit(own(&f, jq, &c, "JQ-03", None))
            .await
            .unwrap()
            .into_inner();
        pending.push((jq, c, "JQ-03", a.application_id));
    }
    // 2 more: JQ-13 without the housing proof, rejected (不予受理).
    for i in 6..8 {
        let c = citizen("jinan", i);
        let a = client
            .submit(own(&f, jq, &c, "JQ-13", Some("housing-proof")))
            .await
            .unwrap()
            .into_inner();
        pending.push((jq, c, "JQ-13", a.application_id));
    }
    // 5 more: JQ-11, withdrawn at once.
    for i in 8..13 {
        let c = citizen("jinan", i);
        let a = client
            .submit(own(&f, jq, &c, "JQ-11", None))
            .await
            .unwrap()
            .into_inner();
        let mut w = as_citizen(
            &f.fed,
            "jinan",
            &c,
            WithdrawRequest {
                application_id: a.application_id.clone(),
                reason: "changed my mind".into(),
            },
        )
        .unwrap();
        w.metadata_mut()
            .insert("x-tongban-target-city", "qingdao".parse().unwrap());
        w.metadata_mut()
            .insert("x-tongban-catalog-code", "JQ-11".parse().unwrap());
        client.withdraw(w).await.unwrap();
        pending.push((jq, c, "JQ-11", a.application_id));
    }
    // 5 Qingdao citizens: JQ-03 in Jinan, completed.
    for i in 0..5 {
        let c = citizen("qingdao", i);
        let a = qclient
            .submit(own(&f, qj, &c, "JQ-03", None))
            .await
            .unwrap()
            .into_inner();
        pending.push((qj, c, "JQ-03", a.application_id));
    }
    // Refused at the gateway: Jinan's service centre about 5 citizens for JQ-08 without
    // their consent; 3 citizens asking for an item that does not exist.
    let zwfw = f.fed.token("jinan", "zwfw").unwrap();
    for i in 20..25 {
        let c = citizen("jinan", i);
        let mut req = own(&f, jq, &c, "JQ-08", None);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {zwfw}").parse().unwrap());
        let e = client.submit(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    for i in 30..33 {
        let c = citizen("jinan", i);
        let mut req = own(&f, jq, &c, "JQ-03", None);
        req.metadata_mut()
            .insert("x-tongban-catalog-code", "JQ-99".parse().unwrap());
        let e = client.submit(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    }
    // Mutual recognition: the demo's patient story (results published in Jinan, found
    // from Qingdao with her consent, decided on by the Qingdao physician).
    let rules = tongban_medical::Rules::embedded().unwrap();
    let registries = tongban_devkit::medical::Registries::start(&f.fed, &rules)
        .await
        .unwrap();
    let story = tongban_devkit::demo::run_medical(&f.fed).await.unwrap();
    assert!(story.eligible > 0 && story.not_eligible > 0, "{story:?}");
    let mut ended = std::collections::BTreeMap::<(&str, i32), u32>::new();
    for (dir, c, code, id) in &pending {
        let s = settle(&f, *dir, c, code, id).await;
        *ended.entry((code, s)).or_default() += 1;
    }
    assert_eq!(ended[&("JQ-03", State::Completed as i32)], 11);
    assert_eq!(ended[&("JQ-13", State::Rejected as i32)], 2);
    assert_eq!(ended[&("JQ-11", State::Withdrawn as i32)], 5);

    // The audit's own answer, through `tongban audit query` on Qingdao: the departments'
    // Submit calls it served.
    let qingdao = f.fed.city("qingdao").unwrap();
    let operator = tongban_devkit::local::dev_token_with_roles(
        &f.fed.certs,
        "qingdao",
        "ops",
        &["audit-operator"],
    )
    .unwrap();
    let out = Command::new(tongban_bin())
        .args(["audit", "query", "--node", &qingdao.caller_url()])
        .args(["--token", &operator])
        .args([
            "--service",
            "tongban.crosscity.v2.CrossCityService",
            "--limit",
            "500",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    let served_at_qingdao = listed
        .lines()
        .filter(|l| {
            l.contains("side provider") && l.contains("/Submit ") && l.contains(" status 0 ")
        })
        .count();
    assert_eq!(served_at_qingdao, 13, "{listed}");

    // The link from Jinan to Qingdao goes down for a while: Qingdao's node stops, then
    // starts again (each node records its links going up and down).
    let wait_for = |f: &Fed, up: bool| f.peer_up("jinan", "qingdao") == up;
    f.fed.stop_node("qingdao").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wait_for(&f, false) {
        assert!(
            std::time::Instant::now() < deadline,
            "jinan never saw qingdao go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let down_seen = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let outage = down_seen.elapsed();
    f.fed.restart_node("qingdao").await.unwrap();
    while !wait_for(&f, true) {
        assert!(
            std::time::Instant::now() < deadline,
            "jinan never saw qingdao return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped, the data directories are read in place.
    let root = f.fed.root.clone();
    let audit_dirs: Vec<_> = ["jinan", "qingdao"]
        .iter()
        .map(|c| f.fed.city(c).unwrap().config.data_dir.clone())
        .collect();
    departments.stop().await;
    registries.stop().await;
    let dir = f.dir;
    f.fed.shutdown().await;
    let today = tongban_catalog::cst_date(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let catalog = tongban_catalog::Catalog::embedded().unwrap();
    let mut r = Report::new(today, today, Period::Day);
    for d in &audit_dirs {
        sources::read_audit(&mut r, d).unwrap();
    }
    for city in ["jinan", "qingdao"] {
        for d in sources::department_dirs(&root.join(city).join("departments")) {
            sources::read_department(&mut r, &d, &catalog.calendar)
                .await
                .unwrap();
        }
    }
    r.finish(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    // Jinan's link to Qingdao: up for most of Jinan's run, down for at least the outage.
    let links = r.link_rows();
    let (_, up, running, _) = links
        .iter()
        .find(|(k, ..)| k.from == "jinan" && k.to == "qingdao")
        .copied()
        .unwrap_or_else(|| panic!("no link row: {links:?}"));
    let outage_ms = u64::try_from(outage.as_millis()).unwrap();
    assert!(up > 0 && up < running, "up {up} ms of {running} ms");
    assert!(
        running - up >= outage_ms,
        "down {} ms, the outage lasted {outage_ms} ms",
        running - up
    );
    let registries_dirs: Vec<_> = ["jinan", "qingdao"]
        .iter()
        .map(|c| root.join(c).join("medical"))
        .collect();
    sources::read_medical(&mut r, &registries_dirs)
        .await
        .unwrap();
    let row = |item: &str, from: &str, to: &str| {
        r.applications
            .iter()
            .find(|(k, _)| k.item == item && k.from == from && k.to == to)
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("no row {item} {from} → {to}"))
    };
    let pension = row("JQ-03", "jinan", "qingdao");
    assert_eq!(pension.submitted.shown(), Some(6));
    assert_eq!(pension.accepted.shown(), Some(6));
    assert_eq!(pension.completed.shown(), Some(6));
    assert_eq!(pension.completed_on_time.shown(), Some(6));
    assert_eq!(pension.on_time_rate(), Some(1.0));
    assert_eq!(pension.working_days(0.5), Some(0));
    assert_eq!(pension.rejected.n, 0);
    let back = row("JQ-03", "qingdao", "jinan");
    assert_eq!(back.submitted.shown(), Some(5));
    assert_eq!(back.completed.shown(), Some(5));
    let household = row("JQ-13", "jinan", "qingdao");
    assert_eq!(household.submitted.n, 2);
    assert_eq!(household.rejected.n, 2);
    assert!(household.submitted.suppressed() && household.rejected.suppressed());
    assert_eq!(
        household.rejected_by_reason.keys().collect::<Vec<_>>(),
        ["missing materials: housing-proof"]
    );
    let insurance = row("JQ-11", "jinan", "qingdao");
    assert_eq!(insurance.withdrawn.shown(), Some(5));
    assert_eq!(insurance.completed.shown(), Some(0));
    // The audit's side: each department's Submit calls the nodes served, equal to what the
    // departments hold, and in total to what `tongban audit query` listed.
    for (k, a) in &r.applications {
        assert_eq!(
            r.submits_served.get(k).map(|c| c.n),
            Some(a.submitted.n),
            "{k:?}"
        );
    }
    let jq_served: u64 = r
        .submits_served
        .iter()
        .filter(|(k, _)| k.from == "jinan" && k.to == "qingdao")
        .map(|(_, c)| c.n)
        .sum();
    assert_eq!(jq_served, served_at_qingdao as u64);
    // Refusals, by the node that refused.
    let consent = r
        .refusals
        .iter()
        .find(|(k, _)| k.item == "JQ-08")
        .map(|(_, f)| f)
        .unwrap();
    assert_eq!(consent.by_kind["consent"].shown(), Some(5));
    let unknown = r
        .refusals
        .iter()
        .find(|(k, _)| k.item == "JQ-99")
        .map(|(_, f)| f)
        .unwrap();
    assert_eq!(unknown.by_kind["unknown_item"].n, 3);
    assert!(unknown.by_kind["unknown_item"].suppressed());
    // The medical indicators equal the story: every result found got its verdict, every
    // decision is counted (its patient found through the report's verdicts); one patient,
    // so every cell is suppressed in what is published.
    let sum = |f: &dyn Fn(&tongban_report::indicators::Medical) -> u64| -> u64 {
        r.medical.values().map(f).sum()
    };
    assert_eq!(
        sum(&|m| m.queried.n),
        (story.eligible + story.not_eligible) as u64
    );
    assert_eq!(sum(&|m| m.eligible.n), story.eligible as u64);
    assert_eq!(sum(&|m| m.not_eligible.n), story.not_eligible as u64);
    assert_eq!(sum(&|m| m.recognised.n), story.recognised as u64);
    assert_eq!(sum(&|m| m.retested.n), story.retested as u64);
    assert!(r.medical.values().all(|m| m.queried.suppressed()));
    assert!(
        r.medical
            .keys()
            .all(|k| k.from == "jinan" && k.to == "qingdao"),
        "{:?}",
        r.medical.keys()
    );
    let j = render::json(&r);
    assert!(j["medical"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["queried"] == "<5"));
    assert_eq!(j["format"], "tongban-report/1");

    // The CLI: the same figures as JSON (valid against the schema), CSV and HTML.
    let run = |format: &str, out: &std::path::Path| {
        let mut cmd = Command::new(tongban_bin());
        cmd.args([
            "report",
            "--format",
            format,
            "--from",
            &today.to_string(),
            "--to",
            &today.to_string(),
        ]);
        for d in &audit_dirs {
            cmd.arg("--audit").arg(d);
        }
        for city in ["jinan", "qingdao"] {
            cmd.arg("--departments")
                .arg(root.join(city).join("departments"));
            cmd.arg("--medical").arg(root.join(city).join("medical"));
        }
        let o = cmd.arg("--out").arg(out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    let json_file = dir.path().join("report.json");
    let from_cli: serde_json::Value = serde_json::from_str(&run("json", &json_file)).unwrap();
    assert_eq!(from_cli["applications"], j["applications"]);
    assert_eq!(from_cli["refusals"], j["refusals"]);
    assert_eq!(from_cli["medical"], j["medical"]);
    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json");
    let checked = tongban_tests::run_python_json(
        "report_schema.py",
        vec![
            schema.display().to_string(),
            json_file.display().to_string(),
        ],
    )
    .await;
    assert_eq!(checked["valid"], true, "{checked}");
    let csv = run("csv", &dir.path().join("report.csv"));
    assert!(
        csv.contains(&format!("{today},JQ-03,jinan,qingdao,submitted,6")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("{today},JQ-13,jinan,qingdao,submitted,<5")),
        "{csv}"
    );
    let html = run("html", &dir.path().join("report.html"));
    assert!(html.contains("<svg") && html.contains("chart-volumes") && html.contains("&lt;5"));
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("<link"),
        "the page fetches nothing"
    );
    // A real browser renders the page: a screenshot, and not one console message (the page
    // has no script; a broken one would log). Skipped without Debian's Chromium.
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if chromium.exists() {
        let screens =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/report-screens");
        std::fs::create_dir_all(&screens).unwrap();
        let shot = screens.join("report.png");
        let _ = std::fs::remove_file(&shot);
        let page = dir.path().join("report.html");
        let o = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1000,1600",
            ])
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(console.is_empty(), "console messages: {console:#?}");
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{log}");
    } else {
        eprintln!("SKIPPED the browser check: no Chromium at /usr/bin/chromium");
    }
    // Nothing in any form names a citizen.
    for text in [&csv, &html, &from_cli.to_string()] {
        for i in 0..33 {
            assert!(!text.contains(&citizen("jinan", i)));
        }
    }
}
