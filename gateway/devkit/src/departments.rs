//! The cross-city departments of a local federation: one `tongban.crosscity.v2` provider per
//! organisation of each city (ten per city for the Jinan–Qingdao catalog), each with its own
//! data directory and signing key, registered with its city's node for the catalog items the
//! catalog assigns to it. This is how a city deploys them: one process per department, so
//! that each keeps its own store, key and registration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tongban_crosscity::{Department, DepartmentConfig};
use tongban_gateway::trust::{NodeIdentity, TrustBundle};
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};

use crate::local::{LocalError, LocalFederation, Served};

/// Full name of the departments' service.
pub const CROSSCITY_V2: &str = "tongban.crosscity.v2.CrossCityService";

/// One department's provider on loopback.
pub struct RunningDepartment {
    pub city: String,
    pub org: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub codes: Vec<String>,
    pub personal_data: bool,
    served: Served,
}

impl RunningDepartment {
    /// Starts the department `org` of `city` on a fresh loopback port, with its data under
    /// the federation's root.
    pub async fn start(
        fed: &LocalFederation,
        city: &str,
        org: &str,
        step: Duration,
    ) -> Result<RunningDepartment, LocalError> {
        let files = fed
            .certs
            .city(city)
            .ok_or_else(|| LocalError::NoCity(city.to_string()))?;
        let (cert, key) = files
            .orgs
            .get(org)
            .ok_or_else(|| LocalError::Other(format!("no signing key for {city}/{org}")))?;
        let other = |e: &dyn std::fmt::Display| LocalError::Other(e.to_string());
        let bundle = TrustBundle::load(&fed.certs.trust_bundle).map_err(|e| other(&e))?;
        let signer =
            NodeIdentity::load_org(city, org, cert, key, &bundle).map_err(|e| other(&e))?;
        let catalog = tongban_catalog::Catalog::embedded().map_err(|e| other(&e))?;
        let data_dir = fed.root.join(city).join("departments").join(org);
        let dept = Department::open(DepartmentConfig {
            city: city.to_string(),
            org: org.to_string(),
            data_dir: data_dir.clone(),
            catalog: Arc::new(catalog),
            signer,
            step,
        })
        .await
        .map_err(|e| other(&e))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (codes, personal_data) = (dept.codes(), dept.personal_data());
        let served = Served::spawn("department", |rx| {
            dept.serve(listener, async {
                let _ = rx.await;
            })
        });
        Ok(RunningDepartment {
            city: city.to_string(),
            org: org.to_string(),
            addr,
            data_dir,
            codes,
            personal_data,
            served,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

/// The departments of a local federation.
#[derive(Default)]
pub struct Departments {
    pub running: Vec<RunningDepartment>,
    step: Duration,
}

impl Departments {
    /// Starts every department of every city of `fed` the catalog names and registers each
    /// with its node; waits until every node holds every peer's departments.
    pub async fn start(fed: &LocalFederation, step: Duration) -> Result<Departments, LocalError> {
        let catalog =
            tongban_catalog::Catalog::embedded().map_err(|e| LocalError::Other(e.to_string()))?;
        let cities: Vec<String> = fed.cities.iter().map(|c| c.city.clone()).collect();
        let mut out = Departments {
            running: Vec::new(),
            step,
        };
        for city in &cities {
            let mut orgs: Vec<&str> = catalog
                .items()
                .iter()
                .filter_map(|i| i.provider_in(city))
                .collect();
            orgs.sort_unstable();
            orgs.dedup();
            for org in orgs {
                let d = RunningDepartment::start(fed, city, org, step).await?;
                register(fed, &d).await?;
                out.running.push(d);
            }
        }
        let wait = Duration::from_secs(10);
        let expected = out.running.len() / cities.len().max(1);
        let ok = fed
            .wait_until_federated(wait, |_, c| {
                c.services
                    .iter()
                    .filter(|s| s.service == CROSSCITY_V2)
                    .count()
                    >= expected
            })
            .await;
        if !ok {
            return Err(LocalError::Other(format!(
                "the departments were not federated within {wait:?}"
            )));
        }
        Ok(out)
    }

    pub fn get(&self, city: &str, org: &str) -> Option<&RunningDepartment> {
        self.running.iter().find(|d| d.city == city && d.org == org)
    }

    /// Stops the department `org` of `city` and starts it again on the same data directory
    /// (a new port, registered again).
    pub async fn restart(
        &mut self,
        fed: &LocalFederation,
        city: &str,
        org: &str,
    ) -> Result<(), LocalError> {
        let i = self
            .running
            .iter()
            .position(|d| d.city == city && d.org == org)
            .ok_or_else(|| LocalError::Other(format!("no department {city}/{org}")))?;
        let old = self.running.remove(i);
        old.stop().await;
        let d = RunningDepartment::start(fed, city, org, self.step).await?;
        register(fed, &d).await?;
        self.running.push(d);
        Ok(())
    }

    pub async fn stop(self) {
        for d in self.running {
            d.stop().await;
        }
    }
}

/// Registers a department with its city's node, as that organisation.
pub async fn register(fed: &LocalFederation, d: &RunningDepartment) -> Result<u64, LocalError> {
    let mut client = fed.registry(&d.city, &d.org).await?;
    let resp = client
        .register_service(RegisterServiceRequest {
            registration: Some(ServiceRegistration {
                organisation: d.org.clone(),
                service: CROSSCITY_V2.to_string(),
                endpoints: vec![d.url()],
                catalog_codes: d.codes.clone(),
                personal_data: d.personal_data,
                description: format!("cross-city services of {}/{}", d.city, d.org),
            }),
        })
        .await?;
    Ok(resp.into_inner().catalog_version)
}
