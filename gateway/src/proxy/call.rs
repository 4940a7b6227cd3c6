//! What a call asks for, read from its path and metadata only — never its payload: the
//! service and method, the deadline, the target city and organisation ([`Call`]), and why and
//! about whom it is made ([`Intent`]).

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::HeaderMap;
use tokio::time::Instant;
use tongban_proto::metadata::{self, CATALOG_CODE, PURPOSE, SUBJECT, TARGET_CITY, TARGET_ORG};

use super::ProxyError;
use crate::config::{validate_org_id, Limits};
use crate::grpc::{parse_timeout, REQUEST_ID};
use crate::subject::Pseudonymizer;

/// What a call asks for.
#[derive(Debug)]
pub(super) struct Call {
    pub service: String,
    pub method: String,
    pub path: PathAndQuery,
    pub request_id: String,
    pub started: Instant,
    pub deadline: Instant,
    pub target_city: Option<String>,
    pub target_org: Option<String>,
    /// The catalog item the call is about (`x-tongban-catalog-code`): it routes the call to
    /// the organisation registered for it and decides whether consent is needed.
    pub catalog_code: Option<String>,
}

impl Call {
    pub fn parse(parts: &Parts, limits: &Limits, request_id: String) -> Result<Call, ProxyError> {
        let ct = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/grpc") {
            return Err(ProxyError::bad(
                "content-type",
                format!("content-type `{ct}` is not gRPC (application/grpc)"),
            ));
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .ok_or_else(|| ProxyError::bad(":path", "request has no path"))?;
        let (service, method) = path
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            .ok_or_else(|| {
                ProxyError::bad(
                    ":path",
                    format!("path `{}` is not /package.Service/Method", path.path()),
                )
            })?;
        crate::registry::validate_service_name(service).map_err(|m| ProxyError::bad(":path", m))?;
        let timeout = match parts.headers.get("grpc-timeout") {
            None => limits.default_timeout,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(parse_timeout)
                .ok_or_else(|| {
                    ProxyError::bad("grpc-timeout", format!("grpc-timeout `{v:?}` is malformed"))
                })?
                .min(limits.max_timeout),
        };
        let started = Instant::now();
        Ok(Call {
            service: service.to_string(),
            method: method.to_string(),
            request_id,
            started,
            deadline: started + timeout,
            target_city: header_str(&parts.headers, TARGET_CITY)?,
            target_org: header_str(&parts.headers, TARGET_ORG)?,
            catalog_code: catalog_code_of(&parts.headers)?,
            path,
        })
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A metadata value, trimmed and lower-cased; absent or empty is `None`.
fn header_str(h: &HeaderMap, name: &'static str) -> Result<Option<String>, ProxyError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .map(Some)
            .ok_or_else(|| ProxyError::bad(name, format!("{name} is empty or not ascii"))),
    }
}

/// `x-tongban-catalog-code`, checked for its form (whether the item exists is the route's
/// question).
fn catalog_code_of(h: &HeaderMap) -> Result<Option<String>, ProxyError> {
    match h.get(CATALOG_CODE).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(c)) => {
            metadata::check_catalog_code(c).map_err(|m| ProxyError::bad(CATALOG_CODE, m))?;
            Ok(Some(c.to_string()))
        }
        Some(Err(_)) => Err(ProxyError::bad(
            CATALOG_CODE,
            format!("{CATALOG_CODE} is not ascii"),
        )),
    }
}

/// The caller's request id, or a new one. A caller-supplied id must be 1 to 64 characters of
/// `[A-Za-z0-9._-]`, since it keys the audit records of both cities; a bad one is refused
/// (under a fresh id, so that the refusal is audited and traceable).
pub(super) fn request_id_of(h: &HeaderMap) -> (String, Option<ProxyError>) {
    match h.get(REQUEST_ID) {
        None => (tongban_telemetry::trace::unique_id(), None),
        Some(v) => match v.to_str() {
            Ok(s) if metadata::is_request_id(v.as_bytes()) => (s.to_string(), None),
            _ => (
                tongban_telemetry::trace::unique_id(),
                Some(ProxyError::bad(
                    REQUEST_ID,
                    format!("{REQUEST_ID} must be 1 to 64 characters of letters, digits, '.', '_' and '-'"),
                )),
            ),
        },
    }
}

/// Why a call is made and about whom, from its metadata.
#[derive(Debug)]
pub(super) struct Intent {
    pub purpose: String,
    pub catalog_code: Option<String>,
    /// Pseudonym of `x-tongban-subject` (the clear id is never kept).
    pub subject: Option<String>,
    /// The caller is that subject, signed in as a citizen: a citizen's own data needs no
    /// consent (set by the home node from the token, by the providing node from the
    /// assertion).
    pub own: bool,
}

impl Intent {
    /// `vouched_purpose`: at the providing node, the purpose from the caller assertion,
    /// which overrides the metadata.
    pub fn parse(
        h: &HeaderMap,
        call: &Call,
        pseudonyms: &Pseudonymizer,
        vouched_purpose: Option<&str>,
    ) -> Result<Intent, ProxyError> {
        let purpose = match vouched_purpose {
            Some(p) => p.to_string(),
            None => header_str(h, PURPOSE)?.ok_or_else(|| {
                ProxyError::bad(
                    PURPOSE,
                    format!("{PURPOSE} is required (e.g. case-handling)"),
                )
            })?,
        };
        validate_org_id(&purpose).map_err(|_| {
            ProxyError::bad(
                PURPOSE,
                format!("{PURPOSE} must be lowercase ascii letters, digits and '-'"),
            )
        })?;
        let subject = match h.get(SUBJECT).map(|v| v.to_str()) {
            None => None,
            Some(Ok(id)) => {
                metadata::check_resident_id(id).map_err(|m| ProxyError::bad(SUBJECT, m))?;
                Some(pseudonyms.pseudonym(id))
            }
            Some(Err(_)) => {
                return Err(ProxyError::bad(SUBJECT, format!("{SUBJECT} is not ascii")))
            }
        };
        Ok(Intent {
            purpose,
            catalog_code: call.catalog_code.clone(),
            subject,
            own: false,
        })
    }
}
