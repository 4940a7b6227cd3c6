//! `tongban demo`: the main job on embedded defaults. A Jinan and a Qingdao node with their
//! providers on loopback, fresh certificates in a temporary directory; services registered
//! through the Registry API; cross-city calls both ways, a server-streaming call and a local
//! call; a table of what happened; exit 0 only if each cross-city call was answered by the
//! other city's provider.

use std::time::{Duration, Instant};

use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::{GetStatusRequest, SubmitRequest};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

use crate::local::{loopback_limits, LocalError, LocalFederation};

/// One line of the demo table.
#[derive(Debug, Clone)]
pub struct Row {
    pub caller: String,
    pub route: String,
    pub call: String,
    pub status: Code,
    pub answered_by: String,
    pub detail: String,
    pub latency: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("the federation did not form within {0:?}")]
    NotFederated(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo check failed: {0}")]
    Check(String),
}

/// A call from a system of `from` (organisation `hrss`, with its own city's JWT) to `target`,
/// for case handling.
fn request<T>(
    fed: &LocalFederation,
    msg: T,
    from: &str,
    target: &str,
) -> Result<Request<T>, DemoError> {
    let mut r = Request::new(msg);
    let token = fed.token(from, "hrss")?;
    let md = r.metadata_mut();
    for (k, v) in [
        ("x-tongban-target-city", target.to_string()),
        ("x-tongban-purpose", "case-handling".to_string()),
        ("authorization", format!("Bearer {token}")),
    ] {
        if let Ok(v) = MetadataValue::try_from(v.as_str()) {
            md.insert(k, v);
        }
    }
    r.set_timeout(Duration::from_secs(5));
    Ok(r)
}

async fn submit(
    fed: &LocalFederation,
    from: &str,
    to: &str,
    code: &str,
) -> Result<(Row, String), DemoError> {
    let mut client = CrossCityServiceClient::new(fed.channel(from).await?);
    let msg = SubmitRequest {
        catalog_code: code.to_string(),
        fields: [("applicant".to_string(), "demo".to_string())].into(),
        attachment: vec![0u8; 256],
    };
    let t = Instant::now();
    let r = client.submit(request(fed, msg, from, to)?).await;
    let latency = t.elapsed();
    let (status, answered_by, detail, id) = match r {
        Ok(resp) => {
            let s = resp.into_inner();
            let detail = format!(
                "{} {} (origin {})",
                s.application_id, s.state, s.origin_city
            );
            (Code::Ok, s.provider_city, detail, s.application_id)
        }
        Err(s) => (s.code(), "-".into(), s.message().to_string(), String::new()),
    };
    Ok((
        Row {
            caller: format!("{from}/hrss"),
            route: format!("{from} → {to}"),
            call: format!("Submit {code}"),
            status,
            answered_by,
            detail,
            latency,
        },
        id,
    ))
}

async fn watch(fed: &LocalFederation, from: &str, to: &str, id: &str) -> Result<Row, DemoError> {
    let mut client = CrossCityServiceClient::new(fed.channel(from).await?);
    let t = Instant::now();
    let r = client
        .watch_status(request(
            fed,
            GetStatusRequest {
                application_id: id.to_string(),
            },
            from,
            to,
        )?)
        .await;
    let mut states = Vec::new();
    let mut answered_by = "-".to_string();
    let mut status = Code::Ok;
    let mut detail = String::new();
    match r {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(s)) => {
                        answered_by = s.provider_city.clone();
                        states.push(s.state);
                    }
                    Ok(None) => break,
                    Err(s) => {
                        status = s.code();
                        detail = s.message().to_string();
                        break;
                    }
                }
            }
        }
        Err(s) => {
            status = s.code();
            detail = s.message().to_string();
        }
    }
    if detail.is_empty() {
        detail = format!("{} messages: {}", states.len(), states.join(" → "));
    }
    Ok(Row {
        caller: format!("{from}/hrss"),
        route: format!("{from} → {to}"),
        call: "WatchStatus (stream)".into(),
        status,
        answered_by,
        detail,
        latency: t.elapsed(),
    })
}

/// Runs the demo calls against a running two-city federation.
pub async fn run_calls(fed: &LocalFederation) -> Result<Vec<Row>, DemoError> {
    let mut rows = Vec::new();
    let (row, jq_app) = submit(fed, "jinan", "qingdao", "JQ-HRSS-003").await?;
    rows.push(row);
    let (row, _) = submit(fed, "qingdao", "jinan", "JQ-GJJ-001").await?;
    rows.push(row);
    let (row, _) = submit(fed, "jinan", "jinan", "JQ-HJ-002").await?;
    rows.push(row);
    rows.push(watch(fed, "jinan", "qingdao", &jq_app).await?);
    let (row, _) = submit(fed, "jinan", "beijing", "JQ-HRSS-003").await?;
    rows.push(row);
    Ok(rows)
}

/// Checks that each cross-city direction was answered by the other city's provider.
pub fn check(rows: &[Row]) -> Result<(), DemoError> {
    for (from, to) in [("jinan", "qingdao"), ("qingdao", "jinan")] {
        let route = format!("{from} → {to}");
        let ok = rows
            .iter()
            .any(|r| r.route == route && r.status == Code::Ok && r.answered_by == to);
        if !ok {
            return Err(DemoError::Check(format!(
                "no successful call {route} answered by {to}'s provider"
            )));
        }
    }
    Ok(())
}

/// Renders the table.
pub fn table(rows: &[Row]) -> String {
    let headers = [
        "caller",
        "route",
        "call",
        "status",
        "answered by",
        "latency",
        "detail",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.caller.clone(),
                r.route.clone(),
                r.call.clone(),
                format!("{:?}", r.status),
                r.answered_by.clone(),
                format!("{:.1} ms", r.latency.as_secs_f64() * 1000.0),
                r.detail.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(widths.iter())
            .map(|(v, w)| format!("{v:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    for row in &cells {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// Starts the two-city federation and registers its providers.
pub async fn start(root: &std::path::Path) -> Result<LocalFederation, DemoError> {
    let fed = LocalFederation::start(root, &["jinan", "qingdao"], loopback_limits()).await?;
    fed.register_crosscity("jinan", "hrss", &["JQ-HRSS-003", "JQ-GJJ-001", "JQ-HJ-002"])
        .await?;
    fed.register_crosscity(
        "qingdao",
        "hrss",
        &["JQ-HRSS-003", "JQ-GJJ-001", "JQ-HJ-002"],
    )
    .await?;
    let wait = Duration::from_secs(10);
    let federated = fed
        .wait_until_federated(wait, |_, c| !c.services.is_empty())
        .await;
    if !federated {
        return Err(DemoError::NotFederated(wait));
    }
    Ok(fed)
}
