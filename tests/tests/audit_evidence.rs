//! The audit log as evidence, checked by a verifier written from docs/audit-format.md alone
//! (`tests/python/audit_verify.py`, sharing no code with the node): a real log with its
//! signed checkpoints, a flipped byte, a cut and a reordering; inclusion proofs (an
//! operator's, a citizen's own, a citizen's access log with proofs) and a consistency proof,
//! also through `tongban audit verify-proof`; a receipt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use tongban_devkit::demo::demo_subject;
use tongban_devkit::local::dev_token_with_roles;
use tongban_gateway::audit::proof;
use tongban_proto::audit::v1::audit_client::AuditClient;
use tongban_proto::audit::v1::prove_request::What;
use tongban_proto::audit::v1::{
    AccessLogRequest, Checkpoint, CheckpointsRequest, ConsistencyRequest, ProveRequest,
    ProveResponse, Side,
};
use tongban_proto::crosscity::v1::SubmitRequest;
use tongban_tests::{audit_verifier as verifier, authorize, Fed};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    authorize(&mut r, token);
    r
}

fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// jinan/hrss → qingdao about `subject` with `consent`.
async fn submit(f: &Fed, subject: &str, consent: &str) {
    let msg = SubmitRequest {
        catalog_code: "JQ-03".into(),
        ..Default::default()
    };
    let mut req = f.req("jinan", msg, Some("qingdao"), Duration::from_secs(5));
    for (k, v) in [
        ("x-tongban-subject", subject),
        ("x-tongban-consent", consent),
        ("x-tongban-catalog-code", "JQ-03"),
    ] {
        req.metadata_mut()
            .insert(k, MetadataValue::try_from(v).unwrap());
    }
    f.crosscity("jinan").await.submit(req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_verifies_the_log_its_checkpoints_proofs_and_receipts() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let dir = tempfile::tempdir().unwrap();
    let jinan_files = f.fed.certs.city("jinan").unwrap().clone();
    let qingdao_files = f.fed.certs.city("qingdao").unwrap().clone();
    let (ca, cert) = (
        jinan_files.ca_cert.display().to_string(),
        jinan_files.node_cert.display().to_string(),
    );
    let citizen = demo_subject("37010219850312002");
    let (_, consent) = f
        .fed
        .grant_consent_for(
            "tongban.crosscity.v1.CrossCityService",
            "jinan",
            &citizen,
            "jinan/hrss",
            ("qingdao", "case-handling"),
            &["JQ-03"],
        )
        .await
        .unwrap();
    submit(&f, &citizen, &consent).await;
    let op = dev_token_with_roles(&f.fed.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let mut audit = AuditClient::new(f.channel("jinan").await);
    let prove = |what: What, token: &str| with_token(ProveRequest { what: Some(what) }, token);
    // A checkpoint now, the first of the consistency proof below.
    let first = audit
        .prove(prove(What::InclusionOfSeq(1), &op))
        .await
        .unwrap()
        .into_inner();
    let first_seq = match &first.proof {
        Some(tongban_proto::audit::v1::prove_response::Proof::Inclusion(p)) => p.tree_size,
        other => panic!("{other:?}"),
    };
    for _ in 0..5 {
        submit(&f, &citizen, &consent).await;
    }

    // An operator's inclusion proof of the citizen's latest access (home side, with the
    // provider's receipt in it), checked by the verifier and by `tongban audit verify-proof`.
    let jinan = f.fed.city("jinan").unwrap().node().unwrap();
    let (records, _) = jinan
        .auditor()
        .query(&tongban_gateway::audit::index::Filter {
            limit: 1000,
            ..Default::default()
        })
        .await;
    let access = records
        .iter()
        .filter(|r| r.side == Side::Home as i32 && !r.receipt.is_empty())
        .max_by_key(|r| r.seq)
        .unwrap()
        .clone();
    let answer = audit
        .prove(prove(What::InclusionOfSeq(access.seq), &op))
        .await
        .unwrap()
        .into_inner();
    let file = write_json(dir.path(), "inclusion.json", &proof::to_json(&answer));
    let v = verifier(&["proof", &file, "--ca", &ca]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["seq"], access.seq);
    assert_eq!(v["request_id"], access.request_id);
    let cli = |args: &[&str]| {
        std::process::Command::new(tongban_tests::tongban_bin())
            .args(["audit", "verify-proof"])
            .args(args)
            .arg("--trust-bundle")
            .arg(&f.fed.certs.trust_bundle)
            .output()
            .unwrap()
    };
    let out = cli(&[&file]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("record {} of jinan", access.seq))
    );
    // One hash of the path changed: both refuse it.
    let mut bent = proof::to_json(&answer);
    let h = bent["inclusion"]["hashes"][0].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if &h[..1] == "0" { "1" } else { "0" }, &h[1..]);
    bent["inclusion"]["hashes"][0] = flipped.into();
    let bent_file = write_json(dir.path(), "bent.json", &bent);
    assert_eq!(verifier(&["proof", &bent_file, "--ca", &ca])["ok"], false);
    assert_eq!(cli(&[&bent_file]).status.code(), Some(65));
    // Another city's CA does not vouch for jinan's node.
    let other_ca = qingdao_files.ca_cert.display().to_string();
    assert_eq!(verifier(&["proof", &file, "--ca", &other_ca])["ok"], false);

    // The receipt inside that record, checked against qingdao's node certificate.
    let q_cert = qingdao_files.node_cert.display().to_string();
    let v = verifier(&[
        "receipt",
        &access.receipt,
        "--cert",
        &q_cert,
        "--issuer",
        "qingdao",
    ]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["claims"]["rid"], access.request_id);
    let mut forged = access.receipt.clone();
    let at = forged.find('.').unwrap() + 5;
    forged.replace_range(
        at..at + 1,
        if &forged[at..at + 1] == "A" { "B" } else { "A" },
    );
    assert_eq!(
        verifier(&["receipt", &forged, "--cert", &q_cert, "--issuer", "qingdao"])["ok"],
        false
    );

    // A consistency proof from the first checkpoint to the newest.
    let answer = audit
        .prove(prove(
            What::Consistency(ConsistencyRequest {
                from_seq: first_seq,
                to_seq: 0,
            }),
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    let file = write_json(dir.path(), "consistency.json", &proof::to_json(&answer));
    let v = verifier(&["proof", &file, "--ca", &ca]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["first"], first_seq);
    assert!(cli(&[&file]).status.success());

    // The citizen proves their own record, not another's (not found, like a missing one).
    let citizen_token = f
        .fed
        .idp("jinan")
        .unwrap()
        .issue(
            "portal",
            &["citizen".into()],
            Duration::from_secs(600),
            &citizen,
        )
        .unwrap();
    let own = audit
        .prove(prove(What::InclusionOfSeq(access.seq), &citizen_token))
        .await
        .unwrap()
        .into_inner();
    assert!(own.proof.is_some());
    let e = audit
        .prove(prove(What::InclusionOfSeq(1), &citizen_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = audit
        .prove(prove(
            What::Consistency(ConsistencyRequest {
                from_seq: first_seq,
                to_seq: 0,
            }),
            &citizen_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Their access log with proofs: every entry of both cities carries one that verifies.
    let log = audit
        .access_log(with_token(
            AccessLogRequest {
                subject: citizen.clone(),
                limit: 20,
                with_proofs: true,
            },
            &citizen_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(log.accesses.len() >= 6, "{}", log.accesses.len());
    let mut cities = std::collections::BTreeSet::new();
    for (i, a) in log.accesses.iter().enumerate() {
        let answer = ProveResponse {
            proof: Some(tongban_proto::audit::v1::prove_response::Proof::Inclusion(
                a.proof
                    .clone()
                    .unwrap_or_else(|| panic!("no proof on {a:?}")),
            )),
            node_certificate: a.node_certificate.clone(),
        };
        let file = write_json(
            dir.path(),
            &format!("access-{i}.json"),
            &proof::to_json(&answer),
        );
        let city_ca = f
            .fed
            .certs
            .city(&a.node_city)
            .unwrap()
            .ca_cert
            .display()
            .to_string();
        let v = verifier(&["proof", &file, "--ca", &city_ca]);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["seq"], a.seq);
        cities.insert(a.node_city.clone());
    }
    assert_eq!(cities.len(), 2, "entries of both cities: {cities:?}");

    // The whole log, offline, with every checkpoint jinan signed (its stop's last).
    let audit_dir = f.fed.root.join("jinan").join("data").join("audit");
    let checkpoints_before = audit
        .checkpoints(with_token(CheckpointsRequest {}, &op))
        .await
        .unwrap()
        .into_inner()
        .own;
    f.fed.shutdown().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let list: Vec<serde_json::Value> = checkpoints_before
        .iter()
        .map(|s| serde_json::json!({"checkpoint": b64.encode(&s.checkpoint), "signature": b64.encode(&s.signature)}))
        .collect();
    let last_seq = checkpoints_before
        .iter()
        .map(|s| Checkpoint::decode(s.checkpoint.as_slice()).unwrap().seq)
        .max()
        .unwrap();
    let cps = write_json(
        dir.path(),
        "checkpoints.json",
        &serde_json::Value::from(list),
    );
    let log_args = |d: &str| {
        vec![
            "log".to_string(),
            d.to_string(),
            "--checkpoints".into(),
            cps.clone(),
            "--cert".into(),
            cert.clone(),
            "--ca".into(),
            ca.clone(),
            "--city".into(),
            "jinan".into(),
        ]
    };
    let run = |d: &str| {
        let args = log_args(d);
        verifier(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let v = run(&audit_dir.display().to_string());
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checkpoints"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["state_changes"].as_u64().unwrap() >= 5, "{v}");
    assert!(v["records"].as_u64().unwrap() >= last_seq);

    // Tampered copies: a flipped byte, a cut, two records swapped.
    let seg = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let frames = frame_offsets(&bytes);
    let copy = |name: &str, data: Vec<u8>| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(seg.file_name().unwrap()), data).unwrap();
        d.display().to_string()
    };
    let mut flipped = bytes.clone();
    let (mid, _) = frames[frames.len() / 2];
    flipped[mid + 20] ^= 0x01;
    let v = run(&copy("flipped", flipped));
    assert_eq!(v["ok"], false);
    assert!(v["why"].as_str().unwrap().contains("checksum"), "{v}");
    let cut = bytes[..frames[frames.len() - 3].0].to_vec();
    let v = run(&copy("cut", cut));
    assert_eq!(v["ok"], false);
    assert!(
        v["why"].as_str().unwrap().contains("checkpoint covers"),
        "{v}"
    );
    let (a, b) = (frames[3], frames[4]);
    let mut swapped = bytes[..a.0].to_vec();
    swapped.extend_from_slice(&bytes[b.0..b.1]);
    swapped.extend_from_slice(&bytes[a.0..a.1]);
    swapped.extend_from_slice(&bytes[b.1..]);
    let v = run(&copy("swapped", swapped));
    assert_eq!(v["ok"], false);
    assert!(v["why"].as_str().unwrap().contains("sequence"), "{v}");
}

/// (start, end) of every frame of a segment.
fn frame_offsets(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= b.len() {
        let n = u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
        out.push((off, off + 8 + n));
        off += 8 + n;
    }
    out
}

/// Trusted time: with `[audit.tsa]`, a node's checkpoints are time-stamped by an RFC 3161
/// TSA (a local one: OpenSSL's `ts -reply` behind HTTP), and OpenSSL's `ts -verify`, knowing
/// only the TSA's CA, confirms that the token time-stamps that checkpoint and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_time_stamped_by_a_tsa_that_openssl_verifies() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tsa_server.py");
    let mut tsa = std::process::Command::new(tongban_tests::python())
        .arg(script)
        .arg(dir.path().join("tsa"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(tsa.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(line.trim()).unwrap();

    let mut f = Fed::start(&["jinan", "qingdao"]).await;
    f.fed.stop_node("jinan").await.unwrap();
    {
        let c = f.fed.cities.iter_mut().find(|c| c.city == "jinan").unwrap();
        c.config.audit.tsa = Some((
            info["url"].as_str().unwrap().to_string(),
            Duration::from_secs(5),
        ));
        c.config.audit.checkpoint_interval = Duration::from_millis(300);
    }
    f.fed.restart_node("jinan").await.unwrap();
    // Restarted, it serves once Qingdao confirmed its audit log (audit.anchor = "wait").
    let mut anchor = f
        .fed
        .city("jinan")
        .unwrap()
        .node()
        .unwrap()
        .auditor()
        .watch_anchor();
    tokio::time::timeout(Duration::from_secs(20), anchor.wait_for(|a| a.confirmed()))
        .await
        .expect("qingdao confirmed jinan's audit log")
        .unwrap();
    // And it holds Qingdao's catalog again (the link is back up).
    assert!(
        f.fed
            .wait_until_federated(Duration::from_secs(20), |_, p| !p.services.is_empty())
            .await,
        "jinan sees qingdao's catalog again"
    );
    let citizen = demo_subject("37010219850312002");
    let (_, consent) = f
        .fed
        .grant_consent_for(
            "tongban.crosscity.v1.CrossCityService",
            "jinan",
            &citizen,
            "jinan/hrss",
            ("qingdao", "case-handling"),
            &["JQ-03"],
        )
        .await
        .unwrap();
    let mut stamped = None;
    for _ in 0..100 {
        submit(&f, &citizen, &consent).await;
        let auditor = f
            .fed
            .city("jinan")
            .unwrap()
            .node()
            .unwrap()
            .auditor()
            .clone();
        if let Some(s) = auditor
            .own_checkpoints()
            .into_iter()
            .rev()
            .find(|s| !s.timestamp_token.is_empty())
        {
            stamped = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signed = stamped.expect("no checkpoint was ever time-stamped");
    let (at_ms, imprint) =
        tongban_gateway::audit::tsa::token_time(&signed.timestamp_token).unwrap();
    use sha2::Digest as _;
    assert_eq!(imprint, sha2::Sha256::digest(&signed.checkpoint).to_vec());
    let now = tongban_gateway::audit::now_ms();
    assert!((now - at_ms).abs() < 60_000, "{at_ms} vs {now}");
    // Through the Audit API too.
    let op = dev_token_with_roles(&f.fed.certs, "jinan", "ops", &["audit-operator"]).unwrap();
    let own = AuditClient::new(f.channel("jinan").await)
        .checkpoints(with_token(CheckpointsRequest {}, &op))
        .await
        .unwrap()
        .into_inner()
        .own;
    assert!(own
        .iter()
        .any(|s| s.timestamp_token == signed.timestamp_token));

    // OpenSSL, an independent verifier, with only the TSA's CA.
    let d = dir.path();
    std::fs::write(d.join("cp.bin"), &signed.checkpoint).unwrap();
    std::fs::write(d.join("token.der"), &signed.timestamp_token).unwrap();
    let verify = |data: &str| {
        std::process::Command::new("openssl")
            .args(["ts", "-verify", "-token_in", "-in"])
            .arg(d.join("token.der"))
            .arg("-data")
            .arg(d.join(data))
            .arg("-CAfile")
            .arg(info["ca"].as_str().unwrap())
            .arg("-untrusted")
            .arg(info["tsa_cert"].as_str().unwrap())
            .output()
            .unwrap()
    };
    let ok = verify("cp.bin");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("Verification: OK"),
        "{ok:?}"
    );
    let mut other = signed.checkpoint.clone();
    other[0] ^= 1;
    std::fs::write(d.join("other.bin"), other).unwrap();
    let bad = verify("other.bin");
    assert!(!String::from_utf8_lossy(&bad.stdout).contains("Verification: OK"));
    let _ = tsa.kill();
    let _ = tsa.wait();
    f.shutdown().await;
}
