//! What a submission must satisfy before it is taken in: the item exists and is this
//! organisation's, the node vouched for this item and this applicant, and every form field
//! and material reference is valid. All field problems are reported together.

use std::collections::BTreeMap;

use tongban_catalog::{Catalog, FieldType, Item};
use tongban_gateway::error::FieldViolation;
use tongban_proto::crosscity::v2::{MaterialRef, SubmitRequest};
use tongban_proto::metadata::{
    VouchedPrincipal, CALLER, CATALOG_CODE, ORIGIN_CITY, PRINCIPAL, SUBJECT,
};
use tonic::metadata::MetadataMap;

use crate::error::CrossCityError;

/// What the node told the provider about a call (the provider trusts nothing else).
#[derive(Debug, Clone)]
pub struct Vouched {
    /// `x-tongban-caller`: who made the call (`city/org`).
    pub caller: String,
    /// `x-tongban-subject`: the citizen the node checked consent for (clear, in memory only).
    pub subject: Option<String>,
    /// `x-tongban-catalog-code`: the item the node routed and authorised.
    pub catalog_code: Option<String>,
    pub origin_city: String,
    /// `x-tongban-principal`: the person behind the call (an official, a citizen as a
    /// pseudonym, a system account), as the node vouches for them.
    pub principal: VouchedPrincipal,
}

impl Vouched {
    pub fn from_metadata(md: &MetadataMap) -> Result<Vouched, CrossCityError> {
        let text = |name: &str| {
            md.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let principal = text(PRINCIPAL).ok_or(CrossCityError::NotThroughNode)?;
        let principal =
            VouchedPrincipal::parse(&principal).map_err(CrossCityError::BadPrincipal)?;
        Ok(Vouched {
            principal,
            caller: text(CALLER).ok_or(CrossCityError::NotThroughNode)?,
            subject: text(SUBJECT).map(|s| s.to_ascii_uppercase()),
            catalog_code: text(CATALOG_CODE),
            origin_city: text(ORIGIN_CITY).unwrap_or_default(),
        })
    }
}

/// A submission that passed every check.
#[derive(Debug)]
pub struct Submission<'a> {
    pub item: &'a Item,
    /// Upper-cased, validated (GB 11643).
    pub applicant_id: String,
    /// The fields as they are stored: identity numbers masked.
    pub fields: BTreeMap<String, String>,
    pub materials: Vec<MaterialRef>,
}

pub use tongban_gateway::subject::mask as mask_id;

/// Checks a submission to organisation `org` of `city`.
pub fn check<'a>(
    catalog: &'a Catalog,
    city: &str,
    org: &str,
    req: SubmitRequest,
    vouched: &Vouched,
) -> Result<Submission<'a>, CrossCityError> {
    let code = req.catalog_code.trim();
    if code.is_empty() {
        return Err(CrossCityError::Invalid(vec![FieldViolation::new(
            "catalog_code",
            "catalog_code is required (e.g. JQ-08)",
        )]));
    }
    let item = catalog
        .item(code)
        .ok_or_else(|| CrossCityError::UnknownItem(code.to_string()))?;
    if item.provider_in(city) != Some(org) {
        return Err(CrossCityError::OtherOrganisation {
            code: code.to_string(),
            city: city.to_string(),
            org: org.to_string(),
            provider: item
                .provider_in(city)
                .unwrap_or("no organisation")
                .to_string(),
        });
    }
    match &vouched.catalog_code {
        Some(authorised) if authorised != code => {
            return Err(CrossCityError::CodeMismatch {
                authorised: authorised.clone(),
                requested: code.to_string(),
            });
        }
        // The node checks a consent against the item named in the metadata: an item with
        // personal data that the node did not see is never taken in.
        None if item.personal_data => {
            return Err(CrossCityError::ItemNotNamed(code.to_string()));
        }
        _ => {}
    }
    let mut bad = Vec::new();
    let applicant_id = req.applicant_id.trim().to_ascii_uppercase();
    if applicant_id.is_empty() {
        bad.push(FieldViolation::new(
            "applicant_id",
            "applicant_id is required",
        ));
    } else if let Err(m) = FieldType::ResidentId.check(&applicant_id) {
        bad.push(FieldViolation::new(
            "applicant_id",
            format!("applicant_id {m}"),
        ));
    }
    // Checked, stored and signed in Unicode NFC (composed): one text, one value.
    let fields: BTreeMap<String, String> = req
        .fields
        .into_iter()
        .map(|(k, v)| (k, tongban_catalog::normalise(v.trim())))
        .collect();
    for v in item.validate(&fields) {
        bad.push(FieldViolation::new(format!("fields.{}", v.field), v.reason));
    }
    for (i, m) in req.materials.iter().enumerate() {
        if !item.materials.contains(&m.kind) {
            let expected = if item.materials.is_empty() {
                "none are needed".to_string()
            } else {
                format!("expected one of: {}", item.materials.join(", "))
            };
            bad.push(FieldViolation::new(
                format!("materials[{i}].kind"),
                format!("`{}` is not a material of {code} ({expected})", m.kind),
            ));
        }
        if m.uri.trim().is_empty() || m.uri.len() > 2048 {
            bad.push(FieldViolation::new(
                format!("materials[{i}].uri"),
                "uri is required (at most 2048 characters)",
            ));
        } else if let Some(why) = tongban_catalog::unclean(&m.uri, false) {
            bad.push(FieldViolation::new(
                format!("materials[{i}].uri"),
                format!("uri {why}"),
            ));
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bad.push(FieldViolation::new(
                format!("materials[{i}].sha256"),
                "sha256 must be 64 hex characters",
            ));
        }
    }
    if !bad.is_empty() {
        return Err(CrossCityError::Invalid(bad));
    }
    match &vouched.subject {
        Some(s) if *s != applicant_id => return Err(CrossCityError::SubjectMismatch),
        None if item.personal_data => {
            return Err(CrossCityError::SubjectRequired(code.to_string()))
        }
        _ => {}
    }
    let fields = fields
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let is_id = item
                .fields
                .iter()
                .any(|f| f.name == k && matches!(f.kind, FieldType::ResidentId));
            let v = if is_id { mask_id(&v) } else { v };
            (k, v)
        })
        .collect();
    Ok(Submission {
        item,
        applicant_id,
        fields,
        materials: req.materials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_little() {
        assert_eq!(mask_id("37010219850312002X"), "370***********002X");
    }
}
