//! Why the registry refused or failed a call, mapped to a gRPC status once.

use tongban_gateway::error::{ApiError, FieldViolation};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum MedicalError {
    #[error("calls must come through a tongban node (no x-tongban-caller)")]
    NotThroughNode,
    #[error("the request has {} invalid field(s): {}", .0.len(), .0.iter().map(|v| v.field.as_str()).collect::<Vec<_>>().join(", "))]
    Invalid(Vec<FieldViolation>),
    #[error("x-tongban-subject (the patient) is required")]
    NoSubject,
    #[error("only systems of {0} publish to its registry")]
    NotLocal(String),
    #[error("report `{0}` not found")]
    NotFound(String),
    #[error("this call must name catalog item {0} in x-tongban-catalog-code: the item the node checks the patient's consent for")]
    ItemNotNamed(&'static str),
    #[error("report `{0}` of this institution was published for another patient: publish a correction under a new report id")]
    OtherPatientsReport(String),
    #[error("report.patient_id is not the patient the node authorised (x-tongban-subject)")]
    PatientMismatch,
    #[error("registry_id is required: the registry's id of the report, as Publish and Query return it (report_id is the institution's own and is not accepted)")]
    NoRegistryId,
    #[error("the attachment exceeds the registry's limit of {0} bytes")]
    AttachmentTooLarge(u64),
    #[error("result store failed: {0}")]
    Store(String),
}

impl ApiError for MedicalError {
    fn code(&self) -> Code {
        match self {
            MedicalError::NotThroughNode => Code::Unauthenticated,
            MedicalError::Invalid(_) | MedicalError::NoSubject => Code::InvalidArgument,
            MedicalError::NotLocal(_) | MedicalError::ItemNotNamed(_) => Code::PermissionDenied,
            MedicalError::NotFound(_) => Code::NotFound,
            MedicalError::OtherPatientsReport(_) => Code::FailedPrecondition,
            MedicalError::PatientMismatch => Code::PermissionDenied,
            MedicalError::NoRegistryId => Code::InvalidArgument,
            MedicalError::AttachmentTooLarge(_) => Code::ResourceExhausted,
            MedicalError::Store(_) => {
                tracing::error!(error = %self, "result store failure");
                Code::Internal
            }
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            MedicalError::NotThroughNode => "NOT_THROUGH_NODE",
            MedicalError::Invalid(_) => "INVALID_REQUEST",
            MedicalError::NoSubject => "SUBJECT_REQUIRED",
            MedicalError::NotLocal(_) => "NOT_LOCAL",
            MedicalError::NotFound(_) => "REPORT_NOT_FOUND",
            MedicalError::OtherPatientsReport(_) => "REPORT_OF_ANOTHER_PATIENT",
            MedicalError::PatientMismatch => "SUBJECT_MISMATCH",
            MedicalError::NoRegistryId => "INVALID_REQUEST",
            MedicalError::ItemNotNamed(_) => "CATALOG_CODE_REQUIRED",
            MedicalError::AttachmentTooLarge(_) => "ATTACHMENT_TOO_LARGE",
            MedicalError::Store(_) => "RESULT_STORE",
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            MedicalError::Invalid(v) => v.clone(),
            MedicalError::NoSubject => vec![FieldViolation::new(
                tongban_proto::metadata::SUBJECT,
                self.to_string(),
            )],
            MedicalError::NoRegistryId => {
                vec![FieldViolation::new("registry_id", self.to_string())]
            }
            MedicalError::AttachmentTooLarge(_) => {
                vec![FieldViolation::new("attachment", self.to_string())]
            }
            MedicalError::ItemNotNamed(_) => vec![FieldViolation::new(
                tongban_proto::metadata::CATALOG_CODE,
                self.to_string(),
            )],
            _ => Vec::new(),
        }
    }
}

tongban_gateway::into_status!(MedicalError);

impl From<sled::Error> for MedicalError {
    fn from(e: sled::Error) -> Self {
        MedicalError::Store(e.to_string())
    }
}

impl From<prost::DecodeError> for MedicalError {
    fn from(e: prost::DecodeError) -> Self {
        MedicalError::Store(format!("undecodable record: {e}"))
    }
}

impl From<serde_json::Error> for MedicalError {
    fn from(e: serde_json::Error) -> Self {
        MedicalError::Store(format!("undecodable record: {e}"))
    }
}
