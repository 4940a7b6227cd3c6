#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin listener's `/metrics`, read by an independent parser (Python
//! `prometheus_client`'s OpenMetrics parser) after known traffic; and every metric the
//! shipped Grafana dashboard queries exists.

use tongban_gateway::config::Limits;
use tongban_tests::{Fed, CROSSCITY_SERVICE};

async fn scrape(f: &Fed, city: &str) -> serde_json::Value {
    let admin = f.fed.city(city).unwrap().node().unwrap().admin_addr;
    let dashboard = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability/grafana-dashboard.json");
    tongban_tests::run_python_json(
        "scrape_metrics.py",
        vec![
            format!("http://{admin}/metrics"),
            dashboard.display().to_string(),
        ],
    )
    .await
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(m: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = m["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_cover_the_dashboard() {
    // A small rate so that a burst is refused and counted.
    let limits = Limits {
        caller_rate_per_s: 1,
        caller_burst: 8,
        ..tongban_devkit::local::loopback_limits()
    };
    let f = Fed::start_with(&["jinan", "qingdao"], limits).await;
    for _ in 0..3 {
        f.submit("jinan", Some("qingdao"), "JQ-03").await.unwrap();
    }
    // One refusal at Jinan: a service nobody offers.
    let e = f
        .submit("jinan", Some("nowhere"), "JQ-03")
        .await
        .unwrap_err();
    let refused = e.code();
    // A burst beyond the rate: some are refused with RESOURCE_EXHAUSTED.
    let mut limited = 0;
    for _ in 0..12 {
        if let Err(s) = f.submit("jinan", Some("qingdao"), "JQ-03").await {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
            limited += 1;
        }
    }
    assert!(limited > 0, "the burst was never limited");

    let j = scrape(&f, "jinan").await;
    assert!(
        j["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{}",
        j["content_type"]
    );
    let ok = |side| {
        [
            ("side", side),
            ("caller_city", "jinan"),
            ("target_city", "qingdao"),
            ("service", CROSSCITY_SERVICE),
            ("code", "OK"),
        ]
    };
    let ok_calls = value(&j, "tongban_requests_total", &ok("home")).unwrap();
    // The three calls, and those of the burst that were not limited.
    assert_eq!(ok_calls, 3.0 + 12.0 - f64::from(limited), "{j}");
    let refused_name = tongban_telemetry::metrics::code_name(refused);
    let refusals: f64 = j["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "tongban_requests_total" && s["labels"]["code"] == refused_name)
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert!(refusals >= 1.0, "no {refused_name} counted: {j}");
    assert_eq!(
        value(
            &j,
            "tongban_requests_total",
            &[("code", "RESOURCE_EXHAUSTED"), ("caller_city", "jinan")]
        ),
        Some(f64::from(limited))
    );
    assert_eq!(
        value(
            &j,
            "tongban_rate_limited_total",
            &[("caller", "jinan/hrss")]
        ),
        Some(f64::from(limited))
    );
    // The node's own refusals by kind and reason (the audit's refusal_reason, live).
    assert_eq!(
        value(
            &j,
            "tongban_refusals_total",
            &[("kind", "other"), ("reason", "RATE_LIMITED")]
        ),
        Some(f64::from(limited))
    );
    let unknown: f64 = j["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "tongban_refusals_total" && s["labels"]["kind"] == "unknown_item")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(unknown, 1.0, "{j}");
    // The latency histogram saw the same calls (all of them, whatever their status).
    let route = [
        ("side", "home"),
        ("caller_city", "jinan"),
        ("target_city", "qingdao"),
        ("service", CROSSCITY_SERVICE),
    ];
    assert_eq!(
        value(&j, "tongban_request_duration_seconds_count", &route),
        Some(15.0)
    );
    assert_eq!(
        value(
            &j,
            "tongban_request_duration_seconds_bucket",
            &[route.as_slice(), &[("le", "+Inf")]].concat()
        ),
        Some(15.0)
    );
    // Every call was audited: group commits wrote at least that many records.
    let records = value(&j, "tongban_audit_group_commit_records_sum", &[]).unwrap();
    assert!(records >= 16.0, "{records}");
    assert!(value(&j, "tongban_audit_commit_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(value(&j, "tongban_audit_writable", &[]), Some(1.0));
    assert_eq!(
        value(&j, "tongban_peer_up", &[("peer", "qingdao")]),
        Some(1.0)
    );
    assert!(value(&j, "tongban_catalog_version", &[("city", "qingdao")]).unwrap() >= 1.0);
    assert_eq!(value(&j, "tongban_spans_dropped_total", &[]), Some(0.0));

    // Qingdao counts the same exchanges from the providing side.
    let q = scrape(&f, "qingdao").await;
    assert_eq!(
        value(&q, "tongban_requests_total", &ok("provider")),
        Some(ok_calls),
        "{q}"
    );

    // A policy reload and a JWKS refresh are counted.
    let node = f.fed.city("jinan").unwrap().node().unwrap();
    node.reload_policy().unwrap();
    node.refresh_jwks().await.unwrap();
    let j = scrape(&f, "jinan").await;
    assert_eq!(
        value(&j, "tongban_policy_reloads_total", &[("outcome", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        value(&j, "tongban_jwks_refreshes_total", &[("outcome", "ok")]),
        Some(1.0)
    );

    // The dashboard queries only what the node exposes.
    assert!(
        !j["dashboard_metrics"].as_array().unwrap().is_empty(),
        "no metric found in the dashboard"
    );
    assert_eq!(j["missing"], serde_json::json!([]), "{}", j["missing"]);
    f.shutdown().await;
}
