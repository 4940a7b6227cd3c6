//! `tongban.registry.v1.Registry` on the caller listener: organisations register and
//! withdraw their services; anyone lists the local and federated catalog.

use crate::audit::change::Change;
use std::collections::BTreeMap;
use std::sync::Arc;
use tongban_proto::audit::v1::ChangeKind;

use tongban_proto::registry::v1::registry_server::Registry as RegistryRpc;
use tongban_proto::registry::v1::{
    CatalogField, CatalogItem, CatalogService, ListCatalogItemsRequest, ListCatalogItemsResponse,
    ListServicesRequest, ListServicesResponse, RegisterServiceRequest, RegisterServiceResponse,
    Scope, WithdrawServiceRequest, WithdrawServiceResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::auth::Caller;
use crate::auth::{require, Grant};
use crate::catalog::Publisher;
use crate::error::{ApiError, BadField, FieldViolation};
use crate::federation::Peer;
use crate::registry::{RegistryError, ServiceRecord};

impl ApiError for RegistryError {
    fn code(&self) -> Code {
        match self {
            RegistryError::Invalid(_) => Code::InvalidArgument,
            RegistryError::NotFound { .. } => Code::NotFound,
            // etcd down or partitioned away: nothing was written; the caller may retry.
            RegistryError::Storage(crate::store::StoreError::Unavailable(_)) => Code::Unavailable,
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
            RegistryError::Storage(crate::store::StoreError::Unavailable(_)) => "STORE_UNAVAILABLE",
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
    /// The federation's business catalog: registrations may list only its items.
    pub items: Arc<tongban_catalog::Catalog>,
    /// Registrations and withdrawals are records in the node's chain.
    pub auditor: Arc<crate::audit::Auditor>,
}

impl RegistryApi {
    /// Every catalog code of a registration must be an item of the federation catalog.
    fn check_codes(&self, rec: &ServiceRecord) -> Result<(), BadField> {
        for (i, code) in rec.catalog_codes.iter().enumerate() {
            if self.items.personal_data(code).is_none() {
                return Err(BadField::new(
                    format!("registration.catalog_codes[{i}]"),
                    format!(
                        "catalog item `{code}` is not in the federation catalog {} (version {})",
                        self.items.federation, self.items.version
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn may_manage<T>(&self, req: &Request<T>, organisation: &str) -> Result<Caller, Status> {
        let caller = crate::auth::principal_of(req)?;
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
        self.check_codes(&rec)?;
        let (version, replaced) = self.publisher.register(&rec).await?;
        let kind = if replaced {
            ChangeKind::RegistrationChanged
        } else {
            ChangeKind::RegistrationAdded
        };
        self.auditor
            .record_change(
                Change::new(
                    &self.city,
                    kind,
                    format!("{}/{}", rec.organisation, rec.service),
                )
                .by(&caller)
                .service(&rec.organisation, &rec.service)
                .version(version)
                .detail(format!(
                    "endpoints {}; items {}; personal data {}",
                    rec.endpoints.join(" "),
                    rec.catalog_codes.join(","),
                    rec.personal_data
                )),
            )
            .await?;
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
        let caller = self.may_manage(&req, &org).await?;
        let r = req.into_inner();
        let version = self.publisher.withdraw(&r.organisation, &r.service).await?;
        self.auditor
            .record_change(
                Change::new(
                    &self.city,
                    ChangeKind::RegistrationWithdrawn,
                    format!("{}/{}", r.organisation, r.service),
                )
                .by(&caller)
                .service(&r.organisation, &r.service)
                .version(version),
            )
            .await?;
        tracing::info!(organisation = %r.organisation, service = %r.service, version, "service withdrawn");
        Ok(Response::new(WithdrawServiceResponse {
            catalog_version: version,
        }))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        crate::auth::principal_of(&req)?;
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

    async fn list_catalog_items(
        &self,
        req: Request<ListCatalogItemsRequest>,
    ) -> Result<Response<ListCatalogItemsResponse>, Status> {
        crate::auth::principal_of(&req)?;
        let category = req.into_inner().category;
        let snap = self.publisher.catalog.snapshot();
        let items = self
            .items
            .items()
            .iter()
            .filter(|i| category.is_empty() || i.category == category)
            .map(|i| CatalogItem {
                code: i.code.clone(),
                name_zh: i.name_zh.clone(),
                name_en: i.name_en.clone(),
                category: i.category.clone(),
                providers: i.providers.clone().into_iter().collect(),
                personal_data: i.personal_data,
                produces: i.produces.as_str().to_string(),
                time_limit_days: i.time_limit_days,
                valid_days: i.valid_days,
                materials: i.materials.clone(),
                fields: i
                    .fields
                    .iter()
                    .map(|f| CatalogField {
                        name: f.name.clone(),
                        r#type: f.kind.name().to_string(),
                        required: f.required,
                        validation: f.kind.describe(),
                        example: f.example.clone(),
                    })
                    .collect(),
                offered_in: snap
                    .cities_offering_any(&i.code)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListCatalogItemsResponse {
            federation: self.items.federation.clone(),
            version: self.items.version.clone(),
            items,
        }))
    }
}
