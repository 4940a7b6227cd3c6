//! "One thing" bundles (高效办成一件事): one form, one consent and one status over several
//! catalog items, departments and cities (`tongban provider bundle --city C --org O …`).
//!
//! The service runs behind the citizen's home node like a department and reaches the
//! departments through that node, as its own organisation:
//!
//! - [`plan`]: what a submission must satisfy before anything is sent (every item's rules,
//!   materials, one consent naming exactly the items);
//! - [`engine`]: the durable orchestration (dependency order, retries within an item's
//!   deadline, partial outcomes with what the citizen must do, withdrawal, resume after a
//!   crash without submitting an item twice);
//! - [`downstream`]: the departments' service through the node;
//! - [`store`]: bundles in sled, what is needed in clear sealed;
//! - [`error`]: every refusal, mapped to a gRPC status once.

pub mod downstream;
pub mod engine;
pub mod error;
pub mod plan;
pub mod service;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tongban_catalog::Catalog;
use tongban_gateway::subject::Pseudonymizer;
use tongban_gateway::trust::TrustBundle;
use tongban_proto::bundle::v1::bundle_service_server::BundleServiceServer;
use tonic::transport::server::TcpIncoming;

pub use engine::Retry;
pub use error::BundleError;
pub use service::BundleService;

/// Full name of the service (what it registers with its node).
pub const SERVICE: &str = "tongban.bundle.v1.BundleService";

/// What the bundle service of a city needs.
pub struct BundleConfig {
    pub city: String,
    /// Its organisation (the consent's grantee is `city/org`).
    pub org: String,
    pub data_dir: PathBuf,
    pub catalog: Arc<Catalog>,
    pub trust: Arc<TrustBundle>,
    /// The public key of the city's node (it signs the consents).
    pub home_node_key: Vec<u8>,
    /// The node's caller address, e.g. `http://127.0.0.1:7000`.
    pub node: String,
    /// The organisation's caller JWT at that node.
    pub token: String,
    pub retry: Retry,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the catalog {0} has no bundle")]
    NoBundles(String),
    #[error("cannot open the subject key: {0}")]
    SubjectKey(String),
    #[error("{0}")]
    Node(String),
    #[error(transparent)]
    Store(#[from] BundleError),
}

impl BundleService {
    /// Opens the store and resumes every bundle that is not final.
    pub async fn open(config: BundleConfig) -> Result<BundleService, OpenError> {
        if config.catalog.bundles.is_empty() {
            return Err(OpenError::NoBundles(config.catalog.version.clone()));
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| OpenError::SubjectKey(e.to_string()))?;
        let pseudonyms = Pseudonymizer::open(&config.data_dir)
            .map_err(|e| OpenError::SubjectKey(e.to_string()))?;
        let store = store::Store::open(&config.data_dir).await?;
        let departments =
            downstream::Departments::new(&config.node, config.token).map_err(OpenError::Node)?;
        let engine = engine::Engine::new(
            Arc::clone(&config.catalog),
            store,
            departments,
            config.trust,
            config.retry,
        );
        let open = engine.store.open_bundles()?;
        if !open.is_empty() {
            tracing::info!(count = open.len(), "resuming unfinished bundles");
        }
        for r in open {
            engine.drive(r.id);
        }
        Ok(BundleService {
            engine,
            pseudonyms: Arc::new(pseudonyms),
            consents: Arc::new(plan::ConsentCheck {
                grantee: format!("{}/{}", config.city, config.org),
                home_city: config.city,
                home_node_key: Arc::new(config.home_node_key),
                cache: tongban_gateway::consent::VerifiedConsents::new(1024),
            }),
        })
    }

    /// Serves on `listener` until `shutdown` resolves; then stops the orchestration (it
    /// resumes from the store at the next start).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        use tongban_proto::h2;
        let engine = Arc::clone(&self.engine);
        let served = h2::server()
            .layer(tower::util::MapResponseLayer::new(
                tongban_gateway::error::Undecodable::answer,
            ))
            .add_service(BundleServiceServer::new(self))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await;
        engine.stop();
        served
    }
}
