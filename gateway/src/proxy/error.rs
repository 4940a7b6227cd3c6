//! Why a call was refused or failed; its status (with `google.rpc` details) comes from
//! [`ApiError`], the one mapping of the node.

use std::time::Duration;

use tonic::{Code, Status};

use crate::consent::ConsentError;
use crate::error::{ApiError, FieldViolation};
use crate::ratelimit::RateLimited;
use tongban_proto::metadata::{TARGET_CITY, TARGET_ORG};

/// Why a call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A malformed path or metadata value: `field` is the metadata key (or `:path`).
    #[error("{message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("unknown city `{city}`: this federation knows {known}")]
    UnknownCity { city: String, known: String },
    #[error("service `{service}` is not offered by city `{city}`")]
    UnknownService { service: String, city: String },
    #[error("catalog item `{code}` is not in the federation catalog")]
    UnknownItem { code: String },
    #[error("catalog item `{code}` is not offered by `{city}` (no organisation of {city} has registered it)")]
    ItemNotOffered { code: String, city: String },
    #[error("catalog item `{code}` is not offered by any city of the federation")]
    ItemNotOfferedAnywhere { code: String },
    #[error("service `{service}` is not offered by any city of the federation")]
    UnknownServiceAnywhere { service: String },
    #[error("service `{service}` is offered by {cities}: set x-tongban-target-city")]
    AmbiguousCity { service: String, cities: String },
    #[error("service `{service}` is offered by organisations {orgs} of `{city}`: set x-tongban-target-org")]
    AmbiguousOrg {
        service: String,
        city: String,
        orgs: String,
    },
    #[error("this node serves only city `{own}`, not `{target}`: calls are not relayed through a third city")]
    NotRelayed { own: String, target: String },
    /// The caller's token (home node).
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The caller assertion (providing node).
    #[error("{0}")]
    Unauthenticated(String),
    /// A citizen's token used about someone else.
    #[error("a citizen token acts only about the citizen themselves, and x-tongban-subject names someone else (acting for another person needs an organisation's token and that person's consent)")]
    NotOwnSubject,
    /// Denied by this node's policy (the message names the rule).
    #[error("{0}")]
    PermissionDenied(String),
    /// The consent check of the providing node (`city`); a missing subject is the caller's
    /// malformed request, not a decision of that node.
    #[error("{}", match source {
        ConsentError::NoSubject(_) => source.to_string(),
        _ => format!("{city}: {source}"),
    })]
    Consent { city: String, source: ConsentError },
    #[error("{0}")]
    RateLimited(#[from] RateLimited),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Deadline(String),
    /// The upstream answered with an HTTP status other than 200.
    #[error("{upstream} answered http {status}")]
    UpstreamHttp {
        upstream: String,
        status: http::StatusCode,
    },
    /// A status from upstream (or from a body guard), passed on as it is.
    #[error("{}", .0.message())]
    Passthrough(Status),
}

impl ProxyError {
    pub fn bad(field: &'static str, message: impl Into<String>) -> Self {
        ProxyError::BadRequest {
            field,
            message: message.into(),
        }
    }

    /// The status of the refusal (an upstream's is passed on untouched).
    pub fn status(&self) -> Status {
        match self {
            ProxyError::Passthrough(s) => s.clone(),
            other => ApiError::status(other),
        }
    }
}

impl ApiError for ProxyError {
    fn code(&self) -> Code {
        match self {
            ProxyError::BadRequest { .. }
            | ProxyError::AmbiguousCity { .. }
            | ProxyError::AmbiguousOrg { .. } => Code::InvalidArgument,
            ProxyError::UnknownCity { .. }
            | ProxyError::UnknownService { .. }
            | ProxyError::UnknownServiceAnywhere { .. }
            | ProxyError::UnknownItem { .. }
            | ProxyError::ItemNotOffered { .. }
            | ProxyError::ItemNotOfferedAnywhere { .. } => Code::NotFound,
            ProxyError::NotRelayed { .. }
            | ProxyError::PermissionDenied(_)
            | ProxyError::NotOwnSubject => Code::PermissionDenied,
            ProxyError::Consent { source, .. } => source.code(),
            ProxyError::Unauthenticated(_) => Code::Unauthenticated,
            ProxyError::Auth(e) => e.code(),
            ProxyError::RateLimited(_) | ProxyError::ResourceExhausted(_) => {
                Code::ResourceExhausted
            }
            ProxyError::Internal(_) => Code::Internal,
            ProxyError::Unavailable(_) => Code::Unavailable,
            ProxyError::Deadline(_) => Code::DeadlineExceeded,
            ProxyError::UpstreamHttp { status, .. } => crate::grpc::code_for_http_status(*status),
            ProxyError::Passthrough(s) => s.code(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest { .. } => "INVALID_METADATA",
            ProxyError::UnknownCity { .. } => "UNKNOWN_CITY",
            ProxyError::UnknownService { .. } | ProxyError::UnknownServiceAnywhere { .. } => {
                "SERVICE_NOT_OFFERED"
            }
            ProxyError::UnknownItem { .. } => "CATALOG_ITEM_UNKNOWN",
            ProxyError::ItemNotOffered { .. } | ProxyError::ItemNotOfferedAnywhere { .. } => {
                "CATALOG_ITEM_NOT_OFFERED"
            }
            ProxyError::AmbiguousCity { .. } => "TARGET_CITY_REQUIRED",
            ProxyError::AmbiguousOrg { .. } => "TARGET_ORG_REQUIRED",
            ProxyError::NotRelayed { .. } => "NOT_RELAYED",
            ProxyError::Unauthenticated(_) => "ASSERTION_INVALID",
            ProxyError::Auth(e) => e.reason(),
            ProxyError::PermissionDenied(_) => "DENIED_BY_POLICY",
            ProxyError::NotOwnSubject => "NOT_OWN_SUBJECT",
            ProxyError::Consent { source, .. } => source.reason(),
            ProxyError::RateLimited(_) => "RATE_LIMITED",
            ProxyError::ResourceExhausted(_) => "LIMIT_EXCEEDED",
            ProxyError::Internal(_) => "INTERNAL",
            ProxyError::Unavailable(_) => "UNAVAILABLE",
            ProxyError::Deadline(_) => "DEADLINE_EXCEEDED",
            ProxyError::UpstreamHttp { .. } => "UPSTREAM_HTTP",
            ProxyError::Passthrough(_) => "UPSTREAM",
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ProxyError::BadRequest { field, message } => {
                vec![FieldViolation::new(*field, message.clone())]
            }
            ProxyError::AmbiguousCity { .. } => {
                vec![FieldViolation::new(TARGET_CITY, self.to_string())]
            }
            ProxyError::AmbiguousOrg { .. } => {
                vec![FieldViolation::new(TARGET_ORG, self.to_string())]
            }
            ProxyError::Consent { source, .. } => source.violations(),
            ProxyError::NotOwnSubject => {
                vec![FieldViolation::new(
                    tongban_proto::metadata::SUBJECT,
                    self.to_string(),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::RateLimited(r) => Some(r.retry_after),
            _ => None,
        }
    }
}
