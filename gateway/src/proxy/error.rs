//! Why a call was refused or failed, and the one mapping to a gRPC status.

use tonic::{Code, Status};

/// Why a call was refused or failed, mapped to a gRPC status in one place ([`Self::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown city `{city}`: this federation knows {known}")]
    UnknownCity { city: String, known: String },
    #[error("service `{service}` is not offered by city `{city}`")]
    UnknownService { service: String, city: String },
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
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Deadline(String),
    #[error("{}", .0.message())]
    Passthrough(Status),
}

impl ProxyError {
    /// The one mapping from proxy errors to gRPC status codes.
    pub fn status(&self) -> Status {
        let code = match self {
            ProxyError::BadRequest(_) | ProxyError::AmbiguousCity { .. } => Code::InvalidArgument,
            ProxyError::AmbiguousOrg { .. } => Code::InvalidArgument,
            ProxyError::UnknownCity { .. }
            | ProxyError::UnknownService { .. }
            | ProxyError::UnknownServiceAnywhere { .. } => Code::NotFound,
            ProxyError::NotRelayed { .. } | ProxyError::PermissionDenied(_) => {
                Code::PermissionDenied
            }
            ProxyError::Unauthenticated(_) => Code::Unauthenticated,
            ProxyError::ResourceExhausted(_) => Code::ResourceExhausted,
            ProxyError::Internal(_) => Code::Internal,
            ProxyError::Unavailable(_) => Code::Unavailable,
            ProxyError::Deadline(_) => Code::DeadlineExceeded,
            ProxyError::Passthrough(s) => return s.clone(),
        };
        Status::new(code, self.to_string())
    }
}

impl From<crate::ratelimit::RateLimited> for ProxyError {
    fn from(e: crate::ratelimit::RateLimited) -> Self {
        ProxyError::ResourceExhausted(e.to_string())
    }
}
