//! What a bundle submission must satisfy before anything is sent: the form checked against
//! every item's rules (the departments' own checks, `tongban_crosscity::rules`), every item's
//! materials present, and one consent naming exactly the items submitted. All field problems
//! come back together, each naming the item (`JQ-08.account_number`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tongban_catalog::bundle::Bundle;
use tongban_catalog::{Catalog, FieldType};
use tongban_crosscity::rules::{self, Vouched};
use tongban_crosscity::CrossCityError;
use tongban_gateway::consent::{self, ConsentScope, VerifiedConsents};
use tongban_gateway::error::FieldViolation;
use tongban_proto::bundle::v1::SubmitRequest;
use tongban_proto::crosscity::v2 as cc;

use crate::error::BundleError;
use crate::store::{Material, Secrets};

/// The service the items are submitted to.
pub const CROSSCITY_V2: &str = "tongban.crosscity.v2.CrossCityService";
/// The purpose of every item's submission.
pub const PURPOSE: &str = "case-handling";

/// A checked submission: the items to submit (in the bundle's order) and the sealed part.
#[derive(Debug)]
pub struct Checked {
    pub included: Vec<String>,
    pub skipped: Vec<String>,
    pub secrets: Secrets,
}

/// The fields of item `code` from the bundle's form (those filled from results are not
/// there yet).
pub fn item_fields(
    bundle: &Bundle,
    code: &str,
    form: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, targets) in &bundle.form {
        let Some(v) = form.get(name).filter(|v| !v.is_empty()) else {
            continue;
        };
        for (item, field) in targets {
            if item == code {
                out.insert(field.clone(), v.clone());
            }
        }
    }
    out
}

/// The materials item `code` needs, from the bundle's (with their indexes in it).
fn item_materials(
    catalog: &Catalog,
    code: &str,
    materials: &[Material],
) -> Vec<(usize, cc::MaterialRef)> {
    let Some(item) = catalog.item(code) else {
        return Vec::new();
    };
    materials
        .iter()
        .enumerate()
        .filter(|(_, m)| item.materials.contains(&m.kind))
        .map(|(i, m)| (i, cc::MaterialRef::from(m)))
        .collect()
}

/// The department request of item `code` (fields from results filled by the caller).
pub fn item_request(
    catalog: &Catalog,
    bundle: &Bundle,
    code: &str,
    secrets: &Secrets,
    idempotency_key: String,
) -> cc::SubmitRequest {
    cc::SubmitRequest {
        catalog_code: code.to_string(),
        applicant_id: secrets.applicant_id.clone(),
        fields: item_fields(bundle, code, &secrets.fields)
            .into_iter()
            .collect(),
        materials: item_materials(catalog, code, &secrets.materials)
            .into_iter()
            .map(|(_, m)| m)
            .collect(),
        idempotency_key,
    }
}

/// Checks a submission of `bundle` by the call `vouched` (the service's own organisation is
/// `grantee`, `city/org`). Field problems first (all of them); then the consent.
pub fn check(
    catalog: &Catalog,
    bundle: &Bundle,
    req: SubmitRequest,
    vouched: &Vouched,
    consents: &ConsentCheck,
) -> Result<Checked, BundleError> {
    let mut bad: Vec<FieldViolation> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |bad: &mut Vec<FieldViolation>, v: FieldViolation| {
        if seen.insert((v.field.clone(), v.description.clone())) {
            bad.push(v);
        }
    };
    let target = req.target_city.trim().to_string();
    if target.is_empty() {
        push(
            &mut bad,
            FieldViolation::new("target_city", "target_city is required (e.g. qingdao)"),
        );
    }
    // Optional items left out.
    let mut skipped = Vec::new();
    for (i, s) in req.skip.iter().enumerate() {
        match bundle.items.iter().find(|b| &b.code == s) {
            Some(b) if b.optional => skipped.push(s.clone()),
            Some(_) => push(
                &mut bad,
                FieldViolation::new(
                    format!("skip[{i}]"),
                    format!(
                        "{s} is not optional in {}: it cannot be left out",
                        bundle.code
                    ),
                ),
            ),
            None => push(
                &mut bad,
                FieldViolation::new(
                    format!("skip[{i}]"),
                    format!("{s} is not an item of {}", bundle.code),
                ),
            ),
        }
    }
    let included: Vec<String> = bundle
        .items
        .iter()
        .filter(|b| !skipped.contains(&b.code))
        .map(|b| b.code.clone())
        .collect();
    // The applicant, once.
    let applicant_id = req.applicant_id.trim().to_ascii_uppercase();
    if applicant_id.is_empty() {
        push(
            &mut bad,
            FieldViolation::new("applicant_id", "applicant_id is required"),
        );
    } else if let Err(m) = FieldType::ResidentId.check(&applicant_id) {
        push(
            &mut bad,
            FieldViolation::new("applicant_id", format!("applicant_id {m}")),
        );
    }
    // The form: its own field names only, normalised as the departments store them.
    let mut form = BTreeMap::new();
    for (name, v) in req.fields {
        if !bundle.form.contains_key(&name) {
            push(
                &mut bad,
                FieldViolation::new(
                    format!("fields.{name}"),
                    format!(
                        "`{name}` is not a field of the {} form (its fields: {})",
                        bundle.code,
                        bundle.form.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
            );
            continue;
        }
        let v = tongban_catalog::normalise(v.trim());
        if !v.is_empty() {
            form.insert(name, v);
        }
    }
    let materials: Vec<Material> = req
        .materials
        .into_iter()
        .map(|m| Material {
            kind: m.kind,
            uri: m.uri,
            sha256: m.sha256.to_ascii_lowercase(),
        })
        .collect();
    for (i, m) in materials.iter().enumerate() {
        let needed = included.iter().any(|c| {
            catalog
                .item(c)
                .is_some_and(|it| it.materials.contains(&m.kind))
        });
        if !needed {
            push(
                &mut bad,
                FieldViolation::new(
                    format!("materials[{i}].kind"),
                    format!("no item of {} needs a `{}` material", bundle.code, m.kind),
                ),
            );
        }
    }
    // Every item, by the department's own rules.
    for code in &included {
        let Some(item) = catalog.item(code) else {
            return Err(BundleError::Store(format!(
                "bundle {} names {code}, which the catalog lacks",
                bundle.code
            )));
        };
        let Some(org) = item.provider_in(&target) else {
            if !target.is_empty() {
                push(
                    &mut bad,
                    FieldViolation::new(
                        "target_city",
                        format!("{code} is not provided in `{target}`"),
                    ),
                );
            }
            continue;
        };
        let fields = item_fields(bundle, code, &form);
        let mats = item_materials(catalog, code, &materials);
        for kind in &item.materials {
            if !mats.iter().any(|(_, m)| &m.kind == kind) {
                push(
                    &mut bad,
                    FieldViolation::new(
                        format!("{code}.materials"),
                        format!("{code} ({}) needs a `{kind}` material", item.name_en),
                    ),
                );
            }
        }
        let index: Vec<usize> = mats.iter().map(|(i, _)| *i).collect();
        let sub = cc::SubmitRequest {
            catalog_code: code.clone(),
            applicant_id: applicant_id.clone(),
            fields: fields.into_iter().collect(),
            materials: mats.into_iter().map(|(_, m)| m).collect(),
            idempotency_key: String::new(),
        };
        let mut as_item = vouched.clone();
        as_item.catalog_code = Some(code.clone());
        as_item.subject = Some(applicant_id.clone());
        match rules::check(catalog, &target, org, sub, &as_item) {
            Ok(_) => {}
            Err(CrossCityError::Invalid(vs)) => {
                for v in vs {
                    if let Some(v) = item_violation(bundle, code, &index, v) {
                        push(&mut bad, v);
                    }
                }
            }
            Err(e) => {
                push(
                    &mut bad,
                    FieldViolation::new(code.clone(), format!("{code}: {e}")),
                );
            }
        }
    }
    if !bad.is_empty() {
        return Err(BundleError::Invalid(bad));
    }
    match &vouched.subject {
        None => return Err(BundleError::NoSubject),
        Some(s) if *s != applicant_id => return Err(BundleError::SubjectMismatch),
        Some(_) => {}
    }
    consents.check(&req.consent, &applicant_id, &target, &included)?;
    Ok(Checked {
        included,
        skipped,
        secrets: Secrets {
            applicant_id,
            consent: req.consent,
            fields: form,
            materials,
        },
    })
}

/// A department's violation for item `code`, as a bundle's: its path naming the item, the
/// form field named in its description; `None` for what the bundle reports once or fills
/// later (the applicant, fields from earlier results).
fn item_violation(
    bundle: &Bundle,
    code: &str,
    material_index: &[usize],
    v: FieldViolation,
) -> Option<FieldViolation> {
    if v.field == "applicant_id" {
        return None;
    }
    if let Some(field) = v.field.strip_prefix("fields.") {
        let key = (code.to_string(), field.to_string());
        if bundle.from_results.contains_key(&key) {
            return None;
        }
        let form = bundle
            .form
            .iter()
            .find(|(_, ts)| ts.contains(&key))
            .map(|(name, _)| name.as_str());
        let description = match form {
            Some(name) => format!("{} (form field `{name}`)", v.description),
            None => v.description,
        };
        return Some(FieldViolation::new(format!("{code}.{field}"), description));
    }
    if let Some(rest) = v.field.strip_prefix("materials[") {
        // materials[j].x of the item's list: the bundle's own index.
        if let Some((j, tail)) = rest.split_once(']') {
            if let Some(i) = j.parse::<usize>().ok().and_then(|j| material_index.get(j)) {
                return Some(FieldViolation::new(
                    format!("materials[{i}]{tail}"),
                    v.description,
                ));
            }
        }
    }
    Some(FieldViolation::new(
        format!("{code}.{}", v.field),
        v.description,
    ))
}

/// Checks the consent token a submission presents: signed by the home node, for this
/// applicant, granted to this service's organisation for the departments' service and
/// purpose in the target city, and naming exactly the items submitted (a consent for fewer
/// items is refused: nothing is submitted on a consent that does not cover the whole bundle;
/// one for more is refused too: a bundle asks only for what it needs).
pub struct ConsentCheck {
    pub home_city: String,
    pub grantee: String,
    pub home_node_key: Arc<Vec<u8>>,
    pub cache: VerifiedConsents,
}

impl ConsentCheck {
    pub fn check(
        &self,
        token: &str,
        applicant_id: &str,
        target: &str,
        items: &[String],
    ) -> Result<(), BundleError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(BundleError::Consent(format!(
                "consent is required: grant {} one consent for {} naming the items {}",
                self.grantee,
                CROSSCITY_V2,
                items.join(", ")
            )));
        }
        let issuer = |city: &str| (city == self.home_city).then(|| Arc::clone(&self.home_node_key));
        let mut claims = None;
        for code in items {
            let scope = ConsentScope {
                subject: Some(applicant_id),
                caller: &self.grantee,
                target_city: target,
                service: CROSSCITY_V2,
                catalog_code: Some(code),
                purpose: PURPOSE,
            };
            match consent::verify(Some(token), &scope, issuer, |_, _| false, &self.cache) {
                Ok(c) => claims = Some(c),
                Err(consent::ConsentError::OutOfScope(m)) if m.contains("the call is for item") => {
                    // Reported below with every missing item.
                }
                Err(e) => return Err(BundleError::Consent(e.to_string())),
            }
        }
        let Some(named) = claims.map(|c| c.itm).or_else(|| {
            jsonwebtoken::dangerous::insecure_decode::<consent::ConsentClaims>(token)
                .ok()
                .map(|d| d.claims.itm)
        }) else {
            return Err(BundleError::Consent("the token is not a consent".into()));
        };
        let missing: Vec<&str> = items
            .iter()
            .filter(|c| !named.contains(c))
            .map(String::as_str)
            .collect();
        let extra: Vec<&str> = named
            .iter()
            .filter(|c| !items.contains(c))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(BundleError::Consent(format!(
                "it names {}, and the bundle needs {}: missing {} (grant one consent naming exactly the bundle's items)",
                list(&named),
                items.join(", "),
                missing.join(", ")
            )));
        }
        if !extra.is_empty() {
            return Err(BundleError::Consent(format!(
                "it names {} beyond the bundle's items {} (grant one consent naming exactly the bundle's items)",
                extra.join(", "),
                items.join(", ")
            )));
        }
        Ok(())
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "no item".into()
    } else {
        v.join(", ")
    }
}
