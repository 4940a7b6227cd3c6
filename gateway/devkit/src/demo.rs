//! `tongban demo`: the main job on embedded defaults. A Jinan and a Qingdao node with their
//! providers on loopback, fresh certificates and dev identity providers in a temporary
//! directory; services registered through the Registry API as personal-data services;
//! citizens' consents granted on their home nodes; cross-city calls both ways with real JWTs,
//! policy and consent, a server-streaming call, a local call, and refusals (no consent, a
//! revoked consent, an unknown city); a table of what happened; exit 0 only if each
//! cross-city call was answered by the other city's provider and each refusal was refused.

use std::time::{Duration, Instant};

use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::{GetStatusRequest, SubmitRequest};
use tongban_proto::metadata;
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

/// Who a demo call is about and with which consent.
#[derive(Clone, Copy)]
pub struct About<'a> {
    pub subject: &'a str,
    pub consent: Option<&'a str>,
}

/// A call from a system of `from` (organisation `hrss`, with its own city's JWT) to `target`,
/// for case handling, about a citizen.
fn request<T>(
    fed: &LocalFederation,
    msg: T,
    from: &str,
    target: &str,
    about: About<'_>,
) -> Result<Request<T>, DemoError> {
    let mut r = Request::new(msg);
    let token = fed.token(from, "hrss")?;
    let md = r.metadata_mut();
    let mut pairs = vec![
        (metadata::TARGET_CITY, target.to_string()),
        (metadata::PURPOSE, "case-handling".to_string()),
        (metadata::SUBJECT, about.subject.to_string()),
        ("authorization", format!("Bearer {token}")),
    ];
    if let Some(c) = about.consent {
        pairs.push((metadata::CONSENT, c.to_string()));
    }
    for (k, v) in pairs {
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
    about: About<'_>,
) -> Result<(Row, String), DemoError> {
    let mut client = CrossCityServiceClient::new(fed.channel(from).await?);
    let msg = SubmitRequest {
        catalog_code: code.to_string(),
        fields: [("applicant".to_string(), "demo".to_string())].into(),
        attachment: vec![0u8; 256],
    };
    let t = Instant::now();
    let r = client.submit(request(fed, msg, from, to, about)?).await;
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

async fn watch(
    fed: &LocalFederation,
    from: &str,
    to: &str,
    id: &str,
    about: About<'_>,
) -> Result<Row, DemoError> {
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
            about,
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

/// A demo resident identity number with a valid check digit (region 3701 Jinan, 3702
/// Qingdao).
pub fn demo_subject(first17: &str) -> String {
    let check = tongban_gateway::subject::check_digit(first17).unwrap_or('0');
    format!("{first17}{check}")
}

/// Runs the demo calls against a running two-city federation.
pub async fn run_calls(fed: &LocalFederation) -> Result<Vec<Row>, DemoError> {
    let jinan_citizen = demo_subject("37010219850312002");
    let qingdao_citizen = demo_subject("37020219920704003");
    // Each citizen consents on their home node, for one organisation, city and purpose.
    let (jq_id, jq_consent) = fed
        .grant_consent(
            "jinan",
            &jinan_citizen,
            "jinan/hrss",
            "qingdao",
            "case-handling",
            &[],
        )
        .await?;
    let (_, qj_consent) = fed
        .grant_consent(
            "qingdao",
            &qingdao_citizen,
            "qingdao/hrss",
            "jinan",
            "case-handling",
            &[],
        )
        .await?;
    let (_, jj_consent) = fed
        .grant_consent(
            "jinan",
            &jinan_citizen,
            "jinan/hrss",
            "jinan",
            "case-handling",
            &[],
        )
        .await?;
    let jinan = |consent| About {
        subject: &jinan_citizen,
        consent,
    };
    let qingdao = About {
        subject: &qingdao_citizen,
        consent: Some(&qj_consent),
    };

    let mut rows = Vec::new();
    let consented = || jinan(Some(&jq_consent));
    let (row, jq_app) = submit(fed, "jinan", "qingdao", "JQ-03", consented()).await?;
    rows.push(row);
    let (row, _) = submit(fed, "qingdao", "jinan", "JQ-07", qingdao).await?;
    rows.push(row);
    let (row, _) = submit(fed, "jinan", "jinan", "JQ-13", jinan(Some(&jj_consent))).await?;
    rows.push(row);
    rows.push(watch(fed, "jinan", "qingdao", &jq_app, jinan(Some(&jq_consent))).await?);
    let (mut row, _) = submit(fed, "jinan", "qingdao", "JQ-03", jinan(None)).await?;
    row.call.push_str(" (no consent)");
    rows.push(row);
    // The citizen revokes; Qingdao learns it from Jinan's signed catalog within moments.
    fed.revoke_consent("jinan", &jinan_citizen, &jq_id).await?;
    let qingdao_node = fed.city("qingdao")?.node();
    if let Some(n) = qingdao_node {
        n.wait_for_catalog(Duration::from_secs(5), |s| {
            s.consent_revoked("jinan", &jq_id)
        })
        .await;
    }
    let (mut row, _) = submit(fed, "jinan", "qingdao", "JQ-03", jinan(Some(&jq_consent))).await?;
    row.call.push_str(" (revoked)");
    rows.push(row);
    let (row, _) = submit(fed, "jinan", "beijing", "JQ-03", consented()).await?;
    rows.push(row);
    Ok(rows)
}

/// One city's audit at the end of the demo.
#[derive(Debug, Clone)]
pub struct AuditHead {
    pub city: String,
    pub records: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub verified: Result<(), String>,
    pub receipts_verified: usize,
}

/// Verifies each node's audit chain and counts the verified receipts of its home side.
pub async fn audit_heads(fed: &LocalFederation) -> Vec<AuditHead> {
    let mut out = Vec::new();
    for c in &fed.cities {
        let Some(node) = c.node() else { continue };
        let auditor = node.auditor();
        let (records, head_seq, head_hash, verified) = match auditor.verify() {
            Ok(r) => (
                r.records,
                r.head.seq,
                hex::encode(&r.head.hash[..8]),
                match r.first_bad {
                    None => Ok(()),
                    Some((seq, why)) => Err(format!("seq {seq}: {why}")),
                },
            ),
            Err(e) => (0, 0, String::new(), Err(e.to_string())),
        };
        let filter = tongban_gateway::audit::index::Filter {
            limit: 1000,
            ..Default::default()
        };
        let receipts_verified = auditor
            .query(&filter)
            .await
            .0
            .iter()
            .filter(|r| r.receipt_verified)
            .count();
        out.push(AuditHead {
            city: c.city.clone(),
            records,
            head_seq,
            head_hash,
            verified,
            receipts_verified,
        });
    }
    out
}

/// Checks that each cross-city direction was answered by the other city's provider, and
/// that the calls without a valid consent were refused.
pub fn check(rows: &[Row]) -> Result<(), DemoError> {
    for suffix in [" (no consent)", " (revoked)"] {
        let refused = rows
            .iter()
            .any(|r| r.call.ends_with(suffix) && r.status == Code::PermissionDenied);
        if !refused {
            return Err(DemoError::Check(format!(
                "the call{suffix} was not refused"
            )));
        }
    }
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

/// The demo's federation: two cities, their probe providers and their departments.
pub struct Demo {
    pub fed: LocalFederation,
    pub departments: crate::departments::Departments,
    pub registries: crate::medical::Registries,
    pub bundles: crate::bundles::Bundles,
}

impl Demo {
    pub async fn shutdown(self) {
        self.bundles.stop().await;
        self.departments.stop().await;
        self.registries.stop().await;
        self.fed.shutdown().await;
    }
}

/// Starts the two-city federation and registers its providers and departments.
pub async fn start(root: &std::path::Path) -> Result<Demo, DemoError> {
    start_for_browsers(root, &[]).await
}

/// [`start`], with the nodes' web listeners open to pages of `origins` (the portal).
pub async fn start_for_browsers(
    root: &std::path::Path,
    origins: &[String],
) -> Result<Demo, DemoError> {
    start_with_step(root, origins, DEMO_STEP).await
}

/// [`start_for_browsers`], the departments' back offices taking `step` per step.
pub async fn start_with_step(
    root: &std::path::Path,
    origins: &[String],
    step: Duration,
) -> Result<Demo, DemoError> {
    let fed = LocalFederation::start_for_browsers(
        root,
        &["jinan", "qingdao"],
        loopback_limits(),
        origins,
    )
    .await?;
    let codes = ["JQ-03", "JQ-07", "JQ-13"];
    fed.register_crosscity("jinan", "hrss", &codes, true)
        .await?;
    fed.register_crosscity("qingdao", "hrss", &codes, true)
        .await?;
    let wait = Duration::from_secs(10);
    let federated = fed
        .wait_until_federated(wait, |_, c| !c.services.is_empty())
        .await;
    if !federated {
        return Err(DemoError::NotFederated(wait));
    }
    let departments = crate::departments::Departments::start(&fed, step).await?;
    let rules = tongban_medical::Rules::embedded().map_err(|e| DemoError::Check(e.to_string()))?;
    let registries = crate::medical::Registries::start(&fed, &rules).await?;
    let bundles = crate::bundles::Bundles::start(&fed, tongban_bundle::Retry::default()).await?;
    Ok(Demo {
        fed,
        departments,
        registries,
        bundles,
    })
}

/// How long the demo's back offices take per step of an application.
pub const DEMO_STEP: Duration = Duration::from_millis(20);

/// The caller of the demo's applications in each city: its government service centre
/// (政务服务中心), where a citizen walks in to handle a matter of the other city.
pub const SERVICE_CENTRE: &str = "zwfw";

/// One direction of one item: how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `completed`, another final state, or the gRPC code of a refusal.
    pub status: String,
    /// The Submit call's round trip through both nodes.
    pub latency: Duration,
    /// The result document verified with the trust bundle alone (or why not).
    pub certificate: Result<String, String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status == "completed" && self.certificate.is_ok()
    }
}

/// One line of the items table.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub code: String,
    pub name: String,
    pub jinan_to_qingdao: Outcome,
    pub qingdao_to_jinan: Outcome,
}

/// A citizen of `home` applying in `provider`'s city through `home`'s service centre.
struct Applicant<'a> {
    home: &'a str,
    provider: &'a str,
    subject: &'a str,
    consent: &'a str,
}

/// Submits every catalog item in both directions (a Jinan resident handled by Qingdao, a
/// Qingdao resident by Jinan), with the citizen's consent where the item handles personal
/// data, follows each application to its end and verifies each result document.
pub async fn run_items(fed: &LocalFederation) -> Result<Vec<ItemRow>, DemoError> {
    use crate::departments::CROSSCITY_V2;
    let catalog =
        tongban_catalog::Catalog::embedded().map_err(|e| DemoError::Check(e.to_string()))?;
    let bundle = tongban_gateway::trust::TrustBundle::load(&fed.certs.trust_bundle)
        .map_err(|e| DemoError::Check(e.to_string()))?;
    let jinan_citizen = demo_subject("37010219850312002");
    let qingdao_citizen = demo_subject("37020219920704003");
    let grantee = |c: &str| format!("{c}/{SERVICE_CENTRE}");
    // Each citizen consents to every item the demo submits for them, by name.
    let codes: Vec<&str> = catalog.items().iter().map(|i| i.code.as_str()).collect();
    let (_, jq) = fed
        .grant_consent_for(
            CROSSCITY_V2,
            "jinan",
            &jinan_citizen,
            &grantee("jinan"),
            ("qingdao", "case-handling"),
            &codes,
        )
        .await?;
    let (_, qj) = fed
        .grant_consent_for(
            CROSSCITY_V2,
            "qingdao",
            &qingdao_citizen,
            &grantee("qingdao"),
            ("jinan", "case-handling"),
            &codes,
        )
        .await?;
    let jq_app = Applicant {
        home: "jinan",
        provider: "qingdao",
        subject: &jinan_citizen,
        consent: &jq,
    };
    let qj_app = Applicant {
        home: "qingdao",
        provider: "jinan",
        subject: &qingdao_citizen,
        consent: &qj,
    };
    let rows = catalog.items().iter().map(|item| {
        let (jq_app, qj_app, bundle) = (&jq_app, &qj_app, &bundle);
        async move {
            let (a, b) = tokio::join!(
                apply(fed, item, jq_app, bundle),
                apply(fed, item, qj_app, bundle)
            );
            ItemRow {
                code: item.code.clone(),
                name: item.name_zh.clone(),
                jinan_to_qingdao: a,
                qingdao_to_jinan: b,
            }
        }
    });
    Ok(futures_util::future::join_all(rows).await)
}

/// The metadata of an application call through the applicant's home node.
fn item_request<T>(
    fed: &LocalFederation,
    msg: T,
    item: &tongban_catalog::Item,
    who: &Applicant<'_>,
) -> Result<Request<T>, String> {
    let mut r = Request::new(msg);
    let token = fed
        .token(who.home, SERVICE_CENTRE)
        .map_err(|e| e.to_string())?;
    let mut pairs = vec![
        ("authorization", format!("Bearer {token}")),
        (metadata::TARGET_CITY, who.provider.to_string()),
        (metadata::PURPOSE, "case-handling".to_string()),
        (metadata::SUBJECT, who.subject.to_string()),
        (metadata::CATALOG_CODE, item.code.clone()),
    ];
    if item.personal_data {
        pairs.push((metadata::CONSENT, who.consent.to_string()));
    }
    for (k, v) in pairs {
        let v = MetadataValue::try_from(v.as_str()).map_err(|e| e.to_string())?;
        r.metadata_mut().insert(k, v);
    }
    r.set_timeout(Duration::from_secs(10));
    Ok(r)
}

/// A valid application for `item`: its example fields and every material it needs.
pub fn example_application(
    item: &tongban_catalog::Item,
    applicant_id: &str,
) -> tongban_proto::crosscity::v2::SubmitRequest {
    use tongban_proto::crosscity::v2::{MaterialRef, SubmitRequest};
    SubmitRequest {
        catalog_code: item.code.clone(),
        applicant_id: applicant_id.to_string(),
        fields: item.example_fields().into_iter().collect(),
        materials: item
            .materials
            .iter()
            .map(|kind| MaterialRef {
                kind: kind.clone(),
                uri: format!("https://docs.example/{}/{kind}", item.code),
                sha256: hex::encode(
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kind.as_bytes()).as_ref(),
                ),
            })
            .collect(),
        idempotency_key: String::new(),
    }
}

async fn apply(
    fed: &LocalFederation,
    item: &tongban_catalog::Item,
    who: &Applicant<'_>,
    bundle: &tongban_gateway::trust::TrustBundle,
) -> Outcome {
    match apply_inner(fed, item, who, bundle).await {
        Ok(o) => o,
        Err((status, latency)) => Outcome {
            status,
            latency,
            certificate: Err("no certificate".into()),
        },
    }
}

async fn apply_inner(
    fed: &LocalFederation,
    item: &tongban_catalog::Item,
    who: &Applicant<'_>,
    bundle: &tongban_gateway::trust::TrustBundle,
) -> Result<Outcome, (String, Duration)> {
    use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
    use tongban_proto::crosscity::v2::State;
    let fail = |e: String| (e, Duration::ZERO);
    let channel = fed
        .channel(who.home)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut client = CrossCityServiceClient::new(channel);
    let msg = example_application(item, who.subject);
    let req = item_request(fed, msg, item, who).map_err(fail)?;
    let t = Instant::now();
    let app = client.submit(req).await;
    let latency = t.elapsed();
    let app = app
        .map_err(|s| (format!("{:?}: {}", s.code(), s.message()), latency))?
        .into_inner();
    let watch = tongban_proto::crosscity::v2::GetStatusRequest {
        application_id: app.application_id.clone(),
    };
    let req = item_request(fed, watch, item, who).map_err(fail)?;
    let mut stream = client
        .watch_status(req)
        .await
        .map_err(|s| (format!("watch {:?}: {}", s.code(), s.message()), latency))?
        .into_inner();
    let mut last = app;
    while let Some(a) = stream
        .message()
        .await
        .map_err(|s| (format!("watch {:?}: {}", s.code(), s.message()), latency))?
    {
        last = a;
    }
    let state = State::try_from(last.state).unwrap_or(State::Unspecified);
    let status = tongban_crosscity::office::state_name(state).to_string();
    let certificate = if state == State::Completed {
        tongban_crosscity::ecert::verify(&last.result, bundle, time::OffsetDateTime::now_utc())
            .map(|d| format!("{}/{}", d.issuer.city, d.issuer.organisation))
            .map_err(|e| e.to_string())
    } else {
        Err(format!("no certificate ({status})"))
    };
    Ok(Outcome {
        status,
        latency,
        certificate,
    })
}

/// Every item completed both ways with its certificate verified.
pub fn check_items(rows: &[ItemRow]) -> Result<(), DemoError> {
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !(r.jinan_to_qingdao.ok() && r.qingdao_to_jinan.ok()))
        .map(|r| r.code.clone())
        .collect();
    if rows.is_empty() || !failed.is_empty() {
        return Err(DemoError::Check(format!(
            "items not completed both ways with a verified certificate: {}",
            failed.join(", ")
        )));
    }
    Ok(())
}

/// Renders the items table: code, each direction's status and Submit latency, the
/// certificates, and the item's name last (CJK characters are two columns wide).
pub fn items_table(rows: &[ItemRow]) -> String {
    let cell = |o: &Outcome| format!("{} {:.1} ms", o.status, o.latency.as_secs_f64() * 1000.0);
    let cert = |r: &ItemRow| match (
        &r.jinan_to_qingdao.certificate,
        &r.qingdao_to_jinan.certificate,
    ) {
        (Ok(_), Ok(_)) => "verified ×2".to_string(),
        (Err(e), _) | (_, Err(e)) => format!("NOT VERIFIED: {e}"),
    };
    let mut out = vec![format!(
        "{:<6}  {:<24}  {:<24}  {:<12}  {}",
        "code", "jinan → qingdao", "qingdao → jinan", "certificate", "name"
    )];
    out.push(format!(
        "{}  {}  {}  {}  {}",
        "-".repeat(6),
        "-".repeat(24),
        "-".repeat(24),
        "-".repeat(12),
        "-".repeat(24)
    ));
    for r in rows {
        out.push(format!(
            "{:<6}  {:<24}  {:<24}  {:<12}  {}",
            r.code,
            cell(&r.jinan_to_qingdao),
            cell(&r.qingdao_to_jinan),
            cert(r),
            r.name
        ));
    }
    out.join("\n")
}

/// The patient story of mutual recognition, as the demo prints it.
#[derive(Debug, Clone, Default)]
pub struct MedicalStory {
    /// One line per result found: item, origin, verdict and reasons.
    pub found: Vec<String>,
    pub eligible: usize,
    pub not_eligible: usize,
    /// The physician's decisions, one line each.
    pub decisions: Vec<String>,
    pub recognised: i64,
    pub retested: i64,
}

/// Metadata of a medical call by `city/org` to `target` about (patient, catalog item).
fn medical_request<T>(
    fed: &LocalFederation,
    msg: T,
    (city, org): (&str, &str),
    target: &str,
    about: Option<(&str, &str)>,
    consent: Option<&str>,
) -> Result<Request<T>, DemoError> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    let token = fed.token(city, org)?;
    let mut pairs = vec![
        ("authorization", format!("Bearer {token}")),
        (metadata::TARGET_CITY, target.to_string()),
        (metadata::PURPOSE, "medical-treatment".to_string()),
    ];
    if let Some((patient, item)) = about {
        pairs.push((metadata::SUBJECT, patient.to_string()));
        pairs.push((metadata::CATALOG_CODE, item.to_string()));
    }
    if let Some(c) = consent {
        pairs.push((metadata::CONSENT, c.to_string()));
    }
    for (k, v) in pairs {
        let v = MetadataValue::try_from(v.as_str()).map_err(|e| DemoError::Check(e.to_string()))?;
        r.metadata_mut().insert(k, v);
    }
    Ok(r)
}

/// A patient of Jinan, tested there, is treated in Qingdao: Jinan's hospitals publish her
/// results; the Qingdao hospital finds them through the federation (with her consent), each
/// with its verdict — one past its validity, one from an institution not accredited for the
/// item, one not final — and its physician records a decision on each eligible result and
/// one re-test; then the statistics.
pub async fn run_medical(fed: &LocalFederation) -> Result<MedicalStory, DemoError> {
    use tongban_proto::medical::v1::recognition_client::RecognitionClient;
    use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
    use tongban_proto::medical::v1::{
        result, DecideRequest, Decision, PublishRequest, Quantity, QueryRequest, Report,
        ReportKind, ReportStatus, Result as LabResult, RetestReason, StatisticsRequest,
    };
    let err = |s: tonic::Status| DemoError::Check(format!("{:?}: {}", s.code(), s.message()));
    let patient = demo_subject("37010219780506004");
    let service = tongban_medical::SERVICE;
    let (_, publish) = fed
        .grant_consent_for(
            service,
            "jinan",
            &patient,
            "jinan/qilu",
            ("jinan", "medical-treatment"),
            &[tongban_medical::PUBLISH_ITEM],
        )
        .await?;
    let (_, read) = fed
        .grant_consent_for(
            service,
            "jinan",
            &patient,
            "qingdao/qdfy",
            ("jinan", "medical-treatment"),
            &[tongban_medical::READ_ITEM],
        )
        .await?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(0);
    let day = 86_400_000;
    let lab = |id: &str, loinc: &str, name: &str, value: f64, unit: &str| LabResult {
        result_id: id.into(),
        local_code: id.to_ascii_uppercase(),
        loinc: loinc.into(),
        display: name.into(),
        value: Some(result::Value::Quantity(Quantity {
            value,
            unit: unit.into(),
        })),
        interpretation: "N".into(),
        ..Default::default()
    };
    let report =
        |id: &str, institution: &str, name: &str, status: ReportStatus, age_days: i64, results| {
            Report {
                report_id: id.into(),
                patient_id: patient.clone(),
                kind: ReportKind::Laboratory as i32,
                status: status as i32,
                collected_at_ms: now - age_days * day,
                issued_at_ms: now - age_days * day + 3_600_000,
                institution_code: institution.into(),
                institution_name: name.into(),
                department: "检验科".into(),
                verifier: "李检验".into(),
                results,
                conclusion: String::new(),
                ..Default::default()
            }
        };
    let qilu = ("12370000495570024A", "山东大学齐鲁医院");
    let community = ("12370100MB2836047H", "济南市历下区社区卫生服务中心");
    let reports = [
        report(
            "JN-LAB-001",
            qilu.0,
            qilu.1,
            ReportStatus::Final,
            3,
            vec![
                lab("k", "2823-3", "血清钾", 4.1, "mmol/L"),
                lab("hb", "718-7", "血红蛋白", 128.0, "g/L"),
            ],
        ),
        report(
            "JN-LAB-002",
            qilu.0,
            qilu.1,
            ReportStatus::Final,
            9,
            vec![lab("na", "2951-2", "血清钠", 139.0, "mmol/L")],
        ),
        report(
            "JN-LAB-003",
            community.0,
            community.1,
            ReportStatus::Final,
            5,
            vec![lab("alt", "1742-6", "丙氨酸氨基转移酶", 24.0, "U/L")],
        ),
        report(
            "JN-LAB-004",
            qilu.0,
            qilu.1,
            ReportStatus::Preliminary,
            1,
            vec![lab("glu", "2345-7", "葡萄糖", 5.4, "mmol/L")],
        ),
    ];
    let mut jinan = ResultRegistryClient::new(fed.channel("jinan").await?);
    for r in reports {
        let req = medical_request(
            fed,
            PublishRequest { report: Some(r) },
            ("jinan", "qilu"),
            "jinan",
            Some((&patient, tongban_medical::PUBLISH_ITEM)),
            Some(&publish),
        )?;
        jinan.publish(req).await.map_err(err)?;
    }
    let mut qingdao = ResultRegistryClient::new(fed.channel("qingdao").await?);
    let req = medical_request(
        fed,
        QueryRequest::default(),
        ("qingdao", "qdfy"),
        "jinan",
        Some((&patient, tongban_medical::READ_ITEM)),
        Some(&read),
    )?;
    let found = qingdao.query(req).await.map_err(err)?.into_inner().results;
    let mut story = MedicalStory::default();
    let mut recognition = RecognitionClient::new(fed.channel("qingdao").await?);
    for r in &found {
        let v = r.verdict.clone().unwrap_or_default();
        let res = r.result.clone().unwrap_or_default();
        let item = if r.item.is_empty() {
            res.loinc.clone()
        } else {
            r.item.clone()
        };
        story.found.push(format!(
            "{:<6} {:<14} {:<10} from {:<8} {}",
            item,
            res.display,
            r.report_id,
            r.city,
            if v.eligible {
                "eligible".to_string()
            } else {
                format!("not eligible: {}", v.reasons.join("; "))
            }
        ));
        if !v.eligible {
            story.not_eligible += 1;
            continue;
        }
        story.eligible += 1;
        // The physician accepts the potassium and re-tests the haemoglobin (surgery ahead).
        let (decision, reason) = if r.item == "K" {
            (Decision::Accepted, RetestReason::Unspecified)
        } else {
            (Decision::Retested, RetestReason::MajorDecision)
        };
        let msg = DecideRequest {
            origin_city: r.city.clone(),
            report_id: r.report_id.clone(),
            result_id: res.result_id.clone(),
            item: r.item.clone(),
            decision: decision as i32,
            reason: reason as i32,
            reason_text: String::new(),
            physician: "qdfy-0231".into(),
        };
        let req = medical_request(fed, msg, ("qingdao", "qdfy"), "qingdao", None, None)?;
        recognition.decide(req).await.map_err(err)?;
        story.decisions.push(format!(
            "{:<6} {}",
            r.item,
            if decision == Decision::Accepted {
                "accepted (not repeated)"
            } else {
                "re-tested: major decision (surgery)"
            }
        ));
    }
    let req = medical_request(
        fed,
        StatisticsRequest::default(),
        ("qingdao", "ybj"),
        "qingdao",
        None,
        None,
    )?;
    let stats = recognition.statistics(req).await.map_err(err)?.into_inner();
    story.recognised = stats.recognised;
    story.retested = stats.retested;
    Ok(story)
}

/// The story shows what it must: two eligible results, three refused for three different
/// reasons, and the decisions counted.
pub fn check_medical(s: &MedicalStory) -> Result<(), DemoError> {
    let has = |what: &str| s.found.iter().any(|l| l.contains(what));
    let ok = s.eligible == 2
        && s.not_eligible == 3
        && has("past its validity")
        && has("not accredited")
        && has("preliminary")
        && (s.recognised, s.retested) == (1, 1);
    if ok {
        Ok(())
    } else {
        Err(DemoError::Check(format!(
            "the medical story did not go as expected: {s:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told() -> MedicalStory {
        MedicalStory {
            found: vec![
                "K eligible".into(),
                "NA not eligible: past its validity".into(),
                "ALT not eligible: institution was not accredited for ALT".into(),
                "GLU not eligible: report status preliminary".into(),
            ],
            eligible: 2,
            not_eligible: 3,
            recognised: 1,
            retested: 1,
            ..MedicalStory::default()
        }
    }

    #[test]
    fn the_medical_story_is_checked_and_any_other_ending_fails() {
        assert!(check_medical(&told()).is_ok());
        let mut all_eligible = told();
        all_eligible.eligible = 5;
        all_eligible.not_eligible = 0;
        assert!(check_medical(&all_eligible).is_err());
        let mut no_decision = told();
        no_decision.retested = 0;
        assert!(check_medical(&no_decision).is_err());
        let mut wrong_reason = told();
        wrong_reason.found.retain(|l| !l.contains("preliminary"));
        assert!(check_medical(&wrong_reason).is_err());
        assert!(check_medical(&MedicalStory::default()).is_err());
    }
}
