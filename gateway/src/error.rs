//! One error vocabulary for every service of the node. Each service keeps its own
//! `thiserror` enum (quickwit's habit); each implements [`ApiError`], and [`ApiError::status`]
//! is the one place an error becomes a `tonic::Status` — the proxy's trailers included — with
//! `google.rpc` details: an `ErrorInfo` with a stable reason and [`DOMAIN`] on every refusal,
//! `BadRequest` field violations when a field is at fault, `RetryInfo` on rate limits.
//!
//! The one role check of the control-plane APIs is `auth::require`.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Tongban error.
pub const DOMAIN: &str = "tongban";

/// A field at fault: its name (a metadata key, or a message field path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// An error a node's API (or its proxy) answers with.
pub trait ApiError: std::fmt::Display {
    /// The gRPC status code.
    fn code(&self) -> Code;
    /// A stable, UPPER_SNAKE reason for `ErrorInfo` (clients branch on it, not on messages).
    fn reason(&self) -> &'static str;
    /// The fields at fault, if the error is about fields.
    fn violations(&self) -> Vec<FieldViolation> {
        Vec::new()
    }
    /// When the client may retry (rate limits).
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The status: code, message, and the `google.rpc` details.
    fn status(&self) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            self.reason(),
            DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        for v in self.violations() {
            details.add_bad_request_violation(v.field, v.description);
        }
        if let Some(after) = self.retry_after() {
            details.set_retry_info(Some(after));
        }
        Status::with_error_details(self.code(), self.to_string(), details)
    }
}

/// `impl From<E> for tonic::Status` through [`ApiError::status`], for each error type given,
/// so that services return `Result<_, Status>` and use `?` on their own errors.
#[macro_export]
macro_rules! into_status {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for tonic::Status {
            fn from(e: $t) -> tonic::Status {
                $crate::error::ApiError::status(&e)
            }
        })*
    };
}

/// The kind of a node's refusal, from its `ErrorInfo` reason, as the regulators' report and
/// the `tongban_refusals_total` metric group them: `consent`, `policy`, `unknown_item`,
/// `unavailable` or `other`.
pub fn refusal_kind(reason: &str) -> &'static str {
    match reason {
        r if r.starts_with("CONSENT_") || r == "SUBJECT_REQUIRED" => "consent",
        "DENIED_BY_POLICY" | "NOT_OWN_SUBJECT" => "policy",
        "CATALOG_ITEM_UNKNOWN"
        | "CATALOG_ITEM_NOT_OFFERED"
        | "SERVICE_NOT_OFFERED"
        | "UNKNOWN_CITY" => "unknown_item",
        "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "AUDIT_UNAVAILABLE" => "unavailable",
        _ => "other",
    }
}

/// A caller without the right to do something.
#[derive(Debug, thiserror::Error)]
#[error("{caller} may not {action} (needs {needs})")]
pub struct Forbidden {
    pub caller: String,
    pub action: String,
    pub needs: String,
}

impl ApiError for Forbidden {
    fn code(&self) -> Code {
        Code::PermissionDenied
    }
    fn reason(&self) -> &'static str {
        "NOT_ALLOWED"
    }
}

/// A request field that is missing or malformed, for the control-plane APIs.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadField {
    pub field: String,
    pub message: String,
}

impl BadField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        BadField {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ApiError for BadField {
    fn code(&self) -> Code {
        Code::InvalidArgument
    }
    fn reason(&self) -> &'static str {
        "INVALID_FIELD"
    }
    fn violations(&self) -> Vec<FieldViolation> {
        vec![FieldViolation::new(&self.field, &self.message)]
    }
}

crate::into_status!(Forbidden, BadField);

/// A request message that does not decode (a string field that is not UTF-8, a truncated
/// field): the caller's bad input, `INVALID_ARGUMENT` with a `BadRequest` naming the field,
/// not the `INTERNAL` tonic answers with (a server fault to the caller). `None` for any
/// other message.
#[derive(Debug, thiserror::Error)]
#[error("the request does not decode: {field}: {why}")]
pub struct Undecodable {
    pub field: String,
    pub why: String,
}

impl ApiError for Undecodable {
    fn code(&self) -> tonic::Code {
        tonic::Code::InvalidArgument
    }
    fn reason(&self) -> &'static str {
        "UNDECODABLE_REQUEST"
    }
    fn violations(&self) -> Vec<FieldViolation> {
        vec![FieldViolation::new(self.field.clone(), self.to_string())]
    }
}

impl Undecodable {
    const PREFIX: &'static str = "failed to decode Protobuf message: ";

    /// From prost's message (`failed to decode Protobuf message: SubmitRequest.fields:
    /// invalid string value: data is not UTF-8 encoded`): the field path (`fields`), and why.
    pub fn from_message(message: &str) -> Option<Undecodable> {
        let rest = message.strip_prefix(Self::PREFIX)?;
        let mut field = Vec::new();
        let mut parts = rest.split(": ").peekable();
        while let Some(p) = parts.peek() {
            match p.split_once('.') {
                Some((msg, name))
                    if !msg.is_empty()
                        && !name.is_empty()
                        && !p.contains(' ')
                        && msg.starts_with(|c: char| c.is_ascii_uppercase()) =>
                {
                    field.push(name.to_string());
                    parts.next();
                }
                _ => break,
            }
        }
        let why = parts.collect::<Vec<_>>().join(": ");
        // prost names the innermost field first.
        field.reverse();
        Some(Undecodable {
            field: if field.is_empty() {
                "message".into()
            } else {
                field.join(".")
            },
            why,
        })
    }

    /// A server's response layer (`tower::util::MapResponseLayer::new(Undecodable::answer)`):
    /// turns tonic's `INTERNAL` decode refusal into this error; every other response passes
    /// unchanged.
    pub fn answer(resp: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        let h = resp.headers();
        if h.get("grpc-status").map(|v| v.as_bytes()) != Some(b"13") {
            return resp;
        }
        let message = h
            .get("grpc-message")
            .map(|v| percent_encoding::percent_decode(v.as_bytes()).decode_utf8_lossy())
            .map(|m| m.into_owned())
            .unwrap_or_default();
        match Undecodable::from_message(&message) {
            Some(u) => {
                tracing::debug!(field = %u.field, "request does not decode");
                u.status().into_http()
            }
            None => resp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{require, Caller, Grant};

    fn caller(org: &str, roles: &[&str], person: &str) -> Caller {
        let citizen = roles.contains(&"citizen");
        Caller {
            city: "jinan".into(),
            org: org.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            kind: if citizen {
                crate::auth::PersonKind::Citizen
            } else {
                crate::auth::PersonKind::Official
            },
            person: person.into(),
            token_id: String::new(),
            exp: 0,
        }
    }

    #[test]
    fn an_undecodable_request_names_its_field() {
        let u = Undecodable::from_message(
            "failed to decode Protobuf message: SubmitRequest.fields: invalid string value: data is not UTF-8 encoded",
        )
        .unwrap();
        assert_eq!(u.field, "fields");
        assert_eq!(u.why, "invalid string value: data is not UTF-8 encoded");
        let nested = Undecodable::from_message(
            "failed to decode Protobuf message: MaterialRef.uri: SubmitRequest.materials: invalid string value: data is not UTF-8 encoded",
        )
        .unwrap();
        assert_eq!(nested.field, "materials.uri");
        assert_eq!(nested.status().code(), tonic::Code::InvalidArgument);
        assert!(Undecodable::from_message("store failed").is_none());
        // Another INTERNAL passes through untouched.
        let other = tonic::Status::internal("store failed").into_http::<tonic::body::Body>();
        let kept = Undecodable::answer(other);
        assert_eq!(kept.headers().get("grpc-status").unwrap(), "13");
    }

    #[test]
    fn grants_and_the_refusal_details() {
        let ops = caller("ops", &["audit-operator"], "x");
        assert!(require(&ops, "query", &[Grant::Role("audit-operator")]).is_ok());
        let hrss = caller("hrss", &[], "x");
        assert!(require(&hrss, "manage", &[Grant::Organisation("hrss")]).is_ok());
        let citizen = caller("portal", &["citizen"], "pseudonym-a");
        assert!(require(&citizen, "read", &[Grant::Citizen("pseudonym-a")]).is_ok());
        // Another citizen's pseudonym, or an official whose id happens to be the same text.
        assert!(require(&citizen, "read", &[Grant::Citizen("pseudonym-b")]).is_err());
        let official = caller("hrss", &[], "pseudonym-a");
        assert!(require(&official, "read", &[Grant::Citizen("pseudonym-a")]).is_err());
        let e = require(
            &hrss,
            "read the log",
            &[Grant::Role("audit-operator"), Grant::Citizen("1")],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("role audit-operator, or a citizen token"),
            "{e}"
        );
        let status = e.status();
        assert_eq!(status.code(), Code::PermissionDenied);
        let d = status.get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "NOT_ALLOWED");
        assert_eq!(d.error_info().unwrap().domain, DOMAIN);
        let bad = BadField::new("subject", "must be 18 characters").status();
        let details = bad.get_error_details();
        let v = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(
            (v.field.as_str(), bad.code()),
            ("subject", Code::InvalidArgument)
        );
    }
}
