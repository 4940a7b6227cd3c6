//! `tongban-loadgen`: drives cross-city (or local) calls through a node and checks every
//! answer's grpc-status — h2load counts a gRPC failure as HTTP 200, this does not.
//!
//! Two modes:
//! - **open loop** (`--rate R`): a call is started every 1/R s whatever the previous ones do;
//!   latency is measured from the moment a call *should* have started, so a stall shows up in
//!   the percentiles instead of silently lowering the offered load (coordinated omission
//!   corrected);
//! - **closed loop** (`--rate 0 --in-flight N`): N calls kept in flight back to back, for the
//!   saturated rate.
//!
//! Calls are `tongban.crosscity.v1.CrossCityService/Submit` with real metadata (a JWT, the
//! purpose, optionally a subject and a consent), one HTTP/2 connection per `--connections`.
//! The result is one line of JSON on stdout: calls, ok, failures by code, req/s, latency
//! percentiles (µs) from an HDR histogram.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::GrantRequest;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_proto::metadata;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;

#[derive(Parser, Clone)]
#[command(
    name = "tongban-loadgen",
    about = "Calls through a Tongban node, every status checked"
)]
struct Args {
    /// The node's caller address, e.g. http://127.0.0.1:7000
    #[arg(long)]
    node: String,
    /// A caller JWT of the node's city.
    #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
    token: String,
    /// The city that serves the calls.
    #[arg(long)]
    to: String,
    /// The organisation, when several of the city offer the service.
    #[arg(long)]
    org: Option<String>,
    #[arg(long, default_value = "case-handling")]
    purpose: String,
    /// A resident id (for personal-data services, with --consent).
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    consent: Option<String>,
    /// Before the run, grant the consent the calls need through the node's Consent API
    /// with this consent-portal token (role `consent-portal`): the subject (--subject) lets
    /// the caller's organisation (--grantee) call the service in --to for --purpose. The
    /// calls then name the catalog item in `x-tongban-catalog-code`, so the providing node
    /// checks the consent on every call.
    #[arg(long, env = "TONGBAN_PORTAL_TOKEN", hide_env_values = true)]
    grant_consent: Option<String>,
    /// With --grant-consent: print the consent's token and make no calls.
    #[arg(long)]
    grant_only: bool,
    /// The caller as the consent names it, `city/org`.
    #[arg(long, default_value = "jinan/hrss")]
    grantee: String,
    #[arg(long, default_value = "JQ-03")]
    catalog_code: String,
    /// The service a granted consent names (--grant-consent).
    #[arg(long, default_value = "tongban.crosscity.v1.CrossCityService")]
    service: String,
    /// Calls per second (open loop); 0: closed loop with --in-flight calls.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Calls kept in flight in closed loop; the cap on calls in flight in open loop.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// HTTP/2 connections to the node (calls are spread over them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop after this many calls (0: no cap), whichever of it and --seconds comes first.
    #[arg(long, default_value_t = 0)]
    calls: u64,
    /// Deadline of each call, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// What the run saw.
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    failed: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            failed: BTreeMap::new(),
        })
    }

    fn record(&mut self, from: Instant, result: &Result<(), tonic::Status>) {
        let us = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency_us.record(us.clamp(1, 60_000_000));
        match result {
            Ok(()) => self.ok += 1,
            Err(s) => *self.failed.entry(format!("{:?}", s.code())).or_default() += 1,
        }
    }
}

/// The request every call sends: about the size of a real application (222 bytes).
fn request(args: &Args) -> anyhow::Result<tonic::Request<SubmitRequest>> {
    let mut fields = std::collections::HashMap::new();
    fields.insert("applicant_name".to_string(), "张三".to_string());
    fields.insert("phone".to_string(), "13800000000".to_string());
    fields.insert("address".to_string(), "济南市历下区泉城路1号".to_string());
    let mut req = tonic::Request::new(SubmitRequest {
        catalog_code: args.catalog_code.clone(),
        fields,
        attachment: vec![0x5a; 96],
    });
    req.set_timeout(Duration::from_millis(args.timeout_ms));
    let md: &mut MetadataMap = req.metadata_mut();
    let value = |v: &str| MetadataValue::try_from(v).context("metadata value is not ascii");
    md.insert("authorization", value(&format!("Bearer {}", args.token))?);
    md.insert(metadata::TARGET_CITY, value(&args.to)?);
    md.insert(metadata::PURPOSE, value(&args.purpose)?);
    if let Some(o) = &args.org {
        md.insert(metadata::TARGET_ORG, value(o)?);
    }
    if let Some(s) = &args.subject {
        md.insert(metadata::SUBJECT, value(s)?);
    }
    if let Some(c) = &args.consent {
        md.insert(metadata::CONSENT, value(c)?);
        md.insert(metadata::CATALOG_CODE, value(&args.catalog_code)?);
    }
    Ok(req)
}

async fn call(
    mut client: CrossCityServiceClient<Channel>,
    req: tonic::Request<SubmitRequest>,
) -> Result<(), tonic::Status> {
    client.submit(req).await.map(|_| ())
}

/// Grants the consent of `--grant-consent` and returns its token.
async fn grant_consent(args: &Args, portal_token: &str) -> anyhow::Result<String> {
    let subject = args
        .subject
        .clone()
        .context("--grant-consent needs --subject")?;
    let channel = Channel::from_shared(args.node.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach {}", args.node))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut req = tonic::Request::new(GrantRequest {
        subject,
        grantee: args.grantee.clone(),
        target_city: args.to.clone(),
        service: args.service.clone(),
        purpose: args.purpose.clone(),
        expires_at_ms: i64::try_from(now_ms)? + 24 * 3600 * 1000,
        items: vec![args.catalog_code.clone()],
    });
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {portal_token}"))?,
    );
    let granted = ConsentClient::new(channel)
        .grant(req)
        .await
        .context("the consent grant was refused")?;
    Ok(granted.into_inner().token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(portal) = args.grant_consent.clone() {
        let token = grant_consent(&args, &portal).await?;
        if args.grant_only {
            println!("{token}");
            return Ok(());
        }
        args.consent = Some(token);
    }
    let template = request(&args)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = Channel::from_shared(args.node.clone())?
            .http2_adaptive_window(false)
            .initial_connection_window_size(tongban_proto::h2::CONNECTION_WINDOW)
            .initial_stream_window_size(tongban_proto::h2::STREAM_WINDOW)
            .connect()
            .await
            .with_context(|| format!("cannot reach {}", args.node))?;
        clients.push(CrossCityServiceClient::new(channel));
    }
    let copy = |t: &tonic::Request<SubmitRequest>| {
        let mut r = tonic::Request::new(t.get_ref().clone());
        *r.metadata_mut() = t.metadata().clone();
        if let Some(d) = t.metadata().get("grpc-timeout") {
            r.metadata_mut().insert("grpc-timeout", d.clone());
        }
        r
    };
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.in_flight.max(1)));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end && (args.calls == 0 || sent < args.calls) {
        let intended = if args.rate == 0 {
            Instant::now()
        } else {
            // The n-th call's scheduled start; latency counts from it.
            let at = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            tokio::time::sleep_until(at.into()).await;
            at
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let client = clients[(sent as usize) % clients.len()].clone();
        let req = copy(&template);
        let tally = tally.clone();
        tasks.spawn(async move {
            let result = call(client, req).await;
            tally.lock().await.record(intended, &result);
            drop(permit);
        });
        sent += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let t = tally.lock().await;
    let h = &t.latency_us;
    let out = serde_json::json!({
        "calls": sent,
        "ok": t.ok,
        "failed": t.failed,
        "seconds": elapsed,
        "rps": t.ok as f64 / elapsed,
        "offered_rps": args.rate,
        "in_flight": args.in_flight,
        "latency_us": {
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        },
    });
    println!("{out}");
    if t.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} calls failed, by code: {:?}",
            t.failed.values().sum::<u64>(),
            t.failed
        )
    }
}
