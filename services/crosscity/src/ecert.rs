//! Electronic certificates (电子证照): the signed result of a completed application.
//!
//! Format `tongban-ecert/1`, a JSON object:
//!
//! ```json
//! { "document": { "format": "tongban-ecert/1", "document_id": "qingdao-gjj-00000012",
//!                 "kind": "transfer-confirmation",
//!                 "item": { "code": "JQ-08", "name_zh": "…", "name_en": "…" },
//!                 "holder": { "masked_id": "370***********002X", "pseudonym": "…" },
//!                 "issuer": { "city": "qingdao", "organisation": "gjj", "organisation_name": "…" },
//!                 "issued_at": "2026-11-23T12:00:00Z", "valid_until": "2027-11-23T12:00:00Z",
//!                 "details": { "to_division": "370202", … } },
//!   "digest": "sha256:<hex of the canonical document>",
//!   "algorithm": "ed25519" | "ecdsa-p256-sha256",
//!   "signature": "<base64 of the signature over the canonical document>",
//!   "signer_chain": ["<base64 DER of the organisation's signing certificate>", …] }
//! ```
//!
//! The canonical document is its compact JSON with the keys in the order above (the order of
//! [`Document`]'s fields; `details` sorted). The signer certificate is the issuing
//! organisation's (`<org>.org.<city>.tongban`), issued by the issuing city's CA, so anyone
//! with the federation trust bundle verifies it: no call to the issuing city is needed.

use std::collections::BTreeMap;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tongban_gateway::trust::{self, NodeIdentity, NodeKeyType, TrustBundle};

pub const FORMAT: &str = "tongban-ecert/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub format: String,
    pub document_id: String,
    pub kind: String,
    pub item: ItemRef,
    pub holder: Holder,
    pub issuer: Issuer,
    pub issued_at: String,
    pub valid_until: String,
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRef {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    pub masked_id: String,
    pub pseudonym: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub city: String,
    pub organisation: String,
    pub organisation_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub document: Document,
    pub digest: String,
    pub algorithm: String,
    pub signature: String,
    pub signer_chain: Vec<String>,
}

/// Why a certificate does not verify. Each names what an inspector has to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("unknown city: `{0}` is not in the trust bundle")]
    UnknownCity(String),
    #[error("edited: the document no longer matches what was signed (digest {expected}, document hashes to {actual})")]
    Edited { expected: String, actual: String },
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("unknown issuer: {0}")]
    UnknownIssuer(String),
    #[error("wrong key usage: {0}")]
    WrongKeyUsage(String),
    #[error("expired: {0}")]
    Expired(String),
}

fn canonical(d: &Document) -> Result<Vec<u8>, VerifyError> {
    serde_json::to_vec(d).map_err(|e| VerifyError::Malformed(e.to_string()))
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Every text of a document, with where it is (for the refusal of an unclean one).
fn texts(d: &Document) -> Vec<(String, &str)> {
    let mut out = vec![
        ("document_id".to_string(), d.document_id.as_str()),
        ("kind".to_string(), d.kind.as_str()),
        ("item.name_zh".to_string(), d.item.name_zh.as_str()),
        ("item.name_en".to_string(), d.item.name_en.as_str()),
        ("holder.masked_id".to_string(), d.holder.masked_id.as_str()),
        (
            "issuer.organisation_name".to_string(),
            d.issuer.organisation_name.as_str(),
        ),
    ];
    for (k, v) in &d.details {
        out.push((format!("details.{k}"), k.as_str()));
        out.push((format!("details.{k}"), v.as_str()));
    }
    out
}

/// Why the organisation signing certificate of the document's issuer was refused, named as
/// such: an unknown issuer (a CA other than the city's in the trust bundle), a bad signature
/// in the chain, a certificate not valid when the document was issued, or one not made for
/// signing.
fn signer_refused(doc: &Document, e: trust::TrustError) -> VerifyError {
    let who = format!(
        "the organisation signing certificate of {}/{}",
        doc.issuer.city, doc.issuer.organisation
    );
    match e {
        trust::TrustError::OrgCertRefused { problem, .. } => match problem {
            trust::CertProblem::UnknownIssuer => VerifyError::UnknownIssuer(format!(
                "{who} does not chain to {}'s CA in the trust bundle",
                doc.issuer.city
            )),
            // A certificate that names the city's CA as its issuer but is not signed by the
            // CA's key was issued by someone else (a CA named like it): an unknown issuer.
            trust::CertProblem::BadSignature => VerifyError::UnknownIssuer(format!(
                "{who} names {}'s CA as its issuer, but is not signed by the key of the CA in the trust bundle",
                doc.issuer.city
            )),
            trust::CertProblem::Expired => VerifyError::Expired(format!(
                "{who} was not valid at issuance ({})",
                doc.issued_at
            )),
            trust::CertProblem::WrongKeyUsage => VerifyError::WrongKeyUsage(format!(
                "{who} is not a certificate for signing documents"
            )),
            other => VerifyError::BadSignature(format!("{who} is refused: {other}")),
        },
        other => VerifyError::BadSignature(format!("{who} is refused: {other}")),
    }
}

/// Every text of `doc` clean (no control character, no bidirectional override).
fn clean(doc: &Document) -> Result<(), VerifyError> {
    match texts(doc)
        .into_iter()
        .find_map(|(at, v)| tongban_catalog::unclean(v, false).map(|why| (at, why)))
    {
        Some((at, why)) => Err(VerifyError::Malformed(format!(
            "refusing to sign: {at} {why}"
        ))),
        None => Ok(()),
    }
}

/// Signs `doc` with an organisation's key; the result is the certificate's JSON bytes. A
/// document holding a control character or a bidirectional override anywhere is refused:
/// the form was checked when it was submitted, and is checked again before anything is
/// signed.
pub fn sign(doc: Document, signer: &NodeIdentity) -> Result<Vec<u8>, VerifyError> {
    clean(&doc)?;
    let bytes = canonical(&doc)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let signed = Signed {
        digest: digest_of(&bytes),
        algorithm: match signer.key_type() {
            NodeKeyType::Ed25519 => "ed25519",
            NodeKeyType::P256 => "ecdsa-p256-sha256",
        }
        .to_string(),
        signature: b64.encode(signer.sign(&bytes)),
        signer_chain: signer.chain.iter().map(|c| b64.encode(c)).collect(),
        document: doc,
    };
    serde_json::to_vec_pretty(&signed).map_err(|e| VerifyError::Malformed(e.to_string()))
}

/// Verifies a certificate with nothing but the trust bundle, as of `now`.
pub fn verify(
    json: &[u8],
    bundle: &TrustBundle,
    now: OffsetDateTime,
) -> Result<Document, VerifyError> {
    let signed: Signed =
        serde_json::from_slice(json).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let doc = &signed.document;
    if doc.format != FORMAT {
        return Err(VerifyError::Malformed(format!(
            "format `{}` is not {FORMAT}",
            doc.format
        )));
    }
    if !bundle.contains(&doc.issuer.city) {
        return Err(VerifyError::UnknownCity(doc.issuer.city.clone()));
    }
    let bytes = canonical(doc)?;
    let actual = digest_of(&bytes);
    if actual != signed.digest {
        return Err(VerifyError::Edited {
            expected: signed.digest.clone(),
            actual,
        });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let chain = signed
        .signer_chain
        .iter()
        .map(|c| b64.decode(c).map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VerifyError::Malformed(format!("signer_chain: {e}")))?;
    let issued = OffsetDateTime::parse(&doc.issued_at, &Rfc3339)
        .map_err(|e| VerifyError::Malformed(format!("issued_at: {e}")))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(issued.unix_timestamp()).unwrap_or(0),
    ));
    bundle
        .verify_org_cert(&doc.issuer.city, &doc.issuer.organisation, &chain, at)
        .map_err(|e| signer_refused(doc, e))?;
    let sig = b64
        .decode(&signed.signature)
        .map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;
    let signer = chain
        .first()
        .ok_or_else(|| VerifyError::Malformed("signer_chain is empty".into()))?;
    trust::verify_signature(signer, &bytes, &sig).map_err(|_| {
        VerifyError::BadSignature(format!(
            "the signature is not {}/{}'s signature of this document",
            doc.issuer.city, doc.issuer.organisation
        ))
    })?;
    let until = OffsetDateTime::parse(&doc.valid_until, &Rfc3339)
        .map_err(|e| VerifyError::Malformed(format!("valid_until: {e}")))?;
    if until < now {
        return Err(VerifyError::Expired(format!(
            "the document was valid until {}",
            doc.valid_until
        )));
    }
    Ok(signed.document)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn doc(details: &[(&str, &str)]) -> Document {
        Document {
            format: FORMAT.into(),
            document_id: "qingdao-hrss-1".into(),
            kind: "certificate".into(),
            item: ItemRef {
                code: "JQ-01".into(),
                name_zh: "社会保障卡申领".into(),
                name_en: "Social security card".into(),
            },
            holder: Holder {
                masked_id: "370***********002X".into(),
                pseudonym: "p".into(),
            },
            issuer: Issuer {
                city: "qingdao".into(),
                organisation: "hrss".into(),
                organisation_name: "人力资源和社会保障局".into(),
            },
            issued_at: "2026-12-04T00:00:00Z".into(),
            valid_until: "2036-12-04T00:00:00Z".into(),
            details: details
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn nothing_unclean_is_ever_signed() {
        assert!(clean(&doc(&[("applicant_name", "王秀英")])).is_ok());
        for (k, v) in [
            ("applicant_name", "王\u{0}秀英"),
            ("applicant_name", "王秀\u{1b}[2J英"),
            ("applicant_name", "王\u{202E}英秀"),
            ("name\u{7}", "x"),
        ] {
            let e = clean(&doc(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains("refusing to sign"), "{e}");
        }
    }
}
