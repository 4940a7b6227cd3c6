//! Why the bundle service refused or failed a call, mapped to a gRPC status (with
//! `google.rpc` details) in one place, through the node library's [`ApiError`].

use tongban_gateway::error::{ApiError, FieldViolation};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("calls must come through a tongban node (no x-tongban-caller)")]
    NotThroughNode,
    #[error("{0}")]
    BadPrincipal(String),
    #[error("bundle `{0}` is not in the federation catalog")]
    UnknownBundle(String),
    #[error("the bundle has {} invalid field(s): {}", .0.len(), names(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("x-tongban-subject is required: the citizen the bundle is for")]
    NoSubject,
    #[error("applicant_id is not the citizen the node authorised (x-tongban-subject)")]
    SubjectMismatch,
    #[error("the consent does not fit the bundle: {0}")]
    Consent(String),
    /// No such bundle, or one the caller may not see: answered alike.
    #[error("bundle `{0}` not found")]
    NotFound(String),
    #[error("bundle `{id}` is already {state}: it cannot be withdrawn")]
    Final { id: String, state: &'static str },
    #[error("idempotency key `{key}` was used for another bundle submission (bundle `{id}`): use a new key for a new submission")]
    KeyReused { key: String, id: String },
    #[error("bundle store failed: {0}")]
    Store(String),
}

fn names(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| f.field.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError for BundleError {
    fn code(&self) -> Code {
        match self {
            BundleError::NotThroughNode | BundleError::BadPrincipal(_) => Code::Unauthenticated,
            BundleError::Invalid(_) | BundleError::NoSubject => Code::InvalidArgument,
            BundleError::UnknownBundle(_) | BundleError::NotFound(_) => Code::NotFound,
            BundleError::SubjectMismatch | BundleError::Consent(_) => Code::PermissionDenied,
            BundleError::Final { .. } | BundleError::KeyReused { .. } => Code::FailedPrecondition,
            BundleError::Store(_) => {
                tracing::error!(error = %self, "bundle store failure");
                Code::Internal
            }
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            BundleError::NotThroughNode | BundleError::BadPrincipal(_) => "NOT_THROUGH_NODE",
            BundleError::UnknownBundle(_) => "BUNDLE_UNKNOWN",
            BundleError::Invalid(_) => "INVALID_BUNDLE",
            BundleError::NoSubject => "SUBJECT_REQUIRED",
            BundleError::SubjectMismatch => "SUBJECT_MISMATCH",
            BundleError::Consent(_) => "CONSENT_OUT_OF_SCOPE",
            BundleError::NotFound(_) => "BUNDLE_NOT_FOUND",
            BundleError::Final { .. } => "BUNDLE_FINAL",
            BundleError::KeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            BundleError::Store(_) => "BUNDLE_STORE",
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            BundleError::Invalid(v) => v.clone(),
            BundleError::NoSubject => vec![FieldViolation::new(
                tongban_proto::metadata::SUBJECT,
                self.to_string(),
            )],
            BundleError::Consent(m) => vec![FieldViolation::new("consent", m.clone())],
            _ => Vec::new(),
        }
    }
}

tongban_gateway::into_status!(BundleError);

impl From<sled::Error> for BundleError {
    fn from(e: sled::Error) -> Self {
        BundleError::Store(e.to_string())
    }
}

impl From<serde_json::Error> for BundleError {
    fn from(e: serde_json::Error) -> Self {
        BundleError::Store(format!("undecodable record: {e}"))
    }
}
