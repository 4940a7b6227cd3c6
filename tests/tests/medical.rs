#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Mutual recognition across the boundary: a Jinan patient's results published in Jinan,
//! queried by a Qingdao hospital through its node (purpose, consent), each with its verdict
//! and reasons; a large report streamed; the physician's decisions and the statistics; both
//! nodes' audit and the patient's access log.

use std::time::Duration;

use tempfile::TempDir;
use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::{loopback_limits, LocalFederation};
use tongban_devkit::medical::Registries;
use tongban_medical::{Rules, RECOGNITION, SERVICE};
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::AccessLogRequest;
use tongban_proto::medical::v1::recognition_client::RecognitionClient;
use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
use tongban_proto::medical::v1::{
    report_chunk, result, DecideRequest, Decision, GetReportRequest, PublishRequest, Quantity,
    QueryRequest, QueryResult, Report, ReportChunk, ReportKind, ReportStatus, Result as LabResult,
    RetestReason, StatisticsRequest,
};
use tongban_proto::metadata;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const QILU: &str = "12370000495570024A";
const COMMUNITY: &str = "12370100MB2836047H";
const DAY: i64 = 86_400_000;

struct World {
    fed: LocalFederation,
    registries: Registries,
    _dir: TempDir,
    patient: String,
    /// The patient's consents: Jinan's Qilu hospital publishing, Qingdao's hospital reading.
    publish_consent: String,
    read_consent: String,
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    // Imaging reports are large: messages up to 16 MiB pass the nodes.
    let limits = tongban_gateway::config::Limits {
        max_message_bytes: 16 << 20,
        ..loopback_limits()
    };
    let fed = LocalFederation::start(dir.path(), &["jinan", "qingdao"], limits)
        .await
        .unwrap();
    let registries = Registries::start(&fed, &Rules::embedded().unwrap())
        .await
        .unwrap();
    let patient = demo_subject("37010219850312002");
    let consent = |grantee: &'static str| {
        fed.grant_consent_for(
            SERVICE,
            "jinan",
            &patient,
            grantee,
            ("jinan", "medical-treatment"),
            &tongban_medical::ITEMS,
        )
    };
    let (_, publish_consent) = consent("jinan/qilu").await.unwrap();
    let (_, read_consent) = consent("qingdao/qdfy").await.unwrap();
    World {
        fed,
        registries,
        _dir: dir,
        patient,
        publish_consent,
        read_consent,
    }
}

/// The catalog data item a registry request is about (a consent names it).
trait Item {
    const ITEM: &'static str;
}

impl Item for PublishRequest {
    const ITEM: &'static str = tongban_medical::PUBLISH_ITEM;
}
impl Item for QueryRequest {
    const ITEM: &'static str = tongban_medical::READ_ITEM;
}
impl Item for GetReportRequest {
    const ITEM: &'static str = tongban_medical::READ_ITEM;
}

impl World {
    /// A call by `city/org` to `target`'s registry, naming the request's item.
    fn call<T: Item>(
        &self,
        msg: T,
        (city, org): (&str, &str),
        target: &str,
        purpose: &str,
        consent: Option<&str>,
    ) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_secs(10));
        let token = self.fed.token(city, org).unwrap();
        let mut pairs = vec![
            ("authorization", format!("Bearer {token}")),
            (metadata::TARGET_CITY, target.to_string()),
            (metadata::PURPOSE, purpose.to_string()),
            (metadata::SUBJECT, self.patient.clone()),
            (metadata::CATALOG_CODE, T::ITEM.to_string()),
        ];
        if let Some(c) = consent {
            pairs.push((metadata::CONSENT, c.to_string()));
        }
        for (k, v) in pairs {
            r.metadata_mut()
                .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
        }
        r
    }

    async fn registry(&self, city: &str) -> ResultRegistryClient<tonic::transport::Channel> {
        ResultRegistryClient::new(self.fed.channel(city).await.unwrap())
            .max_decoding_message_size(8 << 20)
    }

    /// A call by the Qingdao hospital to Jinan's registry, with the patient's consent.
    fn qingdao_asks<T: Item>(&self, msg: T) -> Request<T> {
        self.call(
            msg,
            ("qingdao", "qdfy"),
            "jinan",
            "medical-treatment",
            Some(&self.read_consent),
        )
    }

    /// Jinan's report `id` (its registry id) as FHIR R4 JSON, exported through the Qingdao
    /// hospital's node.
    async fn export_fhir(&self, id: &str) -> String {
        let req = self.qingdao_asks(GetReportRequest {
            registry_id: id.into(),
        });
        self.registry("qingdao")
            .await
            .export_fhir(req)
            .await
            .unwrap()
            .into_inner()
            .json
    }

    /// Publishes `report` in Jinan; its registry id.
    async fn publish(&self, report: Report) -> Result<String, tonic::Status> {
        let req = self.call(
            PublishRequest {
                report: Some(report),
            },
            ("jinan", "qilu"),
            "jinan",
            "medical-treatment",
            Some(&self.publish_consent),
        );
        self.registry("jinan")
            .await
            .publish(req)
            .await
            .map(|r| r.into_inner().registry_id)
    }

    /// The metadata of a Jinan hospital's publish call (token, target, subject, item,
    /// consent).
    fn publish_metadata(&self) -> tonic::metadata::MetadataMap {
        self.call(
            PublishRequest::default(),
            ("jinan", "qilu"),
            "jinan",
            "medical-treatment",
            Some(&self.publish_consent),
        )
        .into_parts()
        .0
    }

    /// Sends `chunks` to Jinan's registry with PublishStream.
    async fn publish_chunks(
        &self,
        chunks: Vec<ReportChunk>,
    ) -> Result<tongban_proto::medical::v1::PublishResponse, tonic::Status> {
        let mut req = Request::new(tokio_stream::iter(chunks));
        *req.metadata_mut() = self.publish_metadata();
        self.registry("jinan")
            .await
            .publish_stream(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Jinan's registry's attachment files: (stored, staged).
    fn attachment_files(&self) -> (usize, usize) {
        let dir = self
            .fed
            .root
            .join("jinan")
            .join("medical")
            .join("attachments");
        let count = |d: std::path::PathBuf| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
                .count()
        };
        (count(dir.clone()), count(dir.join("staging")))
    }

    async fn query(
        &self,
        purpose: &str,
        consent: Option<&str>,
    ) -> Result<Vec<QueryResult>, tonic::Status> {
        let req = self.call(
            QueryRequest::default(),
            ("qingdao", "qdfy"),
            "jinan",
            purpose,
            consent,
        );
        self.registry("qingdao")
            .await
            .query(req)
            .await
            .map(|r| r.into_inner().results)
    }
}

fn lab(id: &str, loinc: &str, value: f64, unit: &str) -> LabResult {
    LabResult {
        result_id: id.into(),
        local_code: format!("L-{loinc}"),
        loinc: loinc.into(),
        value: Some(result::Value::Quantity(Quantity {
            value,
            unit: unit.into(),
        })),
        interpretation: "N".into(),
        ..Default::default()
    }
}

fn report(
    id: &str,
    patient: &str,
    institution: &str,
    status: ReportStatus,
    collected: i64,
    results: Vec<LabResult>,
) -> Report {
    Report {
        report_id: id.into(),
        patient_id: patient.into(),
        kind: ReportKind::Laboratory as i32,
        status: status as i32,
        collected_at_ms: collected,
        issued_at_ms: collected + 3_600_000,
        institution_code: institution.into(),
        institution_name: "test institution".into(),
        department: "检验科".into(),
        verifier: "王医生".into(),
        results,
        conclusion: "未见异常".into(),
        ..Default::default()
    }
}

fn verdict_of<'a>(rs: &'a [QueryResult], report: &str, result: &str) -> &'a QueryResult {
    rs.iter()
        .find(|r| r.report_id == report && r.result.as_ref().unwrap().result_id == result)
        .unwrap_or_else(|| panic!("no {report}/{result} in {rs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qingdao_hospital_finds_a_jinan_patients_results_with_verdicts() {
    let w = world().await;
    let now = now_ms();
    let p = w.patient.clone();
    let reports = [
        report(
            "R1",
            &p,
            QILU,
            ReportStatus::Final,
            now - 3 * DAY,
            vec![
                lab("k", "2823-3", 4.1, "mmol/L"),
                lab("alt", "1742-6", 21.0, "U/L"),
            ],
        ),
        report(
            "R2",
            &p,
            COMMUNITY,
            ReportStatus::Final,
            now - 2 * DAY,
            vec![
                lab("k", "2823-3", 4.3, "mmol/L"),
                lab("alt", "1742-6", 30.0, "U/L"),
            ],
        ),
        report(
            "R3",
            &p,
            QILU,
            ReportStatus::Preliminary,
            now - DAY,
            vec![lab("glu", "2345-7", 5.2, "mmol/L")],
        ),
        report(
            "R4",
            &p,
            QILU,
            ReportStatus::Final,
            now - 8 * DAY,
            vec![
                lab("na", "2951-2", 140.0, "mmol/L"),
                lab("x", "99999-9", 1.0, "1"),
            ],
        ),
    ];
    for r in reports {
        w.publish(r).await.unwrap();
    }
    // Across the boundary: no consent, the wrong purpose, then with the patient's consent.
    let e = w.query("medical-treatment", None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = w
        .query("case-handling", Some(&w.read_consent))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let rs = w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap();
    assert_eq!(rs.len(), 7);
    assert!(rs.iter().all(|r| r.city == "jinan"));
    let v = |rep, res| verdict_of(&rs, rep, res).verdict.clone().unwrap();
    assert!(v("R1", "k").eligible, "{:?}", v("R1", "k"));
    assert!(v("R1", "alt").eligible);
    assert_eq!(verdict_of(&rs, "R1", "k").item, "K");
    assert!(v("R2", "k").eligible);
    let not_accredited = v("R2", "alt");
    assert!(!not_accredited.eligible);
    assert!(not_accredited.reasons[0].contains("not accredited for ALT"));
    let preliminary = v("R3", "glu");
    assert!(
        preliminary.reasons[0].contains("preliminary"),
        "{preliminary:?}"
    );
    let expired = v("R4", "na");
    assert_eq!(expired.reasons.len(), 1);
    assert!(
        expired.reasons[0].contains("past its validity"),
        "{expired:?}"
    );
    let unknown = v("R4", "x");
    assert!(unknown.reasons[0].contains("not on the recognition list"));
    assert!(rs
        .iter()
        .all(|r| r.verdict.as_ref().unwrap().rules_version == "2026.11-illustrative"));
    // The clear id never comes back.
    assert!(!format!("{rs:?}").contains(&p));

    // Both nodes audited the query; it is in the patient's access log at home.
    for city in ["jinan", "qingdao"] {
        let node = w.fed.city(city).unwrap().node().unwrap();
        let filter = tongban_gateway::audit::index::Filter {
            service: Some(SERVICE.into()),
            limit: 100,
            ..Default::default()
        };
        let (records, _) = node.auditor().query(&filter).await;
        assert!(
            records
                .iter()
                .any(|r| r.method == "Query" && r.caller_city == "qingdao" && r.grpc_status == 0),
            "{city}"
        );
    }
    let idp = w.fed.idp("jinan").unwrap();
    let token = idp
        .issue(
            "citizens",
            &["citizen".to_string()],
            Duration::from_secs(600),
            &p,
        )
        .unwrap();
    let mut req = Request::new(AccessLogRequest {
        subject: p.clone(),
        limit: 50,
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let log = AuditClient::new(w.fed.channel("jinan").await.unwrap())
        .access_log(req)
        .await
        .unwrap()
        .into_inner()
        .accesses;
    assert!(log.iter().any(|a| a.caller_city == "qingdao"
        && a.caller_org == "qdfy"
        && a.method == "Query"
        && a.purpose == "medical-treatment"));

    // Only Jinan's own systems publish to Jinan's registry.
    let req = w.qingdao_asks(PublishRequest {
        report: Some(report(
            "Q1",
            &p,
            QILU,
            ReportStatus::Final,
            now,
            vec![lab("k", "2823-3", 4.0, "mmol/L")],
        )),
    });
    let e = w.registry("qingdao").await.publish(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A malformed report names its bad fields.
    let mut bad = report(
        "B1",
        "37010219850312009",
        "123",
        ReportStatus::Unspecified,
        0,
        vec![],
    );
    bad.kind = 0;
    let e = w.publish(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let fields: Vec<String> = e
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "report.patient_id",
            "report.kind",
            "report.status",
            "report.collected_at_ms",
            "report.institution_code",
            "report.results"
        ]
    );
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_report_streams_across_the_boundary() {
    let w = world().await;
    let now = now_ms();
    let attachment: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut r = report(
        "CT1",
        &w.patient,
        QILU,
        ReportStatus::Final,
        now - DAY,
        vec![LabResult {
            result_id: "ct".into(),
            modality: "CT".into(),
            body_site: "head".into(),
            study_instance_uid: "1.2.840.113619.2.55.3.604688119".into(),
            accession_number: "A2026112301".into(),
            value: Some(result::Value::Text("颅内未见明显异常".into())),
            ..Default::default()
        }],
    );
    r.kind = ReportKind::Imaging as i32;
    r.attachment = attachment.clone();
    let ct1 = w.publish(r).await.unwrap();
    let rs = w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap();
    assert_eq!(rs[0].item, "CT-HEAD");
    assert!(rs[0].verdict.as_ref().unwrap().eligible);
    // The registry's id, in the query's answer too: `jinan-rpt-` and 122 random bits.
    assert_eq!(rs[0].registry_id, ct1);
    let random = ct1.strip_prefix("jinan-rpt-").unwrap();
    assert!(
        random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ct1}"
    );
    // The institution's own id no longer fetches it (it is guessable).
    let e = w
        .registry("qingdao")
        .await
        .get_report(w.qingdao_asks(GetReportRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("registry_id"), "{}", e.message());
    let req = w.qingdao_asks(GetReportRequest {
        registry_id: ct1.clone(),
    });
    let mut stream = w
        .registry("qingdao")
        .await
        .get_report(req)
        .await
        .unwrap()
        .into_inner();
    let mut header = None;
    let mut got = Vec::new();
    let mut chunks = 0;
    while let Some(c) = stream.message().await.unwrap() {
        match c.part.unwrap() {
            report_chunk::Part::Header(h) => header = Some(h),
            report_chunk::Part::Attachment(b) => {
                chunks += 1;
                got.extend_from_slice(&b);
            }
        }
    }
    let header = header.unwrap();
    assert_eq!(header.report_id, "CT1");
    assert_ne!(header.patient_id, w.patient);
    assert_eq!(chunks, 24, "6 MiB in 256 KiB chunks");
    assert_eq!(got, attachment);
    // The header says what the registry stored, for the receiver to check.
    assert_eq!(header.attachment_bytes, 6 << 20);
    assert_eq!(header.attachment_sha256, sha256_hex(&attachment));
    w.registries.stop().await;
    w.fed.shutdown().await;
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

fn header(r: Report) -> ReportChunk {
    ReportChunk {
        part: Some(report_chunk::Part::Header(r)),
    }
}

fn piece(b: &[u8]) -> ReportChunk {
    ReportChunk {
        part: Some(report_chunk::Part::Attachment(b.to_vec())),
    }
}

fn ct_report(patient: &str, id: &str, now: i64) -> Report {
    let mut r = report(
        id,
        patient,
        QILU,
        ReportStatus::Final,
        now - DAY,
        vec![LabResult {
            result_id: "ct".into(),
            modality: "CT".into(),
            body_site: "head".into(),
            value: Some(result::Value::Text("颅内未见明显异常".into())),
            ..Default::default()
        }],
    );
    r.kind = ReportKind::Imaging as i32;
    r
}

/// The field a refusal's BadRequest names first.
fn field_of(e: &tonic::Status) -> String {
    e.get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_checked_before_and_after_its_bytes() {
    let w = world().await;
    let now = now_ms();
    let bytes: Vec<u8> = (0..(1u32 << 20) + 77).map(|i| (i % 253) as u8).collect();
    // Bad input first: the attachment before the header, the attachment in the header, a
    // second header, a header that fails its checks (refused before a byte is taken).
    let e = w.publish_chunks(vec![piece(&bytes)]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(field_of(&e), "header");
    let mut inline = ct_report(&w.patient, "CT-S", now);
    inline.attachment = bytes.clone();
    let e = w.publish_chunks(vec![header(inline)]).await.unwrap_err();
    assert_eq!(field_of(&e), "header.attachment", "{e:?}");
    let twice = vec![
        header(ct_report(&w.patient, "CT-S", now)),
        piece(&bytes[..10]),
        header(ct_report(&w.patient, "CT-S", now)),
    ];
    let e = w.publish_chunks(twice).await.unwrap_err();
    assert_eq!(field_of(&e), "header", "{e:?}");
    let mut empty = ct_report(&w.patient, "CT-S", now);
    empty.results.clear();
    let e = w
        .publish_chunks(vec![header(empty), piece(&bytes)])
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "report.results", "{e:?}");
    // An attachment cut on the way: the SHA-256 in the header does not match.
    let mut claimed = ct_report(&w.patient, "CT-S", now);
    claimed.attachment_sha256 = sha256_hex(&bytes);
    let e = w
        .publish_chunks(vec![header(claimed.clone()), piece(&bytes[..1 << 20])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(field_of(&e), "report.attachment_sha256");
    assert!(e.message().contains("attachment_sha256"), "{}", e.message());
    // Nothing of the refused uploads is stored, nor left staged.
    assert!(w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(w.attachment_files(), (0, 0));

    // The whole attachment, in uneven chunks: stored, and fetched across the boundary
    // intact (length and SHA-256 in the header).
    let chunks = vec![
        header(claimed.clone()),
        piece(&bytes[..1000]),
        piece(&bytes[1000..700_000]),
        piece(&bytes[700_000..]),
    ];
    let first = w.publish_chunks(chunks).await.unwrap();
    assert_eq!(first.results, 1);
    let md = w.qingdao_asks(GetReportRequest::default()).into_parts().0;
    let mut sink = Vec::new();
    let fetched = tongban_medical::transfer::fetch(
        &mut w.registry("qingdao").await,
        md.clone(),
        &first.registry_id,
        &mut sink,
    )
    .await
    .unwrap();
    assert!(fetched.intact(), "{fetched:?}");
    assert_eq!(sink, bytes);
    assert_eq!(fetched.header.attachment_bytes, bytes.len() as u64);
    // An amendment replaces the attachment under the same registry id; the old file goes.
    let smaller = &bytes[..5000];
    claimed.attachment_sha256 = sha256_hex(smaller);
    let again = w
        .publish_chunks(vec![header(claimed), piece(smaller)])
        .await
        .unwrap();
    assert_eq!(again.registry_id, first.registry_id);
    let mut sink = Vec::new();
    let fetched = tongban_medical::transfer::fetch(
        &mut w.registry("qingdao").await,
        md,
        &first.registry_id,
        &mut sink,
    )
    .await
    .unwrap();
    assert!(fetched.intact());
    assert_eq!(sink, smaller);
    assert_eq!(w.attachment_files(), (1, 0));

    // A publisher that goes away mid-upload: nothing stored, its staged file removed.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    *req.metadata_mut() = w.publish_metadata();
    let mut client = w.registry("jinan").await;
    let call = tokio::spawn(async move { client.publish_stream(req).await });
    tx.send(header(ct_report(&w.patient, "CT-GONE", now)))
        .await
        .unwrap();
    tx.send(piece(&bytes)).await.unwrap();
    let mut staged = false;
    for _ in 0..200 {
        if w.attachment_files().1 == 1 {
            staged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(staged, "the upload never reached the registry");
    call.abort();
    let mut cleaned = false;
    for _ in 0..500 {
        if w.attachment_files() == (1, 0) {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cleaned,
        "a cancelled upload left {:?}",
        w.attachment_files()
    );
    let reports: Vec<String> = w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.report_id)
        .collect();
    assert_eq!(reports, ["CT-S"]);
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_recorded_and_counted_for_regulators() {
    let w = world().await;
    let mut recognition = RecognitionClient::new(w.fed.channel("qingdao").await.unwrap());
    let decide = |decision: Decision, reason: RetestReason, text: &str, item: &str| {
        let mut r = Request::new(DecideRequest {
            origin_city: "jinan".into(),
            report_id: "R1".into(),
            result_id: "k".into(),
            item: item.into(),
            decision: decision as i32,
            reason: reason as i32,
            reason_text: text.into(),
            physician: "qdfy-0231".into(),
        });
        let token = w.fed.token("qingdao", "qdfy").unwrap();
        for (k, v) in [
            ("authorization", format!("Bearer {token}")),
            (metadata::TARGET_CITY, "qingdao".to_string()),
            (metadata::PURPOSE, "medical-treatment".to_string()),
        ] {
            r.metadata_mut()
                .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
        }
        r
    };
    let since = now_ms() - 1000;
    for (d, reason, text, item) in [
        (Decision::Accepted, RetestReason::Unspecified, "", "K"),
        (Decision::Accepted, RetestReason::Unspecified, "", "K"),
        (Decision::Retested, RetestReason::ConditionChanged, "", "K"),
        (
            Decision::Retested,
            RetestReason::Other,
            "patient request",
            "ALT",
        ),
    ] {
        recognition
            .decide(decide(d, reason, text, item))
            .await
            .unwrap();
    }
    // Refusals: a re-test without its reason, `other` without text, no decision.
    for (d, reason, text, field) in [
        (Decision::Retested, RetestReason::Unspecified, "", "reason"),
        (Decision::Retested, RetestReason::Other, "", "reason_text"),
        (
            Decision::Unspecified,
            RetestReason::Unspecified,
            "",
            "decision",
        ),
    ] {
        let e = recognition
            .decide(decide(d, reason, text, "K"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
    let mut r = Request::new(StatisticsRequest {
        from_ms: since,
        until_ms: 0,
    });
    let token = w.fed.token("qingdao", "ybj").unwrap();
    for (k, v) in [
        ("authorization", format!("Bearer {token}")),
        (metadata::TARGET_CITY, "qingdao".to_string()),
        (metadata::PURPOSE, "medical-treatment".to_string()),
    ] {
        r.metadata_mut()
            .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    let s = recognition.statistics(r).await.unwrap().into_inner();
    assert_eq!((s.recognised, s.retested), (2, 2));
    let count = |item: &str, d: Decision, reason: RetestReason| {
        s.rows
            .iter()
            .find(|r| r.item == item && r.decision == d as i32 && r.reason == reason as i32)
            .map(|r| (r.origin_city.clone(), r.count))
    };
    assert_eq!(
        count("K", Decision::Accepted, RetestReason::Unspecified),
        Some(("jinan".into(), 2))
    );
    assert_eq!(
        count("K", Decision::Retested, RetestReason::ConditionChanged),
        Some(("jinan".into(), 1))
    );
    assert_eq!(
        count("ALT", Decision::Retested, RetestReason::Other),
        Some(("jinan".into(), 1))
    );
    // Recognition holds no patient data: registered without, so no consent was needed.
    let node = w.fed.city("qingdao").unwrap().node().unwrap();
    assert!(
        node.wait_for_catalog(Duration::from_secs(1), |s| s.local.iter().any(|l| l
            .record
            .service
            == RECOGNITION
            && !l.record.personal_data))
            .await
    );
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_export_as_fhir_r4_that_an_independent_validator_accepts() {
    let w = world().await;
    let now = now_ms();
    let mut k = lab("k", "2823-3", 4.1, "mmol/L");
    k.display = "Potassium".into();
    k.reference_range = Some(tongban_proto::medical::v1::ReferenceRange {
        low: Some(3.5),
        high: Some(5.3),
        unit: "mmol/L".into(),
        text: String::new(),
    });
    let lab_report = report(
        "R/1 2",
        &w.patient,
        QILU,
        ReportStatus::Final,
        now - DAY,
        vec![k, lab("hb", "718-7", 128.0, "g/L")],
    );
    let lab_id = w.publish(lab_report).await.unwrap();
    let mut ct = report(
        "CT9",
        &w.patient,
        QILU,
        ReportStatus::Amended,
        now - DAY,
        vec![
            LabResult {
                result_id: "ct".into(),
                modality: "CT".into(),
                body_site: "head".into(),
                study_instance_uid: "1.2.840.113619.2.55.3.604688119".into(),
                accession_number: "A2026112301".into(),
                value: Some(result::Value::Text("颅内未见明显异常".into())),
                ..Default::default()
            },
            // A second series of the same study: exported as a series of the same study.
            LabResult {
                result_id: "ct-chest".into(),
                modality: "CT".into(),
                body_site: "chest".into(),
                study_instance_uid: "1.2.840.113619.2.55.3.604688119".into(),
                series_instance_uid: "1.2.840.113619.2.55.3.604688119.2".into(),
                body_site_coding: Some(tongban_proto::medical::v1::Coding {
                    system: "http://snomed.info/sct".into(),
                    code: "51185008".into(),
                    display: "Chest".into(),
                }),
                accession_number: "A2026112301".into(),
                value: Some(result::Value::Text("双肺未见明显异常".into())),
                ..Default::default()
            },
        ],
    );
    ct.kind = ReportKind::Imaging as i32;
    let ct_id = w.publish(ct).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (id, expect_types, expect_status) in [
        (
            lab_id.as_str(),
            vec!["DiagnosticReport", "Observation", "Observation"],
            "final",
        ),
        (
            ct_id.as_str(),
            vec!["DiagnosticReport", "ImagingStudy"],
            "amended",
        ),
    ] {
        let doc = w.export_fhir(id).await;
        assert!(!doc.contains(&w.patient), "clear id in the export");
        let file = dir.path().join("export.json");
        std::fs::write(&file, &doc).unwrap();
        let v =
            tongban_tests::run_python_json("fhir_validate.py", vec![file.display().to_string()])
                .await;
        assert_eq!(v["fhir_version"], "4.0.1", "{v}");
        assert_eq!(v["types"], serde_json::json!(expect_types), "{v}");
        assert_eq!(v["statuses"][0], expect_status, "{v}");
        assert_eq!(v["without_code"], "refused", "{v}");
        if id == ct_id {
            assert_eq!(v["imaging_uids"][0], "1.2.840.113619.2.55.3.604688119");
            assert_eq!(
                v["series"],
                serde_json::json!([
                    ["1.2.840.113619.2.55.3.604688119", "head"],
                    ["1.2.840.113619.2.55.3.604688119.2", "51185008"]
                ]),
                "{v}"
            );
        } else {
            assert_eq!(v["loinc"], serde_json::json!(["2823-3", "718-7"]));
            assert_eq!(v["units"], serde_json::json!(["mmol/L", "g/L"]));
        }
    }
    w.registries.stop().await;
    w.fed.shutdown().await;
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fhir")
        .join(name)
}

/// `tongban medical import FILE --dry-run`: (exit code, stdout + stderr).
fn cli_import(file: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let bin = std::env::var_os("TONGBAN_BIN").expect("TONGBAN_BIN (tests/run.sh sets it)");
    let out = std::process::Command::new(bin)
        .args(["medical", "import"])
        .arg(file)
        .arg("--dry-run")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_r4_resources_import_and_bad_ones_are_refused_where_they_are_wrong() {
    use tongban_medical::fhir_import::{import, Defaults};
    let w = world().await;
    // The fixtures name the demo patient; this federation's patient is another: say so.
    let defaults = Defaults::default();
    let mut published = Vec::new();
    for name in [
        "cbc-contained.json",
        "panel-bundle.json",
        "ct-head-study.json",
    ] {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        let d = if name == "ct-head-study.json" {
            Defaults {
                institution_code: Some(QILU.into()),
                ..Defaults::default()
            }
        } else if name == "panel-bundle.json" {
            // Its subject and performer are references without identifiers.
            Defaults {
                patient: Some("370102197805060048".into()),
                institution_code: Some(QILU.into()),
                institution_name: None,
            }
        } else {
            defaults.clone()
        };
        for mut r in import(&text, &d).unwrap() {
            assert_eq!(r.patient_id, "370102197805060048", "{name}");
            r.patient_id = w.patient.clone();
            published.push(r.report_id.clone());
            w.publish(r).await.unwrap();
        }
    }
    // Found from Qingdao, valid as of 2026-11-21 08:00 CST.
    let mut req = w.qingdao_asks(QueryRequest {
        item_codes: Vec::new(),
        valid_at_ms: 1_795_219_200_000,
    });
    req.set_timeout(Duration::from_secs(10));
    let rs = w
        .registry("qingdao")
        .await
        .query(req)
        .await
        .unwrap()
        .into_inner()
        .results;
    let items: Vec<(&str, &str, bool)> = rs
        .iter()
        .map(|r| {
            (
                r.report_id.as_str(),
                r.item.as_str(),
                r.verdict.as_ref().unwrap().eligible,
            )
        })
        .collect();
    for expected in [
        ("QL-CBC-20261120-0042", "CBC", true),
        ("chem", "K", true),
        ("chem", "CREA", true),
        (
            "1.2.840.113619.2.55.3.604688119.971.1605141211.123",
            "CT-HEAD",
            true,
        ),
    ] {
        assert!(items.contains(&expected), "{expected:?} not in {items:?}");
    }
    let hb = rs
        .iter()
        .find(|r| r.result.as_ref().unwrap().loinc == "718-7")
        .unwrap();
    let hb_result = hb.result.as_ref().unwrap();
    assert_eq!(hb_result.local_code, "HGB");
    assert_eq!(hb_result.reference_range.as_ref().unwrap().low, Some(115.0));
    assert_eq!(hb_result.interpretation, "N");

    // The CLI checks the same files, and names the bad element of broken ones (exit 65).
    let (code, out) = cli_import(&fixture("cbc-contained.json"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 result(s) [718-7, 6690-2, 777-3]"), "{out}");
    let (code, out) = cli_import(&fixture("ct-head-study.json"), &["--institution", QILU]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_import(&fixture("panel-bundle.json"), &[]);
    assert_eq!(code, 65);
    assert!(out.contains("Bundle.entry[0].resource.subject"), "{out}");
    let cbc = std::fs::read_to_string(fixture("cbc-contained.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (edit, at) in [
        (
            ("\"reference\": \"#plt\"", "\"reference\": \"#rbc\""),
            "DiagnosticReport.result[2].reference",
        ),
        (
            ("\"conclusion\"", "\"colour\": 1, \"conclusion\""),
            "DiagnosticReport.colour",
        ),
        (
            ("\"code\": \"6690-2\"", "\"code\": 6690"),
            "DiagnosticReport.contained[1].code.coding[0].code",
        ),
        (
            ("\"value\": 128,", "\"value\": \"128\","),
            "DiagnosticReport.contained[0].valueQuantity.value",
        ),
        (
            (
                "\"status\": \"final\",\n  \"category\"",
                "\"status\": \"done\",\n  \"category\"",
            ),
            "DiagnosticReport.status",
        ),
        (
            ("\"effectiveDateTime\"", "\"effectiveDate\""),
            "DiagnosticReport.effectiveDate",
        ),
    ] {
        let broken = cbc.replacen(edit.0, edit.1, 1);
        assert_ne!(broken, cbc, "edit {edit:?} did not apply");
        let file = dir.path().join("broken.json");
        std::fs::write(&file, broken).unwrap();
        let (code, out) = cli_import(&file, &[]);
        assert_eq!(code, 65, "{out}");
        assert!(out.contains(&format!("refused: {at}:")), "{at}: {out}");
    }
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_naming_no_city_asks_every_city_and_is_partial_when_one_is_down() {
    use tongban_medical::federated::{query_everywhere, registry_cities, Asker};
    let mut w = world().await;
    let now = now_ms();
    // One consent for every city of the federation, granted on the patient's home node.
    let (_, everywhere) = w
        .fed
        .grant_consent_for(
            SERVICE,
            "jinan",
            &w.patient,
            "qingdao/qdfy",
            ("*", "medical-treatment"),
            &tongban_medical::ITEMS,
        )
        .await
        .unwrap();
    w.publish(report(
        "JN-1",
        &w.patient,
        QILU,
        ReportStatus::Final,
        now - DAY,
        vec![lab("k", "2823-3", 4.1, "mmol/L")],
    ))
    .await
    .unwrap();
    // A Qingdao hospital published a result of its own for the same patient.
    let qd = report(
        "QD-1",
        &w.patient,
        "12370200427405888X",
        ReportStatus::Final,
        now - DAY,
        vec![lab("glu", "2345-7", 5.1, "mmol/L")],
    );
    let req = w.call(
        PublishRequest { report: Some(qd) },
        ("qingdao", "qdfy"),
        "qingdao",
        "medical-treatment",
        Some(&everywhere),
    );
    w.registry("qingdao").await.publish(req).await.unwrap();

    let (token, patient) = (w.fed.token("qingdao", "qdfy").unwrap(), w.patient.clone());
    let asker = |consent: &str| Asker {
        token: token.clone(),
        patient: patient.clone(),
        consent: consent.to_string(),
        timeout: Duration::from_secs(3),
    };
    let channel = w.fed.channel("qingdao").await.unwrap();
    let cities = registry_cities(channel.clone(), &asker(&everywhere))
        .await
        .unwrap();
    assert_eq!(cities, ["jinan", "qingdao"]);
    let (answer, missing) = query_everywhere(
        channel.clone(),
        &cities,
        &asker(&everywhere),
        QueryRequest::default(),
    )
    .await;
    assert!(!answer.partial && missing.is_empty(), "{missing:?}");
    let mut found: Vec<(String, String)> = answer
        .results
        .iter()
        .map(|r| (r.city.clone(), r.report_id.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("jinan".to_string(), "JN-1".to_string()),
            ("qingdao".to_string(), "QD-1".to_string())
        ]
    );
    // A consent for Jinan only: Qingdao's own registry refuses it; the answer is partial.
    let (answer, missing) = query_everywhere(
        channel.clone(),
        &cities,
        &asker(&w.read_consent),
        QueryRequest::default(),
    )
    .await;
    assert!(answer.partial);
    assert_eq!(answer.unreachable_cities, ["qingdao"]);
    assert_eq!(missing[0].code, Code::PermissionDenied);
    assert_eq!(answer.results.len(), 1);

    // Jinan's node goes down: Qingdao's results still come, the answer says it is partial.
    w.fed.stop_node("jinan").await.unwrap();
    let (answer, missing) = query_everywhere(
        channel,
        &cities,
        &asker(&everywhere),
        QueryRequest::default(),
    )
    .await;
    assert!(answer.partial);
    assert_eq!(answer.unreachable_cities, ["jinan"]);
    assert!(
        matches!(missing[0].code, Code::Unavailable | Code::DeadlineExceeded),
        "{missing:?}"
    );
    assert_eq!(answer.results.len(), 1);
    assert_eq!(answer.results[0].city, "qingdao");
    w.registries.stop().await;
    w.fed.shutdown().await;
}

/// The HL7 FHIR R4 examples (package hl7.fhir.r4.examples 4.0.1, fetched by
/// tests/setup-fhir-examples.sh, which tests/run.sh runs).
fn hl7_example(name: &str) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fhir-r4-examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `bash tests/setup-fhir-examples.sh`; tests/run.sh does)",
            path.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hl7_r4_examples_import_publish_and_export_valid_fhir() {
    use tongban_medical::fhir_import::{import, Defaults};
    let w = world().await;
    let d = Defaults {
        patient: Some(w.patient.clone()),
        institution_code: Some(QILU.into()),
        institution_name: Some("Acme Laboratory".into()),
    };
    // The General Health Profile: a chemistry panel, the CBC panel and a urinalysis, each an
    // Observation with hasMember, all in one Bundle.
    let ghp = import(&hl7_example("Bundle-ghp.json"), &d).unwrap();
    assert_eq!(ghp.len(), 1);
    let report = &ghp[0];
    assert_eq!(report.report_id, "ghp-example");
    assert_eq!(report.results.len(), 48);
    let hb = report.results.iter().find(|r| r.loinc == "718-7").unwrap();
    assert_eq!(hb.display, "Haemoglobin");
    assert!(
        matches!(&hb.value, Some(result::Value::Quantity(q)) if q.value == 176.0 && q.unit == "g/L")
    );
    assert_eq!(hb.reference_range.as_ref().unwrap().low, Some(135.0));
    let ghp = w.publish(report.clone()).await.unwrap();
    assert_eq!(
        import(&hl7_example("Bundle-lipids.json"), &d).unwrap()[0]
            .results
            .len(),
        4
    );
    let ct = import(&hl7_example("ImagingStudy-example.json"), &d).unwrap();
    assert_eq!(ct[0].results[0].modality, "CT");
    // Examples this importer cannot use, refused where they fall short.
    let e = import(&hl7_example("DiagnosticReport-f201.json"), &d).unwrap_err();
    assert_eq!(e.at, "DiagnosticReport.imagingStudy[0].reference");
    let e = import(&hl7_example("DiagnosticReport-102.json"), &d).unwrap_err();
    assert_eq!(e.at, "DiagnosticReport.result[0].reference");

    // Found from Qingdao: results of 2015, past their validity, from an institution not
    // accredited then.
    let rs = w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap();
    let k = rs.iter().find(|r| r.item == "K").unwrap();
    let v = k.verdict.as_ref().unwrap();
    assert!(!v.eligible);
    assert!(
        v.reasons.iter().any(|r| r.contains("past its validity")),
        "{v:?}"
    );
    assert!(
        v.reasons.iter().any(|r| r.contains("not accredited")),
        "{v:?}"
    );

    // Exported back as FHIR R4, accepted by the independent validator.
    let doc = w.export_fhir(&ghp).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ghp-export.json");
    std::fs::write(&file, doc).unwrap();
    let v =
        tongban_tests::run_python_json("fhir_validate.py", vec![file.display().to_string()]).await;
    assert_eq!(v["fhir_version"], "4.0.1");
    assert_eq!(v["types"].as_array().unwrap().len(), 49, "{v}");
    assert_eq!(v["without_code"], "refused");
    w.registries.stop().await;
    w.fed.shutdown().await;
}

/// A citizen's token for `id` of `city`, signed in at the city's portal.
fn citizen_token(w: &World, city: &str, id: &str) -> String {
    w.fed
        .idp(city)
        .unwrap()
        .issue("portal", &["citizen".into()], Duration::from_secs(600), id)
        .unwrap()
}

/// A citizen's own call (their token, themselves as the subject) to `target`'s registry.
fn as_citizen<T>(msg: T, token: &str, subject: &str, target: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    for (k, v) in [
        ("authorization", format!("Bearer {token}")),
        (metadata::TARGET_CITY, target.to_string()),
        (metadata::PURPOSE, "medical-treatment".to_string()),
        (metadata::SUBJECT, subject.to_string()),
        (
            metadata::CATALOG_CODE,
            tongban_medical::READ_ITEM.to_string(),
        ),
    ] {
        r.metadata_mut()
            .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_reads_only_their_own_results_from_either_city() {
    let w = world().await;
    let now = now_ms();
    let p = w.patient.clone();
    let own = w
        .publish(report(
            "R-own",
            &p,
            QILU,
            ReportStatus::Final,
            now - DAY,
            vec![lab("k", "2823-3", 4.1, "mmol/L")],
        ))
        .await
        .unwrap();
    // The patient, signed in: their own report, without a consent.
    let mine = citizen_token(&w, "jinan", &p);
    let header = w
        .registry("jinan")
        .await
        .export_fhir(as_citizen(
            GetReportRequest {
                registry_id: own.clone(),
            },
            &mine,
            &p,
            "jinan",
        ))
        .await
        .unwrap();
    assert!(header.into_inner().json.contains("2823-3"));
    // Another citizen of Jinan (locally) and one of Qingdao (across the boundary), each
    // about themselves, name the patient's report: NOT_FOUND, as for a report that does
    // not exist; their own query finds nothing of hers.
    for (city, id) in [
        ("jinan", demo_subject("37010219900101003")),
        ("qingdao", demo_subject("37020219920704003")),
    ] {
        let token = citizen_token(&w, city, &id);
        let mut registry = w.registry(city).await;
        let none = format!("jinan-rpt-{}", "0".repeat(32));
        for report_id in [own.as_str(), none.as_str()] {
            let req = || GetReportRequest {
                registry_id: report_id.into(),
            };
            let e = registry
                .get_report(as_citizen(req(), &token, &id, "jinan"))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{city} {report_id}: {e:?}");
            let e = registry
                .export_fhir(as_citizen(req(), &token, &id, "jinan"))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{city} {report_id}: {e:?}");
        }
        let own = registry
            .query(as_citizen(QueryRequest::default(), &token, &id, "jinan"))
            .await
            .unwrap()
            .into_inner();
        assert!(own.results.is_empty(), "{city}: {own:?}");
        // Naming the patient instead: refused at the citizen's home node.
        let e = registry
            .query(as_citizen(QueryRequest::default(), &token, &p, "jinan"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{city}: {e:?}");
        assert_eq!(
            e.get_error_details().error_info().unwrap().reason,
            "NOT_OWN_SUBJECT"
        );
    }
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_counts_from_each_results_own_collection_time() {
    let w = world().await;
    let now = now_ms();
    // A report of yesterday, whose sodium was collected 20 days ago (valid 7 days).
    let mut old_na = lab("na", "2951-2", 140.0, "mmol/L");
    old_na.collected_at_ms = now - 20 * DAY;
    let fresh_k = lab("k", "2823-3", 4.1, "mmol/L");
    w.publish(report(
        "R-own-times",
        &w.patient,
        QILU,
        ReportStatus::Final,
        now - DAY,
        vec![old_na, fresh_k],
    ))
    .await
    .unwrap();
    let rs = w
        .query("medical-treatment", Some(&w.read_consent))
        .await
        .unwrap();
    let na = verdict_of(&rs, "R-own-times", "na");
    assert!(!na.verdict.as_ref().unwrap().eligible, "{na:?}");
    assert!(
        na.verdict.as_ref().unwrap().reasons[0].contains("past its validity"),
        "{na:?}"
    );
    assert_eq!(na.collected_at_ms, now - 20 * DAY);
    let k = verdict_of(&rs, "R-own-times", "k");
    assert!(k.verdict.as_ref().unwrap().eligible, "{k:?}");
    assert_eq!(k.collected_at_ms, now - DAY);
    w.registries.stop().await;
    w.fed.shutdown().await;
}

#[test]
fn skip_invalid_imports_the_usable_results_of_the_hl7_examples_and_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["--patient", "37010219850312002X", "--institution", QILU];
    for (name, imported) in [
        (
            "Bundle-lri-example.json",
            Some("report RP723234: 3 result(s)"),
        ),
        ("Bundle-report.json", Some("report report: 11 result(s)")),
        ("Bundle-hla-1.json", None),
        ("Bundle-micro.json", None),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, hl7_example(name)).unwrap();
        // By default all or nothing: refused, naming the first bad element.
        let (code, out) = cli_import(&file, &ids);
        assert_eq!(code, 65, "{name}: {out}");
        assert!(out.contains("refused: Bundle.entry["), "{name}: {out}");
        let mut args = ids.to_vec();
        args.push("--skip-invalid");
        let (code, out) = cli_import(&file, &args);
        match imported {
            Some(report) => {
                assert_eq!(code, 0, "{name}: {out}");
                assert!(out.contains(report), "{name}: {out}");
                // Each skipped element, with its FHIRPath and why.
                assert!(out.contains("skipped Bundle.entry["), "{name}: {out}");
            }
            // Nothing usable at all: still refused, with the first reason.
            None => {
                assert_eq!(code, 65, "{name}: {out}");
                assert!(out.contains("no usable"), "{name}: {out}");
            }
        }
    }
}
