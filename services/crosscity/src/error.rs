//! Why the provider refused or failed a call, mapped to a gRPC status (with `google.rpc`
//! details) in one place, through the node library's [`ApiError`].

use tongban_gateway::error::{ApiError, FieldViolation};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum CrossCityError {
    #[error("calls must come through a tongban node (no x-tongban-caller)")]
    NotThroughNode,
    #[error("the application has {} invalid field(s): {}", .0.len(), names(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("catalog item `{0}` is not in the federation catalog")]
    UnknownItem(String),
    #[error("catalog item `{code}` is provided in {city} by {provider}, not by {org}")]
    OtherOrganisation {
        code: String,
        city: String,
        org: String,
        provider: String,
    },
    #[error(
        "the node authorised catalog item `{authorised}`, but the application is for `{requested}`"
    )]
    CodeMismatch {
        authorised: String,
        requested: String,
    },
    #[error("applicant_id is not the citizen the node authorised (x-tongban-subject)")]
    SubjectMismatch,
    #[error("catalog item `{0}` handles personal data: the call must name its subject (x-tongban-subject), whose consent the node checks")]
    SubjectRequired(String),
    /// No such application, or one the caller may not see: the two are answered alike, so
    /// that a refusal never tells whether someone else's id exists.
    #[error("application `{0}` not found")]
    NotFound(String),
    #[error("{0}")]
    BadPrincipal(String),
    #[error("catalog item `{0}` handles personal data: the call must name it in x-tongban-catalog-code, the item the node checks the citizen's consent for")]
    ItemNotNamed(String),
    #[error("application `{id}` is already {state}: it cannot be withdrawn")]
    Final { id: String, state: &'static str },
    #[error("x-tongban-subject is required to list a citizen's applications")]
    NoSubject,
    #[error("idempotency key `{key}` was used for another submission (application `{id}`): use a new key for a new submission")]
    KeyReused { key: String, id: String },
    #[error("application store failed: {0}")]
    Store(String),
}

fn names(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| f.field.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError for CrossCityError {
    fn code(&self) -> Code {
        match self {
            CrossCityError::NotThroughNode | CrossCityError::BadPrincipal(_) => {
                Code::Unauthenticated
            }
            CrossCityError::Invalid(_) | CrossCityError::NoSubject => Code::InvalidArgument,
            CrossCityError::UnknownItem(_) | CrossCityError::NotFound(_) => Code::NotFound,
            CrossCityError::OtherOrganisation { .. }
            | CrossCityError::Final { .. }
            | CrossCityError::KeyReused { .. } => Code::FailedPrecondition,
            CrossCityError::CodeMismatch { .. }
            | CrossCityError::SubjectMismatch
            | CrossCityError::SubjectRequired(_)
            | CrossCityError::ItemNotNamed(_) => Code::PermissionDenied,
            CrossCityError::Store(_) => {
                tracing::error!(error = %self, "application store failure");
                Code::Internal
            }
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            CrossCityError::NotThroughNode => "NOT_THROUGH_NODE",
            CrossCityError::Invalid(_) => "INVALID_APPLICATION",
            CrossCityError::UnknownItem(_) => "CATALOG_ITEM_UNKNOWN",
            CrossCityError::OtherOrganisation { .. } => "ITEM_OF_ANOTHER_ORGANISATION",
            CrossCityError::CodeMismatch { .. } => "CATALOG_CODE_MISMATCH",
            CrossCityError::SubjectMismatch => "SUBJECT_MISMATCH",
            CrossCityError::SubjectRequired(_) => "SUBJECT_REQUIRED",
            CrossCityError::NotFound(_) => "APPLICATION_NOT_FOUND",
            CrossCityError::BadPrincipal(_) => "NOT_THROUGH_NODE",
            CrossCityError::ItemNotNamed(_) => "CATALOG_CODE_REQUIRED",
            CrossCityError::Final { .. } => "APPLICATION_FINAL",
            CrossCityError::NoSubject => "SUBJECT_REQUIRED",
            CrossCityError::KeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            CrossCityError::Store(_) => "APPLICATION_STORE",
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            CrossCityError::Invalid(v) => v.clone(),
            CrossCityError::NoSubject => vec![FieldViolation::new(
                tongban_proto::metadata::SUBJECT,
                self.to_string(),
            )],
            CrossCityError::ItemNotNamed(_) => vec![FieldViolation::new(
                tongban_proto::metadata::CATALOG_CODE,
                self.to_string(),
            )],
            _ => Vec::new(),
        }
    }
}

tongban_gateway::into_status!(CrossCityError);

impl From<sled::Error> for CrossCityError {
    fn from(e: sled::Error) -> Self {
        CrossCityError::Store(e.to_string())
    }
}

impl From<serde_json::Error> for CrossCityError {
    fn from(e: serde_json::Error) -> Self {
        CrossCityError::Store(format!("undecodable record: {e}"))
    }
}
