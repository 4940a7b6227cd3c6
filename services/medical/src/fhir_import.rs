//! FHIR R4 import: a `DiagnosticReport` (its Observations contained or in the same Bundle),
//! an `ImagingStudy`, or a `Bundle` of them, into reports to publish.
//!
//! Two gates, both naming the FHIRPath-style location of what is wrong
//! (`DiagnosticReport.result[2].reference`):
//! 1. the FHIR R4 (4.0.1) structure of the resources read: no element the resource type
//!    does not define, the required ones present, status codes from their value sets, and
//!    every element read of its JSON type (strings, numbers, objects, arrays) down to the
//!    datatypes used (CodeableConcept, Coding, Reference, Quantity, Identifier, Period);
//! 2. what a recognisable result needs: a resolvable result reference, the patient's
//!    resident id, the performing institution, a collection time, a value.
//!
//! Why not a FHIR crate: `fhirbolt` (the R4 model) was tried. It switches serde_json's
//! `arbitrary_precision` and `preserve_order` on for the whole workspace (JWT, consent and
//! audit parsing included), and its errors inside nested resources carry no position. The
//! export is checked instead by an independent validator (Python `fhir.resources`, R4) in
//! the tests.

use std::collections::HashMap;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tongban_proto::medical::v1::{
    result, Coding, Quantity, ReferenceRange, Report, ReportKind, ReportStatus, Result as LabResult,
};

use crate::fhir::USCC_SYSTEM;

/// The system of resident identity numbers in `subject.identifier` (GB 11643).
pub const RESIDENT_ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.1";

/// What the resource does not say and the importer must be told.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// The patient's resident id, when `subject` carries none.
    pub patient: Option<String>,
    /// The performing institution's credit code and name, when `performer` carries none.
    pub institution_code: Option<String>,
    pub institution_name: Option<String>,
}

/// A resource that cannot be imported, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ImportError {
    /// FHIRPath-style location, e.g. `DiagnosticReport.result[2].reference`.
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError {
        at: at.into(),
        message: message.into(),
    }
}

/// Imports a JSON document.
pub fn import(text: &str, defaults: &Defaults) -> Result<Vec<Report>, ImportError> {
    import_with(text, defaults, &mut None)
}

/// [`import`] that imports what it can: a result, an imaging study or a whole report that
/// cannot be used is skipped, and each skipped element is returned with its FHIRPath and
/// why. A file that is not FHIR at all, or in which nothing is usable, is still refused.
pub fn import_skipping_invalid(
    text: &str,
    defaults: &Defaults,
) -> Result<(Vec<Report>, Vec<ImportError>), ImportError> {
    let mut skipped = Some(Vec::new());
    let reports = import_with(text, defaults, &mut skipped)?;
    Ok((reports, skipped.unwrap_or_default()))
}

/// `Err(e)` when strict (`skipped` is `None`); otherwise `e` is kept and `None` returned.
fn keep_going<T>(
    r: Result<T, ImportError>,
    skipped: &mut Option<Vec<ImportError>>,
) -> Result<Option<T>, ImportError> {
    match (r, skipped) {
        (Ok(v), _) => Ok(Some(v)),
        (Err(e), None) => Err(e),
        (Err(e), Some(list)) => {
            list.push(e);
            Ok(None)
        }
    }
}

fn import_with(
    text: &str,
    defaults: &Defaults,
    skipped: &mut Option<Vec<ImportError>>,
) -> Result<Vec<Report>, ImportError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| err("$", format!("not JSON: {e}")))?;
    let root = doc
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| err("$", "no resourceType"))?
        .to_string();
    if let Some(e) = conformance(&doc, &root) {
        return Err(e);
    }
    let mut index = Index::default();
    let mut reports = Vec::new();
    match root.as_str() {
        "Bundle" => {
            let entries = doc
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, e) in entries.iter().enumerate() {
                if let Some(r) = e.get("resource") {
                    index.add(
                        r,
                        e.get("fullUrl").and_then(Value::as_str),
                        format!("Bundle.entry[{i}].resource"),
                    );
                }
            }
            for (i, e) in entries.iter().enumerate() {
                let Some(r) = e.get("resource") else { continue };
                let at = format!("Bundle.entry[{i}].resource");
                let one = match r.get("resourceType").and_then(Value::as_str) {
                    Some("DiagnosticReport") => {
                        diagnostic_report(r, &at, &index, defaults, skipped)
                    }
                    Some("ImagingStudy") if !index.referenced_study(r) => {
                        imaging_study(r, &at, defaults)
                    }
                    _ => continue,
                };
                reports.extend(keep_going(one, skipped)?);
            }
        }
        "DiagnosticReport" => reports.push(diagnostic_report(
            &doc,
            "DiagnosticReport",
            &index,
            defaults,
            skipped,
        )?),
        "ImagingStudy" => reports.push(imaging_study(&doc, "ImagingStudy", defaults)?),
        other => {
            return Err(err(
                other,
                "only DiagnosticReport, ImagingStudy or a Bundle of them can be imported",
            ))
        }
    }
    if reports.is_empty() {
        let why = match skipped.as_ref().and_then(|s| s.first()) {
            Some(first) => {
                format!("holds no usable DiagnosticReport or ImagingStudy (first skipped: {first})")
            }
            None => "holds no DiagnosticReport or ImagingStudy".to_string(),
        };
        return Err(err(root, why));
    }
    Ok(reports)
}

/// What a JSON value must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Obj,
    Arr,
    Any,
    /// A datatype, checked element by element.
    Dt(Datatype),
    /// An array of a datatype.
    ArrOf(Datatype),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Datatype {
    CodeableConcept,
    Coding,
    Reference,
    Quantity,
    Identifier,
    Period,
}

const DR_STATUS: &[&str] = &[
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const OBS_STATUS: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const IS_STATUS: &[&str] = &[
    "registered",
    "available",
    "cancelled",
    "entered-in-error",
    "unknown",
];
const BUNDLE_TYPES: &[&str] = &[
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
];

/// The elements of a resource type (R4), their kinds, the required ones and the status
/// value set.
struct Shape {
    elements: &'static [(&'static str, Kind)],
    required: &'static [&'static str],
    status: &'static [&'static str],
}

const COMMON: &[(&str, Kind)] = &[
    ("resourceType", Kind::Str),
    ("id", Kind::Str),
    ("meta", Kind::Obj),
    ("implicitRules", Kind::Str),
    ("language", Kind::Str),
    ("text", Kind::Obj),
    ("contained", Kind::Arr),
    ("extension", Kind::Arr),
    ("modifierExtension", Kind::Arr),
];

use Datatype as D;
use Kind::{Any, Arr, ArrOf, Dt, Num, Obj, Str};

const DIAGNOSTIC_REPORT: Shape = Shape {
    elements: &[
        ("identifier", ArrOf(D::Identifier)),
        ("basedOn", ArrOf(D::Reference)),
        ("status", Str),
        ("category", ArrOf(D::CodeableConcept)),
        ("code", Dt(D::CodeableConcept)),
        ("subject", Dt(D::Reference)),
        ("encounter", Dt(D::Reference)),
        ("effectiveDateTime", Str),
        ("effectivePeriod", Dt(D::Period)),
        ("issued", Str),
        ("performer", ArrOf(D::Reference)),
        ("resultsInterpreter", ArrOf(D::Reference)),
        ("specimen", ArrOf(D::Reference)),
        ("result", ArrOf(D::Reference)),
        ("imagingStudy", ArrOf(D::Reference)),
        ("media", Arr),
        ("conclusion", Str),
        ("conclusionCode", ArrOf(D::CodeableConcept)),
        ("presentedForm", Arr),
    ],
    required: &["status", "code"],
    status: DR_STATUS,
};

const OBSERVATION: Shape = Shape {
    elements: &[
        ("identifier", ArrOf(D::Identifier)),
        ("basedOn", ArrOf(D::Reference)),
        ("partOf", ArrOf(D::Reference)),
        ("status", Str),
        ("category", ArrOf(D::CodeableConcept)),
        ("code", Dt(D::CodeableConcept)),
        ("subject", Dt(D::Reference)),
        ("focus", ArrOf(D::Reference)),
        ("encounter", Dt(D::Reference)),
        ("effectiveDateTime", Str),
        ("effectivePeriod", Dt(D::Period)),
        ("effectiveTiming", Obj),
        ("effectiveInstant", Str),
        ("issued", Str),
        ("performer", ArrOf(D::Reference)),
        ("valueQuantity", Dt(D::Quantity)),
        ("valueCodeableConcept", Dt(D::CodeableConcept)),
        ("valueString", Str),
        ("valueBoolean", Any),
        ("valueInteger", Num),
        ("valueRange", Obj),
        ("valueRatio", Obj),
        ("valueSampledData", Obj),
        ("valueTime", Str),
        ("valueDateTime", Str),
        ("valuePeriod", Dt(D::Period)),
        ("dataAbsentReason", Dt(D::CodeableConcept)),
        ("interpretation", ArrOf(D::CodeableConcept)),
        ("note", Arr),
        ("bodySite", Dt(D::CodeableConcept)),
        ("method", Dt(D::CodeableConcept)),
        ("specimen", Dt(D::Reference)),
        ("device", Dt(D::Reference)),
        ("referenceRange", Arr),
        ("hasMember", ArrOf(D::Reference)),
        ("derivedFrom", ArrOf(D::Reference)),
        ("component", Arr),
    ],
    required: &["status", "code"],
    status: OBS_STATUS,
};

const IMAGING_STUDY: Shape = Shape {
    elements: &[
        ("identifier", ArrOf(D::Identifier)),
        ("status", Str),
        ("modality", ArrOf(D::Coding)),
        ("subject", Dt(D::Reference)),
        ("encounter", Dt(D::Reference)),
        ("started", Str),
        ("basedOn", ArrOf(D::Reference)),
        ("referrer", Dt(D::Reference)),
        ("interpreter", ArrOf(D::Reference)),
        ("endpoint", ArrOf(D::Reference)),
        ("numberOfSeries", Num),
        ("numberOfInstances", Num),
        ("procedureReference", Dt(D::Reference)),
        ("procedureCode", ArrOf(D::CodeableConcept)),
        ("location", Dt(D::Reference)),
        ("reasonCode", ArrOf(D::CodeableConcept)),
        ("reasonReference", ArrOf(D::Reference)),
        ("note", Arr),
        ("description", Str),
        ("series", Arr),
    ],
    required: &["status", "subject"],
    status: IS_STATUS,
};

const BUNDLE: Shape = Shape {
    elements: &[
        ("identifier", Dt(D::Identifier)),
        ("type", Str),
        ("timestamp", Str),
        ("total", Num),
        ("link", Arr),
        ("entry", Arr),
        ("signature", Obj),
    ],
    required: &["type"],
    status: &[],
};

fn kind_ok(v: &Value, k: Kind) -> bool {
    match k {
        Str => v.is_string(),
        Num => v.is_number(),
        Obj | Dt(_) => v.is_object(),
        Arr | ArrOf(_) => v.is_array(),
        Any => true,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Str => "a string",
        Num => "a number",
        Obj | Dt(_) => "an object",
        Arr | ArrOf(_) => "an array",
        Any => "any value",
    }
}

/// The elements of a datatype this importer reads, with their kinds (others are allowed).
fn datatype_elements(d: Datatype) -> &'static [(&'static str, Kind)] {
    match d {
        D::CodeableConcept => &[("coding", ArrOf(D::Coding)), ("text", Str)],
        D::Coding => &[
            ("system", Str),
            ("version", Str),
            ("code", Str),
            ("display", Str),
        ],
        D::Reference => &[
            ("reference", Str),
            ("type", Str),
            ("identifier", Dt(D::Identifier)),
            ("display", Str),
        ],
        D::Quantity => &[
            ("value", Num),
            ("comparator", Str),
            ("unit", Str),
            ("system", Str),
            ("code", Str),
        ],
        D::Identifier => &[
            ("use", Str),
            ("type", Dt(D::CodeableConcept)),
            ("system", Str),
            ("value", Str),
        ],
        D::Period => &[("start", Str), ("end", Str)],
    }
}

fn check_value(v: &Value, k: Kind, at: &str) -> Result<(), ImportError> {
    if !kind_ok(v, k) {
        return Err(err(at, format!("must be {}", kind_name(k))));
    }
    match k {
        Str if v.as_str() == Some("") => Err(err(at, "must not be empty")),
        Dt(d) => check_fields(v, datatype_elements(d), at),
        ArrOf(d) => {
            for (i, x) in v.as_array().into_iter().flatten().enumerate() {
                check_value(x, Dt(d), &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_fields(v: &Value, elements: &[(&str, Kind)], at: &str) -> Result<(), ImportError> {
    for (name, k) in elements {
        if let Some(x) = v.get(*name) {
            check_value(x, *k, &format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

/// The first way `v` (a resource at `at`) breaks the R4 structure this importer reads.
fn conformance(v: &Value, at: &str) -> Option<ImportError> {
    conformance_inner(v, at).err()
}

fn conformance_inner(v: &Value, at: &str) -> Result<(), ImportError> {
    let o = v
        .as_object()
        .ok_or_else(|| err(at, "a resource must be a JSON object"))?;
    let ty = o.get("resourceType").and_then(Value::as_str).unwrap_or("");
    let shape = match ty {
        "DiagnosticReport" => &DIAGNOSTIC_REPORT,
        "Observation" => &OBSERVATION,
        "ImagingStudy" => &IMAGING_STUDY,
        "Bundle" => &BUNDLE,
        // Other resources (Patient, Specimen, …) may travel along; they are not read.
        _ => return Ok(()),
    };
    for key in o.keys() {
        let known = COMMON.iter().chain(shape.elements).any(|(n, _)| n == key);
        if !known {
            return Err(err(
                format!("{at}.{key}"),
                format!("{ty} (FHIR R4) has no element `{key}`"),
            ));
        }
    }
    check_fields(v, COMMON, at)?;
    check_fields(v, shape.elements, at)?;
    for r in shape.required {
        if !o.contains_key(*r) {
            return Err(err(format!("{at}.{r}"), "is required (1..1 in FHIR R4)"));
        }
    }
    let status_key = if ty == "Bundle" { "type" } else { "status" };
    let allowed = if ty == "Bundle" {
        BUNDLE_TYPES
    } else {
        shape.status
    };
    if let Some(st) = o.get(status_key).and_then(Value::as_str) {
        if !allowed.contains(&st) {
            return Err(err(
                format!("{at}.{status_key}"),
                format!("`{st}` is not one of: {}", allowed.join(", ")),
            ));
        }
    }
    for (i, c) in o
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        conformance_inner(c, &format!("{at}.contained[{i}]"))?;
    }
    if ty == "Bundle" {
        for (i, e) in o
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let e_at = format!("{at}.entry[{i}]");
            check_fields(e, &[("fullUrl", Str), ("resource", Obj)], &e_at)?;
            if let Some(r) = e.get("resource") {
                conformance_inner(r, &format!("{e_at}.resource"))?;
            }
        }
    }
    if ty == "Observation" {
        for (i, rr) in o
            .get("referenceRange")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_fields(
                rr,
                &[
                    ("low", Dt(D::Quantity)),
                    ("high", Dt(D::Quantity)),
                    ("text", Str),
                ],
                &format!("{at}.referenceRange[{i}]"),
            )?;
        }
    }
    if ty == "ImagingStudy" {
        for (i, se) in o
            .get("series")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let se_at = format!("{at}.series[{i}]");
            check_fields(
                se,
                &[
                    ("uid", Str),
                    ("number", Num),
                    ("modality", Dt(D::Coding)),
                    ("description", Str),
                    ("numberOfInstances", Num),
                    ("bodySite", Dt(D::Coding)),
                    ("laterality", Dt(D::Coding)),
                    ("started", Str),
                    ("extension", Arr),
                ],
                &se_at,
            )?;
            for r in ["uid", "modality"] {
                if se.get(r).is_none() {
                    return Err(err(format!("{se_at}.{r}"), "is required (1..1 in FHIR R4)"));
                }
            }
        }
    }
    Ok(())
}

/// Resources of a Bundle by `Type/id` and full URL, with where they are.
#[derive(Default)]
struct Index {
    by_ref: HashMap<String, (Value, String)>,
    studies_referenced: Vec<String>,
}

impl Index {
    fn add(&mut self, r: &Value, full_url: Option<&str>, at: String) {
        let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
        if let Some(id) = r.get("id").and_then(Value::as_str) {
            self.by_ref
                .insert(format!("{ty}/{id}"), (r.clone(), at.clone()));
        }
        if let Some(u) = full_url {
            self.by_ref.insert(u.to_string(), (r.clone(), at));
        }
        if ty == "DiagnosticReport" {
            for s in r
                .get("imagingStudy")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(x) = s.get("reference").and_then(Value::as_str) {
                    self.studies_referenced.push(x.to_string());
                }
            }
        }
    }

    fn referenced_study(&self, r: &Value) -> bool {
        let id = r.get("id").and_then(Value::as_str).unwrap_or("");
        self.studies_referenced.iter().any(|x| {
            x == &format!("ImagingStudy/{id}") || self.by_ref.get(x).is_some_and(|(v, _)| v == r)
        })
    }

    /// The resource a reference of `owner` points to: contained (`#id`), or in the Bundle.
    fn resolve(&self, owner: &Value, owner_at: &str, reference: &str) -> Option<(Value, String)> {
        if let Some(id) = reference.strip_prefix('#') {
            let contained = owner.get("contained").and_then(Value::as_array)?;
            return contained.iter().enumerate().find_map(|(i, c)| {
                (c.get("id").and_then(Value::as_str) == Some(id))
                    .then(|| (c.clone(), format!("{owner_at}.contained[{i}]")))
            });
        }
        self.by_ref.get(reference).cloned()
    }
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|x| !x.is_empty())
}

/// A FHIR dateTime or instant (a date alone is its midnight UTC) as Unix milliseconds.
/// The first element of the array `array` of `v` whose `key` is `value` (an identifier by
/// its system, an extension by its url).
fn element_where<'a>(v: &'a Value, array: &str, key: &str, value: &str) -> Option<&'a Value> {
    v.get(array)?
        .as_array()?
        .iter()
        .find(|x| s(x, key) == Some(value))
}

fn millis(v: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(v, &Rfc3339).ok().or_else(|| {
        time::Date::parse(v, time::macros::format_description!("[year]-[month]-[day]"))
            .ok()
            .map(|d| d.midnight().assume_utc())
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn status_of(v: &str) -> Option<ReportStatus> {
    Some(match v {
        "registered" => ReportStatus::Registered,
        "partial" => ReportStatus::Partial,
        "preliminary" => ReportStatus::Preliminary,
        "final" | "available" => ReportStatus::Final,
        "amended" => ReportStatus::Amended,
        "corrected" => ReportStatus::Corrected,
        "appended" => ReportStatus::Appended,
        "cancelled" => ReportStatus::Cancelled,
        "entered-in-error" => ReportStatus::EnteredInError,
        _ => return None,
    })
}

/// The patient's resident id: `subject.identifier` of the resident id system, or the default.
fn patient(r: &Value, at: &str, d: &Defaults) -> Result<String, ImportError> {
    let from_resource = r
        .get("subject")
        .and_then(|x| x.get("identifier"))
        .filter(|i| s(i, "system") == Some(RESIDENT_ID_SYSTEM))
        .and_then(|i| s(i, "value"))
        .map(str::to_string);
    let id = from_resource
        .or_else(|| d.patient.clone())
        .ok_or_else(|| {
            err(
                format!("{at}.subject"),
                format!("no resident id (subject.identifier with system {RESIDENT_ID_SYSTEM}) and no patient given"),
            )
        })?;
    tongban_catalog::FieldType::ResidentId
        .check(&id)
        .map_err(|m| {
            err(
                format!("{at}.subject.identifier.value"),
                format!("resident id {m}"),
            )
        })?;
    Ok(id.to_ascii_uppercase())
}

/// The performing institution: a `performer` with a credit-code identifier, or the default.
fn institution(r: &Value, at: &str, d: &Defaults) -> Result<(String, String), ImportError> {
    let performers = r
        .get("performer")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let found = performers.iter().find_map(|p| {
        let i = p.get("identifier")?;
        (s(i, "system") == Some(USCC_SYSTEM)).then(|| {
            (
                s(i, "value").unwrap_or("").to_string(),
                s(p, "display").unwrap_or("").to_string(),
            )
        })
    });
    let (code, name) = match (found, &d.institution_code) {
        (Some(f), _) => f,
        (None, Some(code)) => (
            code.clone(),
            d.institution_name
                .clone()
                .or_else(|| performers.first().and_then(|p| s(p, "display")).map(str::to_string))
                .unwrap_or_default(),
        ),
        (None, None) => {
            return Err(err(
                format!("{at}.performer"),
                format!("no performing institution (performer.identifier with system {USCC_SYSTEM}) and none given"),
            ))
        }
    };
    tongban_catalog::FieldType::CreditCode
        .check(&code)
        .map_err(|m| {
            err(
                format!("{at}.performer.identifier.value"),
                format!("institution {m}"),
            )
        })?;
    Ok((code, name))
}

fn diagnostic_report(
    r: &Value,
    at: &str,
    index: &Index,
    d: &Defaults,
    skipped: &mut Option<Vec<ImportError>>,
) -> Result<Report, ImportError> {
    let status = s(r, "status")
        .and_then(status_of)
        .ok_or_else(|| err(format!("{at}.status"), "unknown status"))?;
    let effective = s(r, "effectiveDateTime")
        .or_else(|| r.get("effectivePeriod").and_then(|p| s(p, "start")))
        .ok_or_else(|| {
            err(
                format!("{at}.effective[x]"),
                "the collection time (effectiveDateTime or effectivePeriod.start) is required",
            )
        })?;
    let collected =
        millis(effective).ok_or_else(|| err(format!("{at}.effective[x]"), "not a dateTime"))?;
    let issued = s(r, "issued").and_then(millis).unwrap_or(collected);
    let patient = patient(r, at, d)?;
    let (institution_code, institution_name) = institution(r, at, d)?;
    let performers = other_performers(r);
    let mut results = Vec::new();
    for (i, reference) in r
        .get("result")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ref_at = format!("{at}.result[{i}].reference");
        let one = (|| {
            let target = s(reference, "reference")
                .ok_or_else(|| err(&ref_at, "a result needs a reference"))?;
            let (obs, obs_at) = index.resolve(r, at, target).ok_or_else(|| {
                err(
                    &ref_at,
                    format!("`{target}` resolves to no contained or bundled Observation"),
                )
            })?;
            let mut found = Vec::new();
            observations(&obs, &obs_at, r, at, index, &mut found, 0)?;
            Ok(found)
        })();
        if let Some(found) = keep_going(one, skipped)? {
            results.extend(found);
        }
    }
    let mut kind = ReportKind::Laboratory;
    for (i, st) in r
        .get("imagingStudy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ref_at = format!("{at}.imagingStudy[{i}].reference");
        let one = (|| {
            let target = s(st, "reference").ok_or_else(|| err(&ref_at, "needs a reference"))?;
            let (study, study_at) = index.resolve(r, at, target).ok_or_else(|| {
                err(
                    &ref_at,
                    format!("`{target}` resolves to no contained or bundled ImagingStudy"),
                )
            })?;
            imaging_results(&study, &study_at)
        })();
        if let Some(found) = keep_going(one, skipped)? {
            results.extend(found);
            kind = ReportKind::Imaging;
        }
    }
    if results.is_empty() {
        return Err(err(
            format!("{at}.result"),
            "a report needs at least one result or imaging study",
        ));
    }
    let report_id = r
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|i| s(i, "value"))
        .or_else(|| s(r, "id"))
        .ok_or_else(|| {
            err(
                format!("{at}.identifier"),
                "a report needs an identifier or an id",
            )
        })?;
    Ok(Report {
        report_id: report_id.to_string(),
        patient_id: patient,
        kind: kind as i32,
        status: status as i32,
        collected_at_ms: collected,
        issued_at_ms: issued.max(collected),
        institution_code,
        institution_name,
        department: element_where(r, "extension", "url", crate::fhir::DEPARTMENT_EXTENSION)
            .and_then(|x| s(x, "valueString"))
            .unwrap_or("")
            .to_string(),
        verifier: r
            .get("resultsInterpreter")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|x| s(x, "display"))
            .unwrap_or("")
            .to_string(),
        results,
        conclusion: s(r, "conclusion").unwrap_or("").to_string(),
        attachment: Vec::new(),
        // The registry assigns it when the report is published.
        registry_id: String::new(),
        performers,
        attachment_bytes: 0,
        attachment_sha256: String::new(),
    })
}

/// The performers that are not the institution (a practitioner, a role, another
/// organisation), with their kind: from `type`, else from the reference's resource type.
fn other_performers(r: &Value) -> Vec<tongban_proto::medical::v1::Performer> {
    r.get("performer")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.get("identifier").and_then(|i| s(i, "system")) != Some(USCC_SYSTEM)
                || s(p, "reference").is_some_and(|x| !x.starts_with("Organization/"))
        })
        .map(|p| {
            let reference = s(p, "reference").unwrap_or("").to_string();
            let kind = s(p, "type")
                .map(str::to_string)
                .or_else(|| {
                    reference
                        .split_once('/')
                        .map(|(t, _)| t.to_string())
                        .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
                })
                .unwrap_or_default();
            let identifier = p.get("identifier");
            tongban_proto::medical::v1::Performer {
                kind,
                reference,
                identifier_system: identifier
                    .and_then(|i| s(i, "system"))
                    .unwrap_or("")
                    .to_string(),
                identifier_value: identifier
                    .and_then(|i| s(i, "value"))
                    .unwrap_or("")
                    .to_string(),
                display: s(p, "display").unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// An Observation's result, or its members' (a panel), depth-bounded.
fn observations(
    obs: &Value,
    at: &str,
    owner: &Value,
    owner_at: &str,
    index: &Index,
    out: &mut Vec<LabResult>,
    depth: usize,
) -> Result<(), ImportError> {
    if obs.get("resourceType").and_then(Value::as_str) != Some("Observation") {
        return Err(err(at, "a DiagnosticReport result must be an Observation"));
    }
    let members: Vec<&Value> = obs
        .get("hasMember")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let has_value = obs
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.starts_with("value")));
    if !has_value && !members.is_empty() && depth < 4 {
        for (i, m) in members.iter().enumerate() {
            let m_at = format!("{at}.hasMember[{i}].reference");
            let target = s(m, "reference").ok_or_else(|| err(&m_at, "needs a reference"))?;
            let (member, member_at) = index
                .resolve(obs, at, target)
                .or_else(|| index.resolve(owner, owner_at, target))
                .ok_or_else(|| {
                    err(
                        &m_at,
                        format!("`{target}` resolves to no contained or bundled Observation"),
                    )
                })?;
            observations(&member, &member_at, owner, owner_at, index, out, depth + 1)?;
        }
        return Ok(());
    }
    let codings: Vec<&Value> = obs
        .get("code")
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let loinc = codings
        .iter()
        .find(|c| s(c, "system") == Some("http://loinc.org"))
        .and_then(|c| s(c, "code"));
    let local = codings
        .iter()
        .find(|c| s(c, "system") != Some("http://loinc.org"))
        .and_then(|c| s(c, "code"));
    if loinc.is_none() && local.is_none() {
        return Err(err(
            format!("{at}.code.coding"),
            "an Observation needs a LOINC or a local code",
        ));
    }
    let value = if let Some(q) = obs.get("valueQuantity") {
        let v = q
            .get("value")
            .and_then(Value::as_f64)
            .ok_or_else(|| err(format!("{at}.valueQuantity.value"), "required"))?;
        let unit = s(q, "code")
            .or_else(|| s(q, "unit"))
            .unwrap_or("")
            .to_string();
        result::Value::Quantity(Quantity { value: v, unit })
    } else if let Some(c) = obs.get("valueCodeableConcept") {
        let first = c
            .get("coding")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        result::Value::Coded(Coding {
            system: first.and_then(|x| s(x, "system")).unwrap_or("").into(),
            code: first.and_then(|x| s(x, "code")).unwrap_or("").into(),
            display: first
                .and_then(|x| s(x, "display"))
                .or_else(|| s(c, "text"))
                .unwrap_or("")
                .into(),
        })
    } else if let Some(t) = s(obs, "valueString") {
        result::Value::Text(t.to_string())
    } else {
        return Err(err(
            format!("{at}.value[x]"),
            "a result needs valueQuantity, valueCodeableConcept or valueString",
        ));
    };
    let range = obs
        .get("referenceRange")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|rr| ReferenceRange {
            low: rr
                .get("low")
                .and_then(|l| l.get("value"))
                .and_then(Value::as_f64),
            high: rr
                .get("high")
                .and_then(|l| l.get("value"))
                .and_then(Value::as_f64),
            unit: rr
                .get("low")
                .or_else(|| rr.get("high"))
                .and_then(|q| s(q, "code").or_else(|| s(q, "unit")))
                .unwrap_or("")
                .to_string(),
            text: s(rr, "text").unwrap_or("").to_string(),
        });
    // The Observation's own times, when it has them (a panel's members may differ).
    let collected = s(obs, "effectiveDateTime")
        .or_else(|| s(obs, "effectiveInstant"))
        .or_else(|| obs.get("effectivePeriod").and_then(|p| s(p, "start")))
        .and_then(millis)
        .unwrap_or(0);
    let issued = s(obs, "issued").and_then(millis).unwrap_or(0);
    let interpretation = obs
        .get("interpretation")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|i| i.get("coding"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|c| s(c, "code"))
        .unwrap_or("");
    out.push(LabResult {
        result_id: element_where(obs, "identifier", "system", crate::fhir::RESULT_ID_SYSTEM)
            .and_then(|i| s(i, "value"))
            .or_else(|| s(obs, "id"))
            .map_or_else(|| format!("r{}", out.len() + 1), str::to_string),
        local_code: local.unwrap_or("").to_string(),
        loinc: loinc.unwrap_or("").to_string(),
        display: obs
            .get("code")
            .and_then(|c| s(c, "text"))
            .or_else(|| codings.first().and_then(|c| s(c, "display")))
            .unwrap_or("")
            .to_string(),
        value: Some(value),
        reference_range: range,
        interpretation: interpretation.to_string(),
        collected_at_ms: collected,
        issued_at_ms: issued,
        ..Default::default()
    });
    Ok(())
}

/// One ImagingStudy as results, one per series (each with its own modality, body site,
/// series UID and time; the study's UID and accession number shared): a CT of the chest and
/// the abdomen is two recognisable results. A study without series is one result named by
/// the study alone.
fn imaging_results(study: &Value, at: &str) -> Result<Vec<LabResult>, ImportError> {
    let series: Vec<&Value> = study
        .get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let study_modality = study
        .get("modality")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|m| s(m, "code"));
    let identifiers: Vec<&Value> = study
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let uid = identifiers
        .iter()
        .find(|i| s(i, "system") == Some("urn:dicom:uid"))
        .and_then(|i| s(i, "value"))
        .map(|v| v.trim_start_matches("urn:oid:").to_string())
        .or_else(|| series.first().and_then(|x| s(x, "uid")).map(str::to_string))
        .unwrap_or_default();
    let accession = identifiers
        .iter()
        .find(|i| {
            i.get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|x| s(x, "code") == Some("ACSN")))
        })
        .and_then(|i| s(i, "value"))
        .unwrap_or("");
    let study_id = s(study, "id").unwrap_or("study");
    let started = s(study, "started").and_then(millis).unwrap_or(0);
    let description = s(study, "description");
    let one = |se: Option<&Value>, i: usize| -> Result<LabResult, ImportError> {
        let se_at = format!("{at}.series[{i}]");
        let modality = se
            .and_then(|x| x.get("modality"))
            .and_then(|m| s(m, "code"))
            .or(study_modality)
            .ok_or_else(|| {
                err(
                    format!("{at}.modality"),
                    "an imaging study needs its modality",
                )
            })?;
        let site = se.and_then(|x| x.get("bodySite"));
        let body_site = site
            .and_then(|b| s(b, "display").or_else(|| s(b, "code")))
            .ok_or_else(|| {
                err(
                    format!("{se_at}.bodySite"),
                    "an imaging study needs its body site",
                )
            })?;
        let result_id = se
            .and_then(|x| element_where(x, "extension", "url", crate::fhir::RESULT_ID_EXTENSION))
            .and_then(|x| s(x, "valueString"))
            .map(str::to_string)
            .unwrap_or_else(|| {
                if series.len() <= 1 {
                    study_id.to_string()
                } else {
                    let n = se
                        .and_then(|x| x.get("number"))
                        .and_then(Value::as_u64)
                        .map_or(i + 1, |n| n as usize);
                    format!("{study_id}.{n}")
                }
            });
        Ok(LabResult {
            result_id,
            modality: modality.to_string(),
            body_site: body_site.to_ascii_lowercase(),
            study_instance_uid: uid.clone(),
            series_instance_uid: se.and_then(|x| s(x, "uid")).unwrap_or("").to_string(),
            body_site_coding: site.map(|b| Coding {
                system: s(b, "system").unwrap_or("").to_string(),
                code: s(b, "code").unwrap_or("").to_string(),
                display: s(b, "display").unwrap_or("").to_string(),
            }),
            accession_number: accession.to_string(),
            collected_at_ms: se
                .and_then(|x| s(x, "started"))
                .and_then(millis)
                .unwrap_or(started),
            value: se
                .and_then(|x| s(x, "description"))
                .or(description)
                .map(|d| result::Value::Text(d.to_string())),
            ..Default::default()
        })
    };
    if series.is_empty() {
        return Ok(vec![one(None, 0)?]);
    }
    let results = series
        .iter()
        .enumerate()
        .map(|(i, se)| one(Some(se), i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids = std::collections::BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        if !ids.insert(r.result_id.as_str()) {
            return Err(err(
                format!("{at}.series[{i}]"),
                format!("two series give the result id `{}`", r.result_id),
            ));
        }
    }
    Ok(results)
}

/// A standalone ImagingStudy as an imaging report of its own.
fn imaging_study(r: &Value, at: &str, d: &Defaults) -> Result<Report, ImportError> {
    let status = s(r, "status")
        .and_then(status_of)
        .unwrap_or(ReportStatus::Registered);
    let started = s(r, "started")
        .ok_or_else(|| err(format!("{at}.started"), "the study time is required"))
        .and_then(|t| millis(t).ok_or_else(|| err(format!("{at}.started"), "not a dateTime")))?;
    let results = imaging_results(r, at)?;
    // An R4 ImagingStudy names no performing organisation at its top level.
    let institution_code = d.institution_code.clone().ok_or_else(|| {
        err(
            at,
            "an ImagingStudy names no performing institution: give its credit code",
        )
    })?;
    tongban_catalog::FieldType::CreditCode
        .check(&institution_code)
        .map_err(|m| err(at, format!("institution {m}")))?;
    let institution_name = d.institution_name.clone().unwrap_or_default();
    Ok(Report {
        report_id: match results.first() {
            Some(x) if !x.study_instance_uid.is_empty() => x.study_instance_uid.clone(),
            _ => s(r, "id").unwrap_or("study").to_string(),
        },
        patient_id: patient(r, at, d)?,
        kind: ReportKind::Imaging as i32,
        status: status as i32,
        collected_at_ms: started,
        issued_at_ms: started,
        institution_code,
        institution_name,
        results,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The CBC fixture, with the haemoglobin collected days before the report's time and
    /// issued apart from it.
    fn cbc_with_own_times() -> String {
        let text = include_str!("../../../tests/fixtures/fhir/cbc-contained.json");
        let mut v: Value = serde_json::from_str(text).unwrap();
        let hb = &mut v["contained"][0];
        hb["effectiveDateTime"] = Value::from("2026-11-05T10:30:10+01:00");
        hb["issued"] = Value::from("2026-11-06T08:00:00Z");
        v.to_string()
    }

    #[test]
    fn each_result_keeps_its_own_times_through_import_export_import() {
        let d = Defaults::default();
        let first = import(&cbc_with_own_times(), &d).unwrap();
        let r = &first[0];
        let hb = r.results.iter().find(|x| x.loinc == "718-7").unwrap();
        assert_eq!(hb.collected_at_ms, millis("2026-11-05T09:30:10Z").unwrap());
        assert_eq!(hb.issued_at_ms, millis("2026-11-06T08:00:00Z").unwrap());
        // The others have none of their own: the report's.
        let wbc = r.results.iter().find(|x| x.loinc == "6690-2").unwrap();
        assert_eq!(wbc.collected_at_ms, 0);
        // Exported: the haemoglobin's own times, the others the report's; imported again:
        // the same registry content.
        let exported = crate::fhir::export(r).to_string();
        // The export names the patient masked: the importer is told who it is.
        let again_d = Defaults {
            patient: Some("370102197805060048".into()),
            ..Defaults::default()
        };
        let again = import(&exported, &again_d).unwrap();
        let hb2 = again[0]
            .results
            .iter()
            .find(|x| x.loinc == "718-7")
            .unwrap();
        assert_eq!(
            (hb2.collected_at_ms, hb2.issued_at_ms),
            (hb.collected_at_ms, hb.issued_at_ms)
        );
        let wbc2 = again[0]
            .results
            .iter()
            .find(|x| x.loinc == "6690-2")
            .unwrap();
        assert_eq!(wbc2.collected_at_ms, r.collected_at_ms);
        assert_eq!(again[0].collected_at_ms, r.collected_at_ms);
        // The same registry content, field by field (the patient is masked in an export,
        // and given again on import; a result without its own times gets the report's).
        let mut with_patient = again[0].clone();
        with_patient.patient_id = r.patient_id.clone();
        for (x, y) in with_patient.results.iter_mut().zip(&r.results) {
            if y.collected_at_ms == 0 {
                x.collected_at_ms = 0;
            }
            if y.issued_at_ms == 0 {
                x.issued_at_ms = 0;
            }
        }
        assert_eq!(with_patient, *r);
        // A report with its department and verifier keeps them too.
        let mut named = r.clone();
        named.department = "检验科".into();
        named.verifier = "王医生".into();
        let back = import(&crate::fhir::export(&named).to_string(), &again_d).unwrap();
        assert_eq!(
            (back[0].department.as_str(), back[0].verifier.as_str()),
            ("检验科", "王医生")
        );
    }

    #[test]
    fn a_practitioner_performer_stays_a_practitioner() {
        let text = include_str!("../../../tests/fixtures/fhir/cbc-contained.json");
        let mut v: Value = serde_json::from_str(text).unwrap();
        v["performer"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "reference": "Practitioner/f005", "display": "王医生" }));
        let d = Defaults::default();
        let first = import(&v.to_string(), &d).unwrap();
        let r = &first[0];
        assert_eq!(r.institution_code, "12370000495570024A");
        assert_eq!(r.performers.len(), 1, "{:?}", r.performers);
        assert_eq!(
            (
                r.performers[0].kind.as_str(),
                r.performers[0].display.as_str()
            ),
            ("Practitioner", "王医生")
        );
        let exported = crate::fhir::export(r).to_string();
        let again_d = Defaults {
            patient: Some("370102197805060048".into()),
            ..Defaults::default()
        };
        let again = import(&exported, &again_d).unwrap();
        assert_eq!(again[0].performers, r.performers);
        assert_eq!(again[0].institution_code, r.institution_code);
    }

    #[test]
    fn imaging_keeps_its_series_uid_and_body_site_coding() {
        let study = r#"{"resourceType":"ImagingStudy","id":"ct","status":"available",
            "subject":{"identifier":{"system":"urn:oid:2.16.156.10011.1.1","value":"370102197805060048"}},
            "started":"2026-11-20T08:15:00+08:00",
            "identifier":[{"system":"urn:dicom:uid","value":"urn:oid:1.2.3.4"}],
            "series":[{"uid":"1.2.3.4.5","modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"},
                       "bodySite":{"system":"http://snomed.info/sct","code":"T-15460","display":"Wrist Joint"}}]}"#;
        let d = Defaults {
            patient: Some("370102197805060048".into()),
            institution_code: Some("12370000495570024A".into()),
            institution_name: Some("山东大学齐鲁医院".into()),
        };
        let first = import(study, &d);
        let Ok(first) = first else {
            // The importer may need a performer in another form; say which.
            panic!("{first:?}");
        };
        let r = &first[0].results[0];
        assert_eq!(r.study_instance_uid, "1.2.3.4");
        assert_eq!(r.series_instance_uid, "1.2.3.4.5");
        let coding = r.body_site_coding.clone().unwrap();
        assert_eq!(
            (
                coding.system.as_str(),
                coding.code.as_str(),
                coding.display.as_str()
            ),
            ("http://snomed.info/sct", "T-15460", "Wrist Joint")
        );
        let exported = crate::fhir::export(&first[0]);
        let text = exported.to_string();
        assert!(text.contains("\"uid\":\"1.2.3.4.5\""), "{text}");
        assert!(text.contains("T-15460"), "{text}");
        let again = import(&text, &d).unwrap();
        let r2 = &again[0].results[0];
        assert_eq!(r2.series_instance_uid, r.series_instance_uid);
        assert_eq!(r2.body_site_coding, r.body_site_coding);
        assert_eq!(r2.study_instance_uid, r.study_instance_uid);
    }

    #[test]
    fn a_study_of_several_series_is_a_result_per_series_and_comes_back_the_same() {
        let study = r#"{"resourceType":"ImagingStudy","id":"ct","status":"available",
            "subject":{"identifier":{"system":"urn:oid:2.16.156.10011.1.1","value":"370102197805060048"}},
            "started":"2026-11-20T08:15:00+08:00",
            "identifier":[{"system":"urn:dicom:uid","value":"urn:oid:1.2.3.4"},
              {"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"ACSN"}]},"value":"A77"}],
            "modality":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"}],
            "description":"胸腹部CT",
            "series":[
              {"uid":"1.2.3.4.1","number":3,"modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"},
               "bodySite":{"system":"http://snomed.info/sct","code":"51185008","display":"Thorax"},
               "description":"胸部平扫"},
              {"uid":"1.2.3.4.2","number":4,"modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"},
               "bodySite":{"system":"http://snomed.info/sct","code":"818983003","display":"Abdomen"},
               "started":"2026-11-20T08:40:00+08:00"}]}"#;
        let d = Defaults {
            patient: Some("370102197805060048".into()),
            institution_code: Some("12370000495570024A".into()),
            institution_name: Some("山东大学齐鲁医院".into()),
        };
        let first = import(study, &d).unwrap();
        let rs = &first[0].results;
        assert_eq!(rs.len(), 2, "{rs:?}");
        assert_eq!(
            rs.iter()
                .map(|r| (
                    r.result_id.as_str(),
                    r.series_instance_uid.as_str(),
                    r.body_site.as_str()
                ))
                .collect::<Vec<_>>(),
            [
                ("ct.3", "1.2.3.4.1", "thorax"),
                ("ct.4", "1.2.3.4.2", "abdomen")
            ]
        );
        assert!(rs
            .iter()
            .all(|r| r.study_instance_uid == "1.2.3.4" && r.accession_number == "A77"));
        // Each series its own time and description, the study's where it has none.
        assert_eq!(
            rs[0].collected_at_ms,
            millis("2026-11-20T08:15:00+08:00").unwrap()
        );
        assert_eq!(
            rs[1].collected_at_ms,
            millis("2026-11-20T08:40:00+08:00").unwrap()
        );
        assert_eq!(rs[0].value, Some(result::Value::Text("胸部平扫".into())));
        assert_eq!(rs[1].value, Some(result::Value::Text("胸腹部CT".into())));
        // Exported: one ImagingStudy with both series; imported again: the same results.
        let exported = crate::fhir::export(&first[0]);
        let studies: Vec<&Value> = exported["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "ImagingStudy")
            .collect();
        assert_eq!(studies.len(), 1);
        assert_eq!(studies[0]["series"].as_array().unwrap().len(), 2);
        let again = import(&exported.to_string(), &d).unwrap();
        assert_eq!(again[0].results, first[0].results);
        // Two series that would give one result id are refused, naming the second.
        let clash = study.replace("\"number\":4", "\"number\":3");
        let e = import(&clash, &d).unwrap_err();
        assert_eq!(e.at, "ImagingStudy.series[1]", "{e:?}");
    }

    #[test]
    fn structure_errors_name_the_element() {
        let d = Defaults::default();
        let cases = [
            (
                r#"{"resourceType":"DiagnosticReport","status":5,"code":{}}"#,
                "DiagnosticReport.status",
            ),
            (
                r#"{"resourceType":"DiagnosticReport","status":"final","code":{},"colour":1}"#,
                "DiagnosticReport.colour",
            ),
            (
                r#"{"resourceType":"DiagnosticReport","status":"done","code":{}}"#,
                "DiagnosticReport.status",
            ),
            (
                r#"{"resourceType":"DiagnosticReport","status":"final"}"#,
                "DiagnosticReport.code",
            ),
            (
                r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"code":6690}]}}}]}"#,
                "Bundle.entry[0].resource.code.coding[0].code",
            ),
            (
                r##"{"resourceType":"DiagnosticReport","status":"final","code":{},"result":[{"reference":"#a"},{"reference":3}]}"##,
                "DiagnosticReport.result[1].reference",
            ),
        ];
        for (doc, at) in cases {
            assert_eq!(import(doc, &d).unwrap_err().at, at, "{doc}");
        }
    }
}
