//! The medical result registries of a local federation: one per city (run by its health
//! commission, `wjw`), registered with its node as two services — `ResultRegistry` (patient
//! data: every call needs the patient's consent) and `Recognition` (decisions and
//! statistics, no patient data).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tongban_medical::{Registry, Rules, ITEMS, RECOGNITION, SERVICE};
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};

use crate::local::{LocalError, LocalFederation, Served};

/// The organisation running each city's registry.
pub const REGISTRY_ORG: &str = "wjw";

pub struct RunningRegistry {
    pub city: String,
    pub addr: SocketAddr,
    served: Served,
}

impl RunningRegistry {
    pub async fn stop(self) {
        self.served.stop().await;
    }
}

/// The registries of a local federation.
pub struct Registries {
    pub running: Vec<RunningRegistry>,
}

impl Registries {
    /// Starts a registry per city of `fed` with `rules`, registers both its services, and
    /// waits until every node holds every peer's.
    pub async fn start(fed: &LocalFederation, rules: &Rules) -> Result<Registries, LocalError> {
        let mut running = Vec::new();
        for c in &fed.cities {
            let dir = fed.root.join(&c.city).join("medical");
            let registry = Registry::open(&c.city, dir, rules.clone())
                .await
                .map_err(|e| LocalError::Other(e.to_string()))?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let served = Served::spawn("registry", |rx| {
                registry.serve(listener, async {
                    let _ = rx.await;
                })
            });
            let mut client = fed.registry(&c.city, REGISTRY_ORG).await?;
            for (service, personal_data, codes) in
                [(SERVICE, true, &ITEMS[..]), (RECOGNITION, false, &[][..])]
            {
                client
                    .register_service(RegisterServiceRequest {
                        registration: Some(ServiceRegistration {
                            organisation: REGISTRY_ORG.into(),
                            service: service.into(),
                            endpoints: vec![format!("http://{addr}")],
                            catalog_codes: codes.iter().map(|c| c.to_string()).collect(),
                            personal_data,
                            description: format!("medical results of {}", c.city),
                        }),
                    })
                    .await?;
            }
            running.push(RunningRegistry {
                city: c.city.clone(),
                addr,
                served,
            });
        }
        let ok = fed
            .wait_until_federated(Duration::from_secs(10), |_, p| {
                p.services.iter().any(|s| s.service == SERVICE)
            })
            .await;
        if !ok {
            return Err(LocalError::Other(
                "the registries were not federated".into(),
            ));
        }
        Ok(Registries { running })
    }

    pub async fn stop(self) {
        for r in self.running {
            r.stop().await;
        }
    }
}
