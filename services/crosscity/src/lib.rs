//! The Jinan–Qingdao cross-city services (跨市通办): the provider a department runs behind
//! its city's node (`tongban provider crosscity --city C --org O …`).
//!
//! One provider serves one organisation of one city, and only the catalog items the
//! federation catalog assigns to it there: each department has its own registration, its own
//! store and its own signing key, as departments do. It implements
//! `tongban.crosscity.v2.CrossCityService`:
//!
//! - [`rules`]: what a submission must satisfy (the catalog item's fields, its materials,
//!   and what the node vouched for);
//! - [`store`]: applications in sled, flushed before they are acknowledged;
//! - [`office`]: the back office that moves applications received → accepted or rejected
//!   → processing → completed, and signs the result;
//! - [`ecert`]: the signed result document, verifiable anywhere with the trust bundle;
//! - [`error`]: every refusal, mapped to a gRPC status once.

pub mod ecert;
pub mod error;
pub mod office;
pub mod rules;
pub mod service;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tongban_catalog::Catalog;
use tongban_gateway::subject::Pseudonymizer;
use tongban_gateway::trust::NodeIdentity;
use tongban_proto::crosscity::v2::cross_city_service_server::CrossCityServiceServer;
use tonic::transport::server::TcpIncoming;

pub use error::CrossCityError;
pub use service::Department;

/// What a department's provider needs.
pub struct DepartmentConfig {
    pub city: String,
    pub org: String,
    pub data_dir: PathBuf,
    pub catalog: Arc<Catalog>,
    /// The organisation's signing certificate and key (they sign its results).
    pub signer: NodeIdentity,
    /// How long the reference back office takes for each step of an application (a real
    /// department takes days; the demo and tests take milliseconds).
    pub step: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("organisation `{org}` provides no catalog item in `{city}` (catalog {federation} {version})")]
    NoItems {
        city: String,
        org: String,
        federation: String,
        version: String,
    },
    #[error("cannot open the subject key: {0}")]
    SubjectKey(String),
    #[error(transparent)]
    Store(#[from] CrossCityError),
}

impl Department {
    /// Opens the department's store (resuming unfinished applications) and checks that the
    /// catalog gives it something to serve.
    pub async fn open(config: DepartmentConfig) -> Result<Department, OpenError> {
        if config
            .catalog
            .items_of(&config.city, &config.org)
            .next()
            .is_none()
        {
            return Err(OpenError::NoItems {
                city: config.city,
                org: config.org,
                federation: config.catalog.federation.clone(),
                version: config.catalog.version.clone(),
            });
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| OpenError::SubjectKey(e.to_string()))?;
        let pseudonyms = Pseudonymizer::open(&config.data_dir)
            .map_err(|e| OpenError::SubjectKey(e.to_string()))?;
        let store = store::Store::open(&config.data_dir).await?;
        let office = office::Office::new(config, store.clone());
        let dept = Department::new(office, pseudonyms);
        dept.resume()?;
        Ok(dept)
    }

    /// The catalog codes this department serves (what it registers with its node).
    pub fn codes(&self) -> Vec<String> {
        self.office().codes()
    }

    /// Whether any of its items handles personal data (its registration says so).
    pub fn personal_data(&self) -> bool {
        self.office().personal_data()
    }

    /// Serves on `listener` until `shutdown` resolves; then stops the back office, so that
    /// the store is released when the last in-flight call ends.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        use tongban_proto::h2;
        let office = self.office_handle();
        let served = h2::server()
            .layer(tower::util::MapResponseLayer::new(
                tongban_gateway::error::Undecodable::answer,
            ))
            .add_service(CrossCityServiceServer::new(self))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await;
        office.stop();
        served
    }
}
