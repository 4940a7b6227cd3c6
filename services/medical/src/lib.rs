//! Mutual recognition of medical examination and laboratory results (检查检验结果互认): the
//! registry a city runs behind its node (`tongban provider medical --city C --org O …`).
//!
//! - [`rules`]: the recognised items, validity periods and accreditations, as versioned data
//!   (`deploy/medical/`), and the verdict on one result with every reason it failed;
//! - [`fhir`]: a report as FHIR R4 JSON; [`fhir_import`]: FHIR R4 resources into reports;
//! - [`federated`]: a hospital's query across every city, merged, partial when one is down;
//! - [`store`]: reports (patients by keyed pseudonym only) and decisions in sled, attachments
//!   in files, written as they arrive;
//! - [`transfer`]: large attachments on the client side, streamed with their SHA-256;
//! - [`service`]: the services, `ResultRegistry` and `Recognition`;
//! - [`error`]: every refusal, mapped to a gRPC status once.
//!
//! The registry says *eligible*, never *accepted*: the receiving physician decides, and the
//! decision is recorded in the physician's city for the regulators' statistics.

pub mod error;
pub mod federated;
pub mod fhir;
pub mod fhir_import;
pub mod rules;
pub mod service;
pub mod store;
pub mod transfer;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tongban_gateway::subject::Pseudonymizer;
use tongban_proto::medical::v1::recognition_server::RecognitionServer;
use tongban_proto::medical::v1::result_registry_server::ResultRegistryServer;
use tonic::transport::server::TcpIncoming;

pub use error::MedicalError;
pub use rules::Rules;
pub use service::Registry;

/// Full name of the registry's service (patient data: registered with personal data).
pub const SERVICE: &str = "tongban.medical.v1.ResultRegistry";
/// The catalog data item of reading a patient's results (`Query`, `GetReport`,
/// `ExportFhir`): calls name it in `x-tongban-catalog-code`, consents name it.
pub const READ_ITEM: &str = "MR-01";
/// The catalog data item of publishing a patient's results (`Publish`).
pub const PUBLISH_ITEM: &str = "MR-02";
/// Both, as the registry's registration lists them.
pub const ITEMS: [&str; 2] = [READ_ITEM, PUBLISH_ITEM];
/// Full name of the decisions and statistics service (no patient data).
pub const RECOGNITION: &str = "tongban.medical.v1.Recognition";

impl Registry {
    /// Opens the registry of `city` under `data_dir` with `rules`.
    pub async fn open(
        city: &str,
        data_dir: PathBuf,
        rules: Rules,
    ) -> Result<Registry, MedicalError> {
        std::fs::create_dir_all(&data_dir).map_err(|e| MedicalError::Store(e.to_string()))?;
        let pseudonyms =
            Pseudonymizer::open(&data_dir).map_err(|e| MedicalError::Store(e.to_string()))?;
        Ok(Registry {
            city: city.to_string(),
            rules: Arc::new(rules),
            store: store::Store::open(&data_dir).await?,
            pseudonyms: Arc::new(pseudonyms),
            max_attachment_bytes: service::DEFAULT_MAX_ATTACHMENT_BYTES,
        })
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tongban_proto::h2::server()
            .layer(tower::util::MapResponseLayer::new(
                tongban_gateway::error::Undecodable::answer,
            ))
            .add_service(RecognitionServer::new(self.clone()))
            .add_service(ResultRegistryServer::new(self).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}
