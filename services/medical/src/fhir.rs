//! FHIR R4 (4.0.1) export of a report: a `Bundle` of type `collection` holding its
//! `DiagnosticReport`, one `Observation` per laboratory result and one `ImagingStudy` per
//! study (a series per imaging result), linked by `urn:uuid:` full URLs.
//!
//! Mapping: report status → `DiagnosticReport.status` (and the Observations', where
//! `partial` becomes `preliminary` and `appended` `amended`); kind → category `LAB` or `RAD`
//! (HL7 v2-0074); collection or study time → `effectiveDateTime` / `started`; issue time →
//! `issued`; institution → `performer` (display, and identifier: its unified social credit
//! code); patient → `subject` display (the masked id: the registry holds no clear id);
//! LOINC and the local code → `Observation.code.coding`; quantity → `valueQuantity` with UCUM
//! (`http://unitsofmeasure.org`); coded → `valueCodeableConcept`; text → `valueString`;
//! reference range → `referenceRange`; interpretation → `interpretation` (v3
//! ObservationInterpretation); imaging → one `ImagingStudy` per study UID with the
//! accession number and a series per result (its UID, modality (DICOM DCM), body site
//! coding, time, description, and its result id in an extension); conclusion →
//! `conclusion`.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tongban_proto::medical::v1::{result, Report, ReportKind, ReportStatus};

/// The system of institution identifiers (unified social credit codes, GB 32100).
pub const USCC_SYSTEM: &str = "urn:oid:2.16.156.10011.2.1.1.1";

fn instant(ms: i64) -> String {
    (OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms))
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A FHIR id (`[A-Za-z0-9\-\.]{1,64}`) made from any report or result id.
fn fhir_id(s: &str) -> String {
    let id: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "x".into()
    } else {
        id
    }
}

fn report_status(s: ReportStatus) -> &'static str {
    crate::rules::status_name(s)
}

fn observation_status(s: ReportStatus) -> &'static str {
    match s {
        ReportStatus::Partial => "preliminary",
        ReportStatus::Appended => "amended",
        ReportStatus::Unspecified => "unknown",
        other => crate::rules::status_name(other),
    }
}

/// The identifier system of a result's id within its report.
pub const RESULT_ID_SYSTEM: &str = "urn:tongban:result-id";

/// The extension that carries the performing department of a report.
pub const DEPARTMENT_EXTENSION: &str = "urn:tongban:fhir:extension:department";

/// The extension on an `ImagingStudy.series` that carries the id of the result it is.
pub const RESULT_ID_EXTENSION: &str = "urn:tongban:fhir:extension:result-id";

/// Imaging results grouped by study (their study UID), in the order of their first result.
fn studies_of(
    results: &[tongban_proto::medical::v1::Result],
) -> Vec<Vec<&tongban_proto::medical::v1::Result>> {
    let mut groups: Vec<Vec<&tongban_proto::medical::v1::Result>> = Vec::new();
    for r in results {
        let same = groups.iter_mut().find(|g| {
            !r.study_instance_uid.is_empty() && g[0].study_instance_uid == r.study_instance_uid
        });
        match same {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// One study: its UID and accession number, and a series per result (its UID, modality,
/// body site coding, time, description and result id).
fn imaging_study(
    base: &str,
    group: Vec<&tongban_proto::medical::v1::Result>,
    report: &Report,
    subject: &Value,
) -> Value {
    let first = group[0];
    let mut modalities: Vec<&str> = Vec::new();
    for r in &group {
        if !modalities.contains(&r.modality.as_str()) {
            modalities.push(&r.modality);
        }
    }
    let own = |r: &tongban_proto::medical::v1::Result| {
        if r.collected_at_ms > 0 {
            r.collected_at_ms
        } else {
            report.collected_at_ms
        }
    };
    let started = group
        .iter()
        .map(|r| own(r))
        .min()
        .unwrap_or(report.collected_at_ms);
    let series: Vec<Value> = group
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut se = json!({
                "uid": if r.series_instance_uid.is_empty() { &r.study_instance_uid } else { &r.series_instance_uid },
                "number": i + 1,
                "modality": { "system": "http://dicom.nema.org/resources/ontology/DCM", "code": r.modality },
                "bodySite": match &r.body_site_coding {
                    Some(c) => json!({ "system": c.system, "code": c.code, "display": c.display }),
                    None => json!({ "display": r.body_site }),
                },
                "started": instant(own(r)),
                "extension": [{ "url": RESULT_ID_EXTENSION, "valueString": r.result_id }],
            });
            if let Some(d) = text_value(r) {
                se["description"] = Value::from(d);
            }
            se
        })
        .collect();
    let mut study = json!({
        "resourceType": "ImagingStudy",
        "id": fhir_id(&format!("{base}-{}", first.result_id)),
        "identifier": [
            { "system": "urn:dicom:uid", "value": format!("urn:oid:{}", first.study_instance_uid) },
            { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN" }] },
              "value": first.accession_number },
        ],
        "status": "available",
        "modality": modalities
            .iter()
            .map(|m| json!({ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": m }))
            .collect::<Vec<_>>(),
        "subject": subject,
        "started": instant(started),
        "numberOfSeries": series.len(),
        "series": series,
    });
    if let Some(d) = text_value(first).filter(|_| group.len() == 1) {
        study["description"] = Value::from(d);
    }
    study
}

/// The report as a FHIR R4 Bundle.
pub fn export(report: &Report) -> Value {
    let status = ReportStatus::try_from(report.status).unwrap_or(ReportStatus::Unspecified);
    let kind = ReportKind::try_from(report.kind).unwrap_or(ReportKind::Unspecified);
    let base = fhir_id(&report.report_id);
    let subject = json!({ "display": report.patient_id });
    // The institution, then every other performer as the source named it (a practitioner
    // stays a practitioner).
    let mut performer = vec![json!({
        "type": "Organization",
        "display": report.institution_name,
        "identifier": { "system": USCC_SYSTEM, "value": report.institution_code },
    })];
    for p in &report.performers {
        performer.push(json!({
            "reference": p.reference,
            "type": p.kind,
            "identifier": { "system": p.identifier_system, "value": p.identifier_value },
            "display": p.display,
        }));
    }
    let performer = Value::Array(performer);
    let effective = instant(report.collected_at_ms);
    let mut entries = Vec::new();
    let mut results = Vec::new();
    let mut studies = Vec::new();
    if kind == ReportKind::Imaging {
        for group in studies_of(&report.results) {
            let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            studies.push(json!({ "reference": url }));
            entries.push(json!({ "fullUrl": url, "resource": imaging_study(&base, group, report, &subject) }));
        }
    }
    for r in &report.results {
        let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let id = fhir_id(&format!("{base}-{}", r.result_id));
        if kind == ReportKind::Imaging {
            // Exported below, a study with its series together.
            continue;
        }
        let mut coding = Vec::new();
        if !r.loinc.is_empty() {
            coding.push(
                json!({ "system": "http://loinc.org", "code": r.loinc, "display": r.display }),
            );
        }
        if !r.local_code.is_empty() {
            coding.push(json!({
                "system": format!("urn:tongban:local-code:{}", report.institution_code),
                "code": r.local_code,
            }));
        }
        let mut obs = json!({
            "resourceType": "Observation",
            "id": id,
            // The result's own id within its report (the resource id is made unique in the
            // bundle).
            "identifier": [{ "system": RESULT_ID_SYSTEM, "value": r.result_id }],
            "status": observation_status(status),
            "category": [{ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }]}],
            "code": { "coding": coding, "text": if r.display.is_empty() { &r.local_code } else { &r.display } },
            "subject": subject,
            "effectiveDateTime": own_time(r.collected_at_ms, report.collected_at_ms),
            "issued": own_time(r.issued_at_ms, report.issued_at_ms),
            "performer": performer,
        });
        match &r.value {
            Some(result::Value::Quantity(q)) => {
                obs["valueQuantity"] = json!({
                    "value": q.value, "unit": q.unit,
                    "system": "http://unitsofmeasure.org", "code": q.unit,
                });
            }
            Some(result::Value::Coded(c)) => {
                obs["valueCodeableConcept"] = json!({ "coding": [{ "system": c.system, "code": c.code, "display": c.display }] });
            }
            Some(result::Value::Text(t)) => obs["valueString"] = json!(t),
            None => {}
        }
        if let Some(rr) = &r.reference_range {
            let mut range = json!({});
            if let Some(low) = rr.low {
                range["low"] = json!({ "value": low, "unit": rr.unit, "system": "http://unitsofmeasure.org", "code": rr.unit });
            }
            if let Some(high) = rr.high {
                range["high"] = json!({ "value": high, "unit": rr.unit, "system": "http://unitsofmeasure.org", "code": rr.unit });
            }
            if !rr.text.is_empty() {
                range["text"] = json!(rr.text);
            }
            obs["referenceRange"] = json!([range]);
        }
        if !r.interpretation.is_empty() {
            obs["interpretation"] = json!([{ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": r.interpretation,
            }]}]);
        }
        results.push(json!({ "reference": url }));
        entries.push(json!({ "fullUrl": url, "resource": obs }));
    }
    let (cat, cat_display) = if kind == ReportKind::Imaging {
        ("RAD", "Radiology")
    } else {
        ("LAB", "Laboratory")
    };
    let mut dr = json!({
        "resourceType": "DiagnosticReport",
        "id": base,
        "identifier": [{ "system": format!("urn:tongban:report:{}", report.institution_code), "value": report.report_id }],
        "status": report_status(status),
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": cat, "display": cat_display,
        }]}],
        "code": { "text": format!("{} {}", report.department, cat_display).trim().to_string() },
        "subject": subject,
        "effectiveDateTime": effective,
        "issued": instant(report.issued_at_ms),
        "performer": performer,
    });
    if !results.is_empty() {
        dr["result"] = json!(results);
    }
    if !studies.is_empty() {
        dr["imagingStudy"] = json!(studies);
    }
    if !report.conclusion.is_empty() {
        dr["conclusion"] = json!(report.conclusion);
    }
    // The verifying physician, and the department (an extension: FHIR R4 has no element
    // for it), so that an import of the export gives the same report.
    if !report.verifier.is_empty() {
        dr["resultsInterpreter"] = json!([{ "type": "Practitioner", "display": report.verifier }]);
    }
    if !report.department.is_empty() {
        dr["extension"] =
            json!([{ "url": DEPARTMENT_EXTENSION, "valueString": report.department }]);
    }
    let report_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    entries.insert(0, json!({ "fullUrl": report_url, "resource": dr }));
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": fhir_id(&format!("{base}-bundle")),
        "type": "collection",
        "timestamp": instant(report.issued_at_ms),
        "entry": entries,
    });
    prune(&mut bundle);
    bundle
}

/// FHIR allows no empty strings, arrays or objects: drop them (what is required and absent
/// is then missing, for a validator to name, never present and empty).
fn prune(v: &mut Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => {
            a.retain_mut(|x| !prune(x));
            a.is_empty()
        }
        Value::Object(o) => {
            o.retain(|_, x| !prune(x));
            o.is_empty()
        }
        Value::Null => true,
        _ => false,
    }
}

/// A result's own time, else its report's.
fn own_time(own_ms: i64, report_ms: i64) -> String {
    instant(if own_ms > 0 { own_ms } else { report_ms })
}

fn text_value(r: &tongban_proto::medical::v1::Result) -> Option<String> {
    match &r.value {
        Some(result::Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}
