//! The bundle services of a local federation: one per city (`tongban.bundle.v1`, run by its
//! government service administration, `bundle`), registered with its node, reaching the
//! departments through that node with its own caller token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tongban_bundle::{BundleConfig, BundleService, Retry, SERVICE};
use tongban_gateway::trust::TrustBundle;
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};

use crate::local::{LocalError, LocalFederation, Served};

/// The organisation running each city's bundle service (the consent's grantee is
/// `<city>/bundle`).
pub const BUNDLE_ORG: &str = "bundle";

pub struct RunningBundle {
    pub city: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    served: Served,
}

impl RunningBundle {
    /// Starts `city`'s bundle service on a fresh loopback port, its data under the
    /// federation's root, and registers it with the node.
    pub async fn start(
        fed: &LocalFederation,
        city: &str,
        retry: Retry,
    ) -> Result<RunningBundle, LocalError> {
        let other = |e: &dyn std::fmt::Display| LocalError::Other(e.to_string());
        let files = fed
            .certs
            .city(city)
            .ok_or_else(|| LocalError::NoCity(city.to_string()))?;
        let trust = TrustBundle::load(&fed.certs.trust_bundle).map_err(|e| other(&e))?;
        let home_node_key = tongban_gateway::trust::node_public_key(city, &files.node_cert, &trust)
            .map_err(|e| other(&e))?;
        let catalog = tongban_catalog::Catalog::embedded().map_err(|e| other(&e))?;
        let data_dir = fed.root.join(city).join("bundle");
        let service = BundleService::open(BundleConfig {
            city: city.to_string(),
            org: BUNDLE_ORG.to_string(),
            data_dir: data_dir.clone(),
            catalog: Arc::new(catalog),
            trust: Arc::new(trust),
            home_node_key,
            node: fed.city(city)?.caller_url(),
            token: fed.token(city, BUNDLE_ORG)?,
            retry,
        })
        .await
        .map_err(|e| other(&e))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Served::spawn("bundle service", |rx| {
            service.serve(listener, async {
                let _ = rx.await;
            })
        });
        let mut client = fed.registry(city, BUNDLE_ORG).await?;
        client
            .register_service(RegisterServiceRequest {
                registration: Some(ServiceRegistration {
                    organisation: BUNDLE_ORG.into(),
                    service: SERVICE.into(),
                    endpoints: vec![format!("http://{addr}")],
                    catalog_codes: Vec::new(),
                    personal_data: true,
                    description: format!("\"one thing\" bundles of {city}"),
                }),
            })
            .await?;
        Ok(RunningBundle {
            city: city.to_string(),
            addr,
            data_dir,
            served,
        })
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

/// The bundle services of a local federation.
pub struct Bundles {
    pub running: Vec<RunningBundle>,
    retry: Retry,
}

impl Bundles {
    /// Starts a bundle service per city of `fed` and waits until every node holds every
    /// peer's.
    pub async fn start(fed: &LocalFederation, retry: Retry) -> Result<Bundles, LocalError> {
        let mut running = Vec::new();
        for c in &fed.cities {
            running.push(RunningBundle::start(fed, &c.city, retry).await?);
        }
        let ok = fed
            .wait_until_federated(Duration::from_secs(10), |_, p| {
                p.services.iter().any(|s| s.service == SERVICE)
            })
            .await;
        if !ok {
            return Err(LocalError::Other(
                "the bundle services were not federated".into(),
            ));
        }
        Ok(Bundles { running, retry })
    }

    pub fn get(&self, city: &str) -> Option<&RunningBundle> {
        self.running.iter().find(|b| b.city == city)
    }

    /// Stops `city`'s bundle service and starts it again on the same data directory.
    pub async fn restart(&mut self, fed: &LocalFederation, city: &str) -> Result<(), LocalError> {
        if let Some(i) = self.running.iter().position(|b| b.city == city) {
            self.running.remove(i).stop().await;
        }
        self.running
            .push(RunningBundle::start(fed, city, self.retry).await?);
        Ok(())
    }

    pub async fn stop(self) {
        for b in self.running {
            b.stop().await;
        }
    }
}

/// A valid form for `bundle`: each field's example (from the first item field it fills),
/// and every material its items need.
pub fn example_form(
    catalog: &tongban_catalog::Catalog,
    bundle: &tongban_catalog::bundle::Bundle,
) -> (
    std::collections::HashMap<String, String>,
    Vec<tongban_proto::bundle::v1::MaterialRef>,
) {
    let mut fields = std::collections::HashMap::new();
    for (name, targets) in &bundle.form {
        let example = targets.iter().find_map(|(code, field)| {
            catalog
                .item(code)?
                .fields
                .iter()
                .find(|f| &f.name == field)
                .map(|f| f.example.clone())
        });
        if let Some(e) = example {
            fields.insert(name.clone(), e);
        }
    }
    let mut kinds: Vec<String> = bundle
        .items
        .iter()
        .filter_map(|i| catalog.item(&i.code))
        .flat_map(|i| i.materials.iter().cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    let materials = kinds
        .into_iter()
        .map(|kind| tongban_proto::bundle::v1::MaterialRef {
            uri: format!("https://docs.example/bundle/{kind}"),
            sha256: hex::encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kind.as_bytes()).as_ref(),
            ),
            kind,
        })
        .collect();
    (fields, materials)
}

/// A token of `city`'s identity provider for the citizen `id`, signed in at the portal.
pub fn citizen_token(fed: &LocalFederation, city: &str, id: &str) -> Result<String, LocalError> {
    fed.idp(city)?
        .issue(
            "portal",
            &[tongban_gateway::consent::CITIZEN_ROLE.to_string()],
            Duration::from_secs(3600),
            id,
        )
        .map_err(|e| LocalError::Other(e.to_string()))
}

/// A call to `home`'s bundle service as the citizen `id` (their own token, naming
/// themselves).
pub fn as_citizen<T>(
    fed: &LocalFederation,
    home: &str,
    id: &str,
    msg: T,
) -> Result<tonic::Request<T>, LocalError> {
    use tongban_proto::metadata::{PURPOSE, SUBJECT, TARGET_CITY};
    let token = citizen_token(fed, home, id)?;
    let mut req = tonic::Request::new(msg);
    req.set_timeout(Duration::from_secs(30));
    let md = req.metadata_mut();
    let value = |v: String| {
        tonic::metadata::MetadataValue::try_from(v)
            .map_err(|_| LocalError::Other("a metadata value is not ascii".into()))
    };
    md.insert("authorization", value(format!("Bearer {token}"))?);
    md.insert(TARGET_CITY, value(home.to_string())?);
    md.insert(SUBJECT, value(id.to_string())?);
    md.insert(PURPOSE, value("case-handling".into())?);
    Ok(req)
}

/// The citizen `id` of `home` grants `home`'s bundle service one consent for `items` in
/// `target`, through the consent portal; returns (consent id, token).
pub async fn grant(
    fed: &LocalFederation,
    home: &str,
    id: &str,
    target: &str,
    items: &[&str],
) -> Result<(String, String), LocalError> {
    fed.grant_consent_for(
        tongban_bundle::plan::CROSSCITY_V2,
        home,
        id,
        &format!("{home}/{BUNDLE_ORG}"),
        (target, tongban_bundle::plan::PURPOSE),
        items,
    )
    .await
}

/// The moving bundle (JQB-01) of `citizen` of `home` moving to `target`, with the example
/// form (the divisions of the two cities) and every material.
pub fn moving_request(
    catalog: &tongban_catalog::Catalog,
    (home, target): (&str, &str),
    citizen: &str,
    consent: &str,
) -> Result<tongban_proto::bundle::v1::SubmitRequest, LocalError> {
    let bundle = catalog
        .bundle("JQB-01")
        .ok_or_else(|| LocalError::Other("the catalog has no JQB-01".into()))?;
    let (mut fields, materials) = example_form(catalog, bundle);
    let division = |c: &str| if c == "jinan" { "370102" } else { "370202" };
    fields.insert("from_division".into(), division(home).into());
    fields.insert("to_division".into(), division(target).into());
    Ok(tongban_proto::bundle::v1::SubmitRequest {
        bundle_code: bundle.code.clone(),
        target_city: target.into(),
        applicant_id: citizen.into(),
        fields,
        materials,
        skip: Vec::new(),
        consent: consent.into(),
        idempotency_key: String::new(),
    })
}

/// The applications of `citizen` (of `home`) for item `code` at `target`'s department, as
/// they see them with their own token.
pub async fn citizen_applications(
    fed: &LocalFederation,
    (home, target): (&str, &str),
    citizen: &str,
    code: &str,
) -> Result<Vec<tongban_proto::crosscity::v2::Application>, LocalError> {
    use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
    use tongban_proto::metadata::{CATALOG_CODE, TARGET_CITY};
    let mut client = CrossCityServiceClient::new(fed.channel(home).await?);
    let mut req = as_citizen(
        fed,
        home,
        citizen,
        tongban_proto::crosscity::v2::ListApplicationsRequest::default(),
    )?;
    let value = |v: &str| {
        tonic::metadata::MetadataValue::try_from(v)
            .map_err(|_| LocalError::Other("a metadata value is not ascii".into()))
    };
    req.metadata_mut().insert(TARGET_CITY, value(target)?);
    req.metadata_mut().insert(CATALOG_CODE, value(code)?);
    Ok(client
        .list_applications(req)
        .await?
        .into_inner()
        .applications
        .into_iter()
        .filter(|a| a.catalog_code == code)
        .collect())
}

/// The moving bundle (JQB-01) of one citizen, as the demo tells it.
#[derive(Debug, Clone)]
pub struct MovingStory {
    pub home: String,
    pub target: String,
    /// The bundle's single status, at its end.
    pub status: tongban_proto::bundle::v1::BundleStatus,
    /// Every change of the status the citizen saw (`WatchStatus`).
    pub changes: usize,
    /// Each item's result verified with the trust bundle alone (or why not).
    pub certificates: Vec<(String, Result<String, String>)>,
}

impl MovingStory {
    pub fn ok(&self) -> bool {
        self.status.state == tongban_proto::bundle::v1::BundleState::Completed as i32
            && self.certificates.len() == 4
            && self.certificates.iter().all(|(_, c)| c.is_ok())
    }

    /// The single status, a line for the bundle and one per item.
    pub fn lines(&self) -> Vec<String> {
        use tongban_proto::bundle::v1::{BundleState, ItemState};
        let s = &self.status;
        let state = BundleState::try_from(s.state)
            .map(tongban_bundle::engine::state_name)
            .unwrap_or("unknown");
        let mut out = vec![format!(
            "{} {} → {}: {} {}, due {} ({} status changes seen)",
            s.bundle_code, self.home, self.target, s.bundle_id, state, s.due_date, self.changes
        )];
        for i in &s.items {
            let app = i.application.clone().unwrap_or_default();
            let cert = match self.certificates.iter().find(|(c, _)| c == &i.code) {
                Some((_, Ok(by))) => format!("certificate verified ({by})"),
                Some((_, Err(e))) => format!("certificate NOT verified: {e}"),
                None => String::new(),
            };
            out.push(format!(
                "  {:<6} {:<10} {:<13} {:<44} due {}  {}",
                i.code,
                ItemState::try_from(i.state)
                    .map(tongban_bundle::engine::item_state_name)
                    .unwrap_or("unknown"),
                format!("{}/{}", app.provider_city, app.provider_org),
                app.application_id,
                app.due_date,
                cert
            ));
        }
        out
    }
}

/// Each `(home, target, citizen)` moves: one consent, one form, one status, through the
/// home city's bundle service; followed to the end, each result verified.
pub async fn run_moving(
    fed: &LocalFederation,
    moves: &[(&str, &str, String)],
) -> Result<Vec<MovingStory>, LocalError> {
    use tongban_proto::bundle::v1::bundle_service_client::BundleServiceClient;
    use tongban_proto::bundle::v1::{BundleState, GetStatusRequest};
    let other = |e: &dyn std::fmt::Display| LocalError::Other(e.to_string());
    let catalog = tongban_catalog::Catalog::embedded().map_err(|e| other(&e))?;
    let trust = TrustBundle::load(&fed.certs.trust_bundle).map_err(|e| other(&e))?;
    let bundle = catalog
        .bundle("JQB-01")
        .ok_or_else(|| LocalError::Other("the catalog has no JQB-01".into()))?;
    let items: Vec<&str> = bundle.items.iter().map(|i| i.code.as_str()).collect();
    let mut out = Vec::new();
    for (home, target, citizen) in moves {
        let (home, target) = (*home, *target);
        let (_, consent) = grant(fed, home, citizen, target, &items).await?;
        let mut client = BundleServiceClient::new(fed.channel(home).await?);
        let msg = moving_request(&catalog, (home, target), citizen, &consent)?;
        let started = client
            .submit(as_citizen(fed, home, citizen, msg)?)
            .await?
            .into_inner();
        let mut watch = as_citizen(
            fed,
            home,
            citizen,
            GetStatusRequest {
                bundle_id: started.bundle_id.clone(),
            },
        )?;
        watch.set_timeout(Duration::from_secs(60));
        let mut stream = client.watch_status(watch).await?.into_inner();
        let mut last = started;
        let mut changes = 0;
        while let Some(s) = stream.message().await? {
            changes += 1;
            last = s;
            if last.state != BundleState::InProgress as i32 {
                break;
            }
        }
        let certificates = last
            .items
            .iter()
            .filter_map(|i| i.application.as_ref().map(|a| (i.code.clone(), a)))
            .filter(|(_, a)| !a.result.is_empty())
            .map(|(code, a)| {
                let v = tongban_crosscity::ecert::verify(
                    &a.result,
                    &trust,
                    time::OffsetDateTime::now_utc(),
                )
                .map(|d| format!("{}/{}", d.issuer.city, d.issuer.organisation))
                .map_err(|e| e.to_string());
                (code, v)
            })
            .collect();
        out.push(MovingStory {
            home: home.into(),
            target: target.into(),
            status: last,
            changes,
            certificates,
        });
    }
    Ok(out)
}
