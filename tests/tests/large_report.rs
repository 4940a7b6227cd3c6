#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A 200 MiB imaging attachment, as operators run it: two `tongban node` processes and
//! Jinan's registry (`tongban provider medical`) as a process of its own. A Jinan hospital
//! publishes it through Jinan's node (PublishStream); a Qingdao hospital fetches it through
//! its own node across the boundary (GetReport). Its SHA-256 is checked end to end, and the
//! peak resident memory of both nodes and the registry stays under 64 MiB.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::{dev_token, dev_token_with_roles};
use tongban_medical::transfer;
use tongban_proto::consent::v1::consent_client::ConsentClient;
use tongban_proto::consent::v1::GrantRequest;
use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
use tongban_proto::medical::v1::{
    result, QueryRequest, Report, ReportKind, ReportStatus, Result as LabResult,
};
use tongban_proto::metadata;
use tongban_tests::process::{channel, peak_rss_kib, ChildProcess, TwoCities};
use tonic::metadata::{MetadataMap, MetadataValue};

const SIZE: u64 = 200 << 20;
const LIMIT_KIB: u64 = 64 << 10;

/// `len` bytes of xorshift noise (incompressible, reproducible), read in whatever pieces the
/// reader asks for.
struct Noise {
    left: u64,
    state: u64,
}

impl Noise {
    fn new(len: u64) -> Noise {
        Noise {
            left: len,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl AsyncRead for Noise {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize & !7;
        let n = if n == 0 {
            (buf.remaining() as u64).min(self.left) as usize
        } else {
            n
        };
        let mut out = vec![0u8; n];
        for word in out.chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        self.left -= n as u64;
        buf.put_slice(&out);
        Poll::Ready(Ok(()))
    }
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

fn call_metadata(token: &str, patient: &str, item: &str, consent: &str) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (k, v) in [
        ("authorization", format!("Bearer {token}")),
        (metadata::TARGET_CITY, "jinan".to_string()),
        (metadata::PURPOSE, "medical-treatment".to_string()),
        (metadata::SUBJECT, patient.to_string()),
        (metadata::CATALOG_CODE, item.to_string()),
        (metadata::CONSENT, consent.to_string()),
    ] {
        md.insert(k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    md
}

/// Two node processes and Jinan's registry process, registered; the patient's consents.
struct World {
    cities: TwoCities,
    registry: ChildProcess,
    patient: String,
    /// The Jinan hospital (qilu) publishes, the Qingdao hospital (qdfy) reads.
    publish_consent: String,
    read_consent: String,
    qilu: String,
    qdfy: String,
}

impl World {
    async fn start(patient: String) -> World {
        let cities = TwoCities::start("").await;
        let g = &cities.certs;
        let registry_dir = cities.dir.path().join("jinan-medical");
        let node_url = format!("http://{}", cities.jinan.caller);
        let wjw = dev_token(g, "jinan", "wjw").unwrap();
        let registry = ChildProcess::spawn(
            &[
                "provider".as_ref(),
                "medical".as_ref(),
                "--city".as_ref(),
                "jinan".as_ref(),
                "--org".as_ref(),
                "wjw".as_ref(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
                "--data-dir".as_ref(),
                registry_dir.as_os_str(),
                "--node".as_ref(),
                node_url.as_ref(),
                "--token".as_ref(),
                wjw.as_ref(),
            ],
            "medical result registry started",
        );
        // The patient's consents, granted through Jinan's consent portal.
        let portal = dev_token_with_roles(g, "jinan", "portal", &["consent-portal"]).unwrap();
        let mut consents = ConsentClient::new(channel(&cities.jinan.caller).await);
        let grant = |grantee: &str| {
            let mut req = tonic::Request::new(GrantRequest {
                subject: patient.clone(),
                grantee: grantee.to_string(),
                target_city: "jinan".into(),
                service: tongban_medical::SERVICE.into(),
                purpose: "medical-treatment".into(),
                expires_at_ms: now_ms() + 3_600_000,
                items: tongban_medical::ITEMS
                    .iter()
                    .map(|i| i.to_string())
                    .collect(),
            });
            req.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {portal}")).unwrap(),
            );
            req
        };
        let publish_consent = consents.grant(grant("jinan/qilu")).await.unwrap();
        let read_consent = consents.grant(grant("qingdao/qdfy")).await.unwrap();
        let w = World {
            qilu: dev_token(g, "jinan", "qilu").unwrap(),
            qdfy: dev_token(g, "qingdao", "qdfy").unwrap(),
            cities,
            registry,
            patient,
            publish_consent: publish_consent.into_inner().token,
            read_consent: read_consent.into_inner().token,
        };
        // Until the registry has registered and Qingdao's node knows it: a query through
        // Qingdao answers.
        let mut last = None;
        for _ in 0..300 {
            let mut req = tonic::Request::new(QueryRequest::default());
            *req.metadata_mut() = w.read_metadata();
            match w.from("qingdao").await.query(req).await {
                Ok(_) => return w,
                Err(s) => last = Some(s),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the registry never became reachable: {last:?}");
    }

    async fn from(&self, city: &str) -> ResultRegistryClient<tonic::transport::Channel> {
        let node = if city == "jinan" {
            &self.cities.jinan
        } else {
            &self.cities.qingdao
        };
        ResultRegistryClient::new(channel(&node.caller).await)
    }

    fn read_metadata(&self) -> MetadataMap {
        call_metadata(
            &self.qdfy,
            &self.patient,
            tongban_medical::READ_ITEM,
            &self.read_consent,
        )
    }

    fn publish_metadata(&self) -> MetadataMap {
        call_metadata(
            &self.qilu,
            &self.patient,
            tongban_medical::PUBLISH_ITEM,
            &self.publish_consent,
        )
    }

    async fn stop(self) {
        drop(self.registry);
        self.cities.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_study_crosses_the_boundary_intact_in_bounded_memory() {
    let w = World::start(demo_subject("37010219850312002")).await;
    let (cities, registry, patient) = (&w.cities, &w.registry, &w.patient);
    let before = [
        peak_rss_kib(cities.jinan.child.id()),
        peak_rss_kib(cities.qingdao.child.id()),
        registry.peak_rss_kib(),
    ];
    // Publish: 200 MiB in 256 KiB chunks through Jinan's node, its SHA-256 in the header.
    let (sha256, len) = transfer::digest(Noise::new(SIZE)).await.unwrap();
    assert_eq!(len, SIZE);
    let report = Report {
        report_id: "CT-200M".into(),
        patient_id: patient.clone(),
        kind: ReportKind::Imaging as i32,
        status: ReportStatus::Final as i32,
        collected_at_ms: now_ms() - 3_600_000,
        issued_at_ms: now_ms() - 1_800_000,
        institution_code: "12370000495570024A".into(),
        institution_name: "山东大学齐鲁医院".into(),
        results: vec![LabResult {
            result_id: "ct".into(),
            modality: "CT".into(),
            body_site: "chest".into(),
            study_instance_uid: "1.2.840.113619.2.55.3.604688119.200".into(),
            value: Some(result::Value::Text("双肺未见明显异常".into())),
            ..Default::default()
        }],
        attachment_sha256: sha256.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let published = transfer::publish_stream(
        &mut w.from("jinan").await,
        w.publish_metadata(),
        report,
        Noise::new(SIZE),
    )
    .await
    .unwrap();
    let up = started.elapsed();

    // Fetch it from Qingdao, across the boundary, hashing what arrives.
    let started = Instant::now();
    let fetched = transfer::fetch(
        &mut w.from("qingdao").await,
        w.read_metadata(),
        &published.registry_id,
        tokio::io::sink(),
    )
    .await
    .unwrap();
    let down = started.elapsed();
    assert_eq!(fetched.bytes, SIZE);
    assert_eq!(fetched.sha256, sha256, "the attachment changed on the way");
    assert_eq!(fetched.header.attachment_sha256, sha256);
    assert!(fetched.intact());

    let peaks = [
        ("jinan node", peak_rss_kib(cities.jinan.child.id())),
        ("qingdao node", peak_rss_kib(cities.qingdao.child.id())),
        ("jinan registry", registry.peak_rss_kib()),
    ];
    let mbps = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
    eprintln!(
        "200 MiB: published at {:.1} MB/s, fetched across the boundary at {:.1} MB/s; peak RSS {peaks:?} KiB (before the transfer: {before:?} KiB)",
        mbps(up),
        mbps(down)
    );
    for (what, kib) in peaks {
        assert!(
            kib < LIMIT_KIB,
            "{what} peaked at {kib} KiB resident during the transfer (limit {LIMIT_KIB} KiB)"
        );
    }
    w.stop().await;
}

fn tongban(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = std::process::Command::new(tongban_tests::tongban_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_a_study_with_its_attachment_and_fetches_it_checked() {
    // The fixture's patient (its subject's resident id).
    let w = World::start("370102197805060048".into()).await;
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study.dcm");
    let bytes: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&study, &bytes).unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fhir/ct-head-study.json");
    let jinan = format!("http://{}", w.cities.jinan.caller);
    let qingdao = format!("http://{}", w.cities.qingdao.caller);

    // A file with more than one report cannot take one attachment: two studies in a Bundle.
    let one: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    let mut other = one.clone();
    other["id"] = "ct-head-2".into();
    other["identifier"][1]["value"] = "QL2026111500032".into();
    let two = dir.path().join("two.json");
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{ "resource": one }, { "resource": other }]
    });
    std::fs::write(&two, bundle.to_string()).unwrap();
    let (code, out, err) = tongban(&[
        "medical".as_ref(),
        "import".as_ref(),
        two.as_os_str(),
        "--institution".as_ref(),
        "12370000495570024A".as_ref(),
        "--attachment".as_ref(),
        study.as_os_str(),
        "--dry-run".as_ref(),
    ]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("exactly one report") && err.contains("holds 2"),
        "{err}"
    );

    let (code, out, err) = tongban(&[
        "medical".as_ref(),
        "import".as_ref(),
        fixture.as_os_str(),
        "--institution".as_ref(),
        "12370000495570024A".as_ref(),
        "--attachment".as_ref(),
        study.as_os_str(),
        "--node".as_ref(),
        jinan.as_ref(),
        "--token".as_ref(),
        w.qilu.as_ref(),
        "--city".as_ref(),
        "jinan".as_ref(),
        "--consent".as_ref(),
        w.publish_consent.as_ref(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let registry_id = out
        .split_whitespace()
        .find(|t| t.starts_with("jinan-rpt-"))
        .unwrap_or_else(|| panic!("no registry id in {out}"))
        .to_string();
    assert!(out.contains("with its attachment"), "{out}");

    let fetch = |id: &str, out_file: &std::path::Path| {
        tongban(&[
            "medical".as_ref(),
            "fetch".as_ref(),
            "--node".as_ref(),
            qingdao.as_ref(),
            "--token".as_ref(),
            w.qdfy.as_ref(),
            "--patient".as_ref(),
            w.patient.as_ref(),
            "--consent".as_ref(),
            w.read_consent.as_ref(),
            "--city".as_ref(),
            "jinan".as_ref(),
            "--registry-id".as_ref(),
            id.as_ref(),
            "--out".as_ref(),
            out_file.as_os_str(),
        ])
    };
    // Another id: NOT_FOUND, and no file left behind.
    let nothing = dir.path().join("nothing.dcm");
    let (code, _, err) = fetch("jinan-rpt-00000000000000000000000000000000", &nothing);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NotFound"), "{err}");
    assert!(!nothing.exists());
    // Its own id: the same bytes, checked.
    let got = dir.path().join("got.dcm");
    let (code, out, err) = fetch(&registry_id, &got);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(checked)"), "{out}");
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    w.stop().await;
}
