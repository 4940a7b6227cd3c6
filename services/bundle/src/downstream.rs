//! The departments, as the bundle service reaches them: `tongban.crosscity.v2` through its
//! home node, as its own organisation (a caller JWT), for one item, one citizen and the
//! citizen's consent per call. The node routes by `x-tongban-catalog-code` and
//! `x-tongban-target-city`, and the providing node checks the consent for that item.

use std::time::Duration;

use tongban_proto::crosscity::v2::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v2::{Application, GetStatusRequest, SubmitRequest, WithdrawRequest};
use tongban_proto::metadata::{CATALOG_CODE, CONSENT, PURPOSE, SUBJECT, TARGET_CITY};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

use crate::plan;

/// Who a call is about: the item, the target city, the citizen and their consent.
pub struct About<'a> {
    pub code: &'a str,
    pub target_city: &'a str,
    pub applicant_id: &'a str,
    pub consent: &'a str,
}

/// The client of the departments through the home node.
#[derive(Clone)]
pub struct Departments {
    channel: Channel,
    token: String,
    /// The deadline of a unary call.
    timeout: Duration,
}

impl Departments {
    /// Connects lazily to the node's caller listener at `node` (e.g. `http://127.0.0.1:7000`).
    pub fn new(node: &str, token: String) -> Result<Departments, String> {
        let endpoint = Channel::from_shared(node.to_string())
            .map_err(|e| format!("node address `{node}`: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        Ok(Departments {
            channel: endpoint.connect_lazy(),
            token,
            timeout: Duration::from_secs(15),
        })
    }

    fn request<T>(&self, msg: T, about: &About<'_>) -> Result<Request<T>, Status> {
        let mut req = Request::new(msg);
        req.set_timeout(self.timeout);
        let md = req.metadata_mut();
        let value = |v: &str| {
            MetadataValue::try_from(v)
                .map_err(|_| Status::internal("a metadata value is not ascii"))
        };
        md.insert("authorization", value(&format!("Bearer {}", self.token))?);
        md.insert(TARGET_CITY, value(about.target_city)?);
        md.insert(CATALOG_CODE, value(about.code)?);
        md.insert(SUBJECT, value(about.applicant_id)?);
        md.insert(CONSENT, value(about.consent)?);
        md.insert(PURPOSE, value(plan::PURPOSE)?);
        Ok(req)
    }

    pub async fn submit(
        &self,
        req: SubmitRequest,
        about: &About<'_>,
    ) -> Result<Application, Status> {
        let r = self.request(req, about)?;
        Ok(CrossCityServiceClient::new(self.channel.clone())
            .submit(r)
            .await?
            .into_inner())
    }

    pub async fn watch(
        &self,
        application_id: &str,
        about: &About<'_>,
    ) -> Result<Streaming<Application>, Status> {
        let mut r = self.request(
            GetStatusRequest {
                application_id: application_id.to_string(),
            },
            about,
        )?;
        // A stream follows an application for as long as it takes: no deadline.
        r.metadata_mut().remove("grpc-timeout");
        Ok(CrossCityServiceClient::new(self.channel.clone())
            .watch_status(r)
            .await?
            .into_inner())
    }

    pub async fn get(
        &self,
        application_id: &str,
        about: &About<'_>,
    ) -> Result<Application, Status> {
        let r = self.request(
            GetStatusRequest {
                application_id: application_id.to_string(),
            },
            about,
        )?;
        Ok(CrossCityServiceClient::new(self.channel.clone())
            .get_status(r)
            .await?
            .into_inner())
    }

    pub async fn withdraw(
        &self,
        application_id: &str,
        reason: &str,
        about: &About<'_>,
    ) -> Result<Application, Status> {
        let r = self.request(
            WithdrawRequest {
                application_id: application_id.to_string(),
                reason: reason.to_string(),
            },
            about,
        )?;
        Ok(CrossCityServiceClient::new(self.channel.clone())
            .withdraw(r)
            .await?
            .into_inner())
    }
}

/// Whether a refusal may pass if tried again later (the department or a node unreachable,
/// overloaded or timing out), as opposed to one that will not (a field, a consent, a policy).
pub fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}
