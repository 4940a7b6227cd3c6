//! A query across the whole federation, for hospital systems: the patient's results from
//! every city whose registry the node's catalog lists, asked through the hospital's own
//! node one city at a time and merged into one answer, each result marked with its city.
//! A city that does not answer makes the answer partial (`partial`, `unreachable_cities`),
//! never a failure of the whole query.
//!
//! The fan-out runs at the caller's edge, not in a node: a node never decodes payloads, and
//! each city's node must see the hospital itself (its own caller assertion, its consent)
//! to decide. One consent with target city `*` covers every city.

use std::time::Duration;

use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
use tongban_proto::medical::v1::{QueryRequest, QueryResponse};
use tongban_proto::metadata;
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::ListServicesRequest;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Who asks, about whom, with which consent.
#[derive(Clone)]
pub struct Asker {
    /// The hospital system's caller JWT.
    pub token: String,
    /// The patient's resident id.
    pub patient: String,
    /// The patient's consent token for this hospital (target city `*` for every city).
    pub consent: String,
    /// Deadline of each city's answer.
    pub timeout: Duration,
}

/// A city that did not answer, and why.
#[derive(Debug, Clone)]
pub struct Missing {
    pub city: String,
    pub code: Code,
    pub message: String,
}

fn request<T>(msg: T, a: &Asker, city: Option<&str>) -> Result<Request<T>, Status> {
    let mut r = Request::new(msg);
    r.set_timeout(a.timeout);
    let md = r.metadata_mut();
    let v = |s: &str| {
        MetadataValue::try_from(s).map_err(|_| Status::invalid_argument("metadata is not ascii"))
    };
    md.insert("authorization", v(&format!("Bearer {}", a.token))?);
    md.insert(metadata::PURPOSE, v("medical-treatment")?);
    md.insert(metadata::SUBJECT, v(&a.patient)?);
    md.insert(metadata::CONSENT, v(&a.consent)?);
    md.insert(metadata::CATALOG_CODE, v(crate::READ_ITEM)?);
    if let Some(c) = city {
        md.insert(metadata::TARGET_CITY, v(c)?);
    }
    Ok(r)
}

/// The cities whose registry the home node's catalog lists (reachable or not).
pub async fn registry_cities(channel: Channel, a: &Asker) -> Result<Vec<String>, Status> {
    let req = request(ListServicesRequest::default(), a, None)?;
    let services = RegistryClient::new(channel)
        .list_services(req)
        .await?
        .into_inner()
        .services;
    let mut cities: Vec<String> = services
        .into_iter()
        .filter(|s| s.service == crate::SERVICE)
        .map(|s| s.city)
        .collect();
    cities.sort();
    cities.dedup();
    Ok(cities)
}

/// The patient's results from every city of `cities`, merged; the cities that did not
/// answer are listed (and make the answer partial).
pub async fn query_everywhere(
    channel: Channel,
    cities: &[String],
    a: &Asker,
    q: QueryRequest,
) -> (QueryResponse, Vec<Missing>) {
    let asks = cities.iter().map(|city| {
        let mut client = ResultRegistryClient::new(channel.clone());
        let req = request(q.clone(), a, Some(city));
        async move {
            let answer = match req {
                Ok(req) => client.query(req).await.map(|r| r.into_inner()),
                Err(s) => Err(s),
            };
            (city.clone(), answer)
        }
    });
    let mut merged = QueryResponse::default();
    let mut missing = Vec::new();
    for (city, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(r) => merged.results.extend(r.results),
            Err(s) => {
                merged.unreachable_cities.push(city.clone());
                missing.push(Missing {
                    city,
                    code: s.code(),
                    message: s.message().to_string(),
                });
            }
        }
    }
    merged.partial = !missing.is_empty();
    (merged, missing)
}
