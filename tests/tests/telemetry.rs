#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Traces across the boundary, checked at a real OTLP receiver: an OpenTelemetry
//! `TraceService` server built from the official proto definitions (`opentelemetry-proto`)
//! takes the spans of a Jinan and a Qingdao node, each a `tongban node` process with a
//! `[telemetry]` section pointing at it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tongban_devkit::local::dev_token;
use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_tests::authorize;
use tongban_tests::process::{channel, TwoCities};

/// One exported span, flattened: the service (node) that sent it and its fields.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    /// Every export request as received, to search for what must never be exported.
    raw: Arc<Mutex<Vec<String>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = req.into_inner();
        self.raw.lock().unwrap().push(format!("{req:?}"));
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(out);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves the receiver on loopback: it, its address, the stop switch and the task.
    async fn start() -> (
        Receiver,
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        (receiver, otlp, stop, server)
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_both_cities_at_a_real_otlp_receiver() {
    let (receiver, otlp, stop, server) = Receiver::start().await;

    // Two nodes, exporting every trace to it.
    let telemetry = format!("[telemetry]\nendpoint = \"http://{otlp}\"\nsample_ratio = 1.0\n");
    let two = TwoCities::start(&telemetry).await;
    let (g, jinan) = (&two.certs, &two.jinan);

    // A Jinan system calls Qingdao's service in its own trace, naming a citizen.
    let token = dev_token(g, "jinan", "hrss").unwrap();
    let citizen = tongban_devkit::demo::demo_subject("37010219850312002");
    let mut client = CrossCityServiceClient::new(channel(&jinan.caller).await);
    let mut answered = None;
    for attempt in 0..150 {
        let mut req = tongban_tests::case_handling_submit("qingdao", &token);
        let md = req.metadata_mut();
        md.insert("x-tongban-subject", citizen.parse().unwrap());
        md.insert(
            "x-tongban-request-id",
            format!("otel-{attempt}").parse().unwrap(),
        );
        md.insert(
            "traceparent",
            format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
        );
        match client.submit(req).await {
            Ok(_) => {
                answered = Some(format!("otel-{attempt}"));
                break;
            }
            // Until Jinan's node has Qingdao's catalog.
            Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("unexpected refusal: {s:?}"),
        }
    }
    let request_id = answered.expect("the cross-city call never succeeded");

    // Both nodes export the exchange's spans (batched every 500 ms).
    let wanted = ["call", "authenticate", "route", "policy", "audit_commit"];
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == TRACE)
            .cloned()
            .collect::<Vec<_>>();
        let has = |svc: &str, name: &str| spans.iter().any(|s| s.service == svc && s.name == name);
        if wanted
            .iter()
            .all(|n| has("tongban-jinan", n) && has("tongban-qingdao", n))
            && has("tongban-jinan", "forward_to_peer")
            && has("tongban-qingdao", "provider_call")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let find = |svc: &str, name: &str| -> Got {
        let of_call: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == svc && s.name == name)
            .collect();
        assert!(
            !of_call.is_empty(),
            "no `{name}` span from {svc} in trace {TRACE}: {spans:#?}"
        );
        // The successful attempt's (refused attempts are traced too).
        of_call
            .iter()
            .find(|s| {
                name != "call" || s.attrs.get("request_id").map(String::as_str) == Some(&request_id)
            })
            .copied()
            .unwrap_or(of_call[of_call.len() - 1])
            .clone()
    };
    eprintln!("{} spans of trace {TRACE} received", spans.len());
    let j_call = find("tongban-jinan", "call");
    let q_call = find("tongban-qingdao", "call");
    // The caller's traceparent is honoured: Jinan's call span is its child.
    assert_eq!(j_call.parent, CALLER_SPAN, "{j_call:?}");
    // Across the boundary: Qingdao's call span is the child of Jinan's forwarding span.
    let forward = spans
        .iter()
        .find(|s| {
            s.service == "tongban-jinan"
                && s.name == "forward_to_peer"
                && s.parent == j_call.span_id
        })
        .unwrap_or_else(|| panic!("no forward_to_peer under Jinan's call: {spans:#?}"));
    assert_eq!(q_call.parent, forward.span_id, "{q_call:?} {forward:?}");
    assert_eq!(
        forward.attrs.get("tongban.peer").map(String::as_str),
        Some("qingdao")
    );
    // The steps of each side are children of its call span.
    for (svc, call, steps) in [
        (
            "tongban-jinan",
            &j_call,
            &["authenticate", "route", "policy", "audit_commit"][..],
        ),
        (
            "tongban-qingdao",
            &q_call,
            &[
                "authenticate",
                "route",
                "policy",
                "provider_call",
                "audit_commit",
            ][..],
        ),
    ] {
        for step in steps {
            assert!(
                spans
                    .iter()
                    .any(|s| s.service == svc && s.name == *step && s.parent == call.span_id),
                "no `{step}` under {svc}'s call span: {spans:#?}"
            );
        }
    }
    // The call spans' attributes: cities, organisation, service, method, status, request id.
    for (call, side) in [(&j_call, "home"), (&q_call, "provider")] {
        let a = &call.attrs;
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("");
        assert_eq!(get("request_id"), request_id, "{a:?}");
        assert_eq!(get("trace_id"), TRACE, "{a:?}");
        assert_eq!(get("side"), side, "{a:?}");
        assert_eq!(get("tongban.caller_city"), "jinan", "{a:?}");
        assert_eq!(get("tongban.target_city"), "qingdao", "{a:?}");
        assert_eq!(get("tongban.caller_org"), "hrss", "{a:?}");
        assert_eq!(
            get("rpc.service"),
            tongban_tests::CROSSCITY_SERVICE,
            "{a:?}"
        );
        assert_eq!(get("rpc.method"), "Submit", "{a:?}");
        assert_eq!(get("rpc.grpc.status_code"), "0", "{a:?}");
    }
    assert_eq!(
        q_call.attrs.get("tongban.target_org").map(String::as_str),
        Some("hrss")
    );
    // Nothing exported carries the token or the clear resident id.
    for raw in receiver.raw.lock().unwrap().iter() {
        assert!(!raw.contains(&token), "the caller's token was exported");
        assert!(!raw.contains(&citizen), "a clear resident id was exported");
    }

    two.stop().await;
    let _ = stop.send(());
    let _ = server.await;
}

/// With a sample ratio of 0, nothing of a call is exported, yet the exchange still has one
/// trace id across both cities: the home node starts the trace and passes it on unsampled,
/// and both audit records keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_exchange_exports_nothing_and_keeps_one_trace_id() {
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::GetRequest;
    let (receiver, otlp, stop, server) = Receiver::start().await;
    let two = TwoCities::start(&format!(
        "[telemetry]\nendpoint = \"http://{otlp}\"\nsample_ratio = 0.0\n"
    ))
    .await;
    two.wait_until_federated().await;
    let token = dev_token(&two.certs, "jinan", "hrss").unwrap();
    let resp = CrossCityServiceClient::new(channel(&two.jinan.caller).await)
        .submit(tongban_tests::case_handling_submit("qingdao", &token))
        .await
        .unwrap();
    let rid = tongban_tests::request_id_of(&resp);
    let op = tongban_devkit::local::dev_token_with_roles(
        &two.certs,
        "jinan",
        "ops",
        &["audit-operator"],
    )
    .unwrap();
    let mut get = tonic::Request::new(GetRequest {
        request_id: rid.clone(),
    });
    authorize(&mut get, &op);
    let got = AuditClient::new(channel(&two.jinan.caller).await)
        .get(get)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.local.len(), 1);
    assert_eq!(got.peer.len(), 1, "{}", got.peer_error);
    let trace = got.local[0].trace_id.clone();
    assert_eq!(trace.len(), 32, "the home node started a trace: {trace:?}");
    assert_eq!(got.peer[0].trace_id, trace, "qingdao kept jinan's trace id");
    // Both records keep the digest of the (signed) assertion's claims.
    assert_eq!(got.local[0].assertion_digest.len(), 32);
    assert_eq!(got.peer[0].assertion_digest, got.local[0].assertion_digest);
    // Give a batch time to leave (500 ms), then: nothing of that trace was exported.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let exported = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .count();
    assert_eq!(exported, 0, "an unsampled trace was exported");
    two.stop().await;
    let _ = stop.send(());
    let _ = server.await;
}

/// At a ratio between 0 and 1 the decision is made once per trace, at its head: a share of
/// new traces is exported whole (the home node's call span and the providing node's, one
/// trace id), the rest not at all; a caller's `traceparent` decides for its own call
/// whatever the ratio (sampled flag set: exported; clear: not).
/// Both nodes run on a current-thread runtime (`[runtime]`, what `auto` picks on one core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_traces_is_exported_whole_and_a_callers_decision_is_followed() {
    let (receiver, otlp, stop, server) = Receiver::start().await;
    let two = TwoCities::start(&format!(
        "[telemetry]\nendpoint = \"http://{otlp}\"\nsample_ratio = 0.5\n\n[runtime]\nflavor = \"current_thread\"\n"
    ))
    .await;
    two.wait_until_federated().await;
    // Each node says which runtime it runs on.
    for node in [&two.jinan, &two.qingdao] {
        assert!(
            node.wait_for_line(
                |l| l.contains("node started") && l.contains("runtime=current_thread")
            )
            .await,
            "{:?}",
            node.lines.lock().unwrap()
        );
    }
    let token = dev_token(&two.certs, "jinan", "hrss").unwrap();
    let mut client = CrossCityServiceClient::new(channel(&two.jinan.caller).await);
    // 60 calls that start their trace at Jinan, 10 that bring a sampled traceparent and 10
    // an unsampled one.
    let (roots, flagged) = (60, 10);
    let mut root_ids = Vec::new();
    let trace_of = |i: usize| format!("{:032x}", 0xabc0_0000_u64 + i as u64);
    for i in 0..roots + 2 * flagged {
        let mut req = tongban_tests::case_handling_submit("qingdao", &token);
        let rid = format!("share-{i}");
        req.metadata_mut()
            .insert("x-tongban-request-id", rid.parse().unwrap());
        if i >= roots {
            let flags = if i < roots + flagged { "01" } else { "00" };
            let tp = format!("00-{}-{CALLER_SPAN}-{flags}", trace_of(i));
            req.metadata_mut()
                .insert("traceparent", tp.parse().unwrap());
        } else {
            root_ids.push(rid);
        }
        client.submit(req).await.unwrap();
    }
    // Give the last batch time to leave (500 ms), then read what arrived.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = receiver.spans.lock().unwrap().clone();
    let calls = |svc: &str| -> HashMap<String, String> {
        spans
            .iter()
            .filter(|s| s.service == svc && s.name == "call")
            .map(|s| {
                (
                    s.attrs.get("request_id").cloned().unwrap_or_default(),
                    s.trace_id.clone(),
                )
            })
            .collect()
    };
    let (jinan, qingdao) = (calls("tongban-jinan"), calls("tongban-qingdao"));
    let exported: Vec<&String> = root_ids.iter().filter(|r| jinan.contains_key(*r)).collect();
    // Binomial(60, 0.5): outside 15..=45 with a probability below 1e-4.
    assert!(
        (15..=45).contains(&exported.len()),
        "{} of {roots} new traces exported at a ratio of 0.5",
        exported.len()
    );
    // Each exported trace is whole: Qingdao recorded the same exchange in the same trace;
    // each unexported one is absent on both sides.
    let qingdao_traces: std::collections::HashSet<&String> = qingdao.values().collect();
    for r in &root_ids {
        match jinan.get(r) {
            Some(trace) => assert!(
                qingdao_traces.contains(trace),
                "{r}: jinan exported trace {trace}, qingdao did not"
            ),
            None => assert!(!qingdao.contains_key(r), "{r}: only qingdao exported it"),
        }
    }
    // No span of an unrecorded call leaks out on its own (a step's span would otherwise
    // start a trace of its own): every exported span is in the trace of an exported call.
    let traced: std::collections::HashSet<&String> = jinan.values().collect();
    let strays: Vec<&Got> = spans
        .iter()
        .filter(|s| !traced.contains(&s.trace_id))
        .collect();
    assert!(
        strays.is_empty(),
        "spans outside any exported call: {strays:#?}"
    );
    for i in roots..roots + 2 * flagged {
        let sampled = i < roots + flagged;
        let rid = format!("share-{i}");
        assert_eq!(jinan.contains_key(&rid), sampled, "{rid} at jinan");
        assert_eq!(
            spans
                .iter()
                .any(|s| s.service == "tongban-qingdao" && s.trace_id == trace_of(i)),
            sampled,
            "{rid} at qingdao"
        );
    }
    two.stop().await;
    let _ = stop.send(());
    let _ = server.await;
}
