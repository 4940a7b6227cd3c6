//! `tongban.registry.v1.Registry` on the caller listener: organisations register and
//! withdraw their services; anyone lists the local and federated catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use tongban_proto::registry::v1::registry_server::Registry as RegistryRpc;
use tongban_proto::registry::v1::{
    CatalogService, ListServicesRequest, ListServicesResponse, RegisterServiceRequest,
    RegisterServiceResponse, Scope, WithdrawServiceRequest, WithdrawServiceResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::auth::{require, Grant};
use crate::auth::{Authenticator, Caller};
use crate::catalog::Publisher;
use crate::error::{ApiError, BadField, FieldViolation};
use crate::federation::Peer;
use crate::registry::{RegistryError, ServiceRecord};

impl ApiError for RegistryError {
    fn code(&self) -> Code {
        match self {
            RegistryError::Invalid(_) => Code::InvalidArgument,
            RegistryError::NotFound { .. } => Code::NotFound,
            RegistryError::Storage(_) | RegistryError::Corrupt(_) => {
                tracing::error!(error = %self, "registry storage failure");
                Code::Internal
            }
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            RegistryError::Invalid(_) => "INVALID_REGISTRATION",
            RegistryError::NotFound { .. } => "SERVICE_NOT_REGISTERED",
            RegistryError::Storage(_) | RegistryError::Corrupt(_) => "REGISTRY_STORE",
        }
    }
    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            RegistryError::Invalid(bad) => bad.violations(),
            _ => Vec::new(),
        }
    }
}

crate::into_status!(RegistryError);

/// Role that may manage every organisation's registrations.
pub const ADMIN_ROLE: &str = "registry-admin";

/// The Registry API. Every call is authenticated with a caller JWT of this city; an
/// organisation registers and withdraws only its own services (or holds `registry-admin`).
pub struct RegistryApi {
    pub city: String,
    pub publisher: Arc<Publisher>,
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub auth: Arc<Authenticator>,
}

impl RegistryApi {
    async fn may_manage<T>(&self, req: &Request<T>, organisation: &str) -> Result<Caller, Status> {
        let caller = self.auth.caller_of(req).await?;
        require(
            &caller,
            &format!("manage the services of organisation `{organisation}`"),
            &[Grant::Organisation(organisation), Grant::Role(ADMIN_ROLE)],
        )?;
        Ok(caller)
    }
}

#[tonic::async_trait]
impl RegistryRpc for RegistryApi {
    async fn register_service(
        &self,
        req: Request<RegisterServiceRequest>,
    ) -> Result<Response<RegisterServiceResponse>, Status> {
        let org = req
            .get_ref()
            .registration
            .as_ref()
            .map(|r| r.organisation.clone())
            .unwrap_or_default();
        let caller = self.may_manage(&req, &org).await?;
        let reg = req
            .into_inner()
            .registration
            .ok_or_else(|| BadField::new("registration", "registration is missing"))?;
        let rec = ServiceRecord::try_from(reg)?;
        let version = self.publisher.register(&rec).await?;
        tracing::info!(organisation = %rec.organisation, service = %rec.service, version, by = %caller.id(), "service registered");
        Ok(Response::new(RegisterServiceResponse {
            catalog_version: version,
        }))
    }

    async fn withdraw_service(
        &self,
        req: Request<WithdrawServiceRequest>,
    ) -> Result<Response<WithdrawServiceResponse>, Status> {
        let org = req.get_ref().organisation.clone();
        self.may_manage(&req, &org).await?;
        let r = req.into_inner();
        let version = self.publisher.withdraw(&r.organisation, &r.service).await?;
        tracing::info!(organisation = %r.organisation, service = %r.service, version, "service withdrawn");
        Ok(Response::new(WithdrawServiceResponse {
            catalog_version: version,
        }))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        self.auth.caller_of(&req).await?;
        let r = req.into_inner();
        let scope = Scope::try_from(r.scope)
            .map_err(|_| BadField::new("scope", format!("unknown scope {}", r.scope)))?;
        let city = r.city.trim().to_ascii_lowercase();
        let wants = |c: &str| city.is_empty() || city == c;
        let snap = self.publisher.catalog.snapshot();
        let mut services = Vec::new();
        if scope != Scope::Federated && wants(&self.city) {
            services.extend(snap.local.iter().map(|s| CatalogService {
                city: self.city.clone(),
                organisation: s.record.organisation.clone(),
                service: s.record.service.clone(),
                catalog_codes: s.record.catalog_codes.clone(),
                personal_data: s.record.personal_data,
                description: s.record.description.clone(),
                endpoints: s.record.endpoints.clone(),
                available: true,
            }));
        }
        if scope != Scope::Local {
            for (c, cat) in &snap.peers {
                if !wants(c) {
                    continue;
                }
                let available = self.peers.get(c).is_some_and(|p| p.is_up());
                services.extend(cat.services.iter().map(|s| CatalogService {
                    city: c.clone(),
                    organisation: s.organisation.clone(),
                    service: s.service.clone(),
                    catalog_codes: s.catalog_codes.clone(),
                    personal_data: s.personal_data,
                    description: s.description.clone(),
                    endpoints: Vec::new(),
                    available,
                }));
            }
        }
        Ok(Response::new(ListServicesResponse { services }))
    }
}
