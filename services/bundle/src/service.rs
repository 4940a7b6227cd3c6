//! `tongban.bundle.v1.BundleService`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tongban_crosscity::rules::Vouched;
use tongban_crosscity::CrossCityError;
use tongban_gateway::error::FieldViolation;
use tongban_gateway::subject::Pseudonymizer;
use tongban_proto::bundle::v1::bundle_service_server::BundleService as BundleRpc;
use tongban_proto::bundle::v1::{
    BundleDefinition, BundleItem, BundleState, BundleStatus, FormField, GetStatusRequest,
    ItemState, ListBundlesRequest, ListBundlesResponse, ListMineRequest, ListMineResponse,
    SubmitRequest, WithdrawRequest,
};
use tonic::{Request, Response, Status};

use crate::engine::{now_ms, Engine};
use crate::error::BundleError;
use crate::plan::{self, ConsentCheck};
use crate::store::{ItemRec, Keyed, Record};

/// The bundle service of one city.
#[derive(Clone)]
pub struct BundleService {
    pub(crate) engine: Arc<Engine>,
    pub(crate) pseudonyms: Arc<Pseudonymizer>,
    pub(crate) consents: Arc<ConsentCheck>,
}

fn vouched(md: &tonic::metadata::MetadataMap) -> Result<Vouched, BundleError> {
    Vouched::from_metadata(md).map_err(|e| match e {
        CrossCityError::BadPrincipal(m) => BundleError::BadPrincipal(m),
        _ => BundleError::NotThroughNode,
    })
}

impl BundleService {
    /// Who may see and withdraw a bundle: the call names its citizen (`x-tongban-subject`,
    /// whom the node authenticated or checked a consent for), and it is that citizen (their
    /// own token, or a portal on their behalf), or the organisation that submitted it for
    /// them. Anything else is answered like a bundle that does not exist.
    fn may_see(&self, r: &Record, v: &Vouched) -> bool {
        let about = v
            .subject
            .as_deref()
            .is_some_and(|id| self.pseudonyms.pseudonym(id) == r.subject);
        about && (v.principal.is_citizen() || (r.caller == v.caller && !r.by_citizen))
    }

    fn visible(&self, id: &str, v: &Vouched) -> Result<Record, BundleError> {
        match self.engine.store.get(id)? {
            Some(r) if self.may_see(&r, v) => Ok(r),
            _ => Err(BundleError::NotFound(id.to_string())),
        }
    }

    fn definitions(&self) -> Vec<BundleDefinition> {
        let catalog = &self.engine.catalog;
        catalog
            .bundles
            .iter()
            .map(|b| BundleDefinition {
                code: b.code.clone(),
                name_zh: b.name_zh.clone(),
                name_en: b.name_en.clone(),
                items: b
                    .items
                    .iter()
                    .map(|i| {
                        let item = catalog.item(&i.code);
                        BundleItem {
                            code: i.code.clone(),
                            name_zh: item.map(|x| x.name_zh.clone()).unwrap_or_default(),
                            name_en: item.map(|x| x.name_en.clone()).unwrap_or_default(),
                            after: i.after.clone(),
                            optional: i.optional,
                            materials: item.map(|x| x.materials.clone()).unwrap_or_default(),
                            personal_data: item.is_some_and(|x| x.personal_data),
                            time_limit_days: item.map(|x| x.time_limit_days).unwrap_or(0),
                        }
                    })
                    .collect(),
                form: b
                    .form
                    .iter()
                    .map(|(name, targets)| {
                        // The field as the first item it fills defines it; required when
                        // any non-optional item requires it.
                        let defs: Vec<(&tongban_catalog::Field, bool)> = targets
                            .iter()
                            .filter_map(|(code, field)| {
                                let optional =
                                    b.items.iter().any(|i| &i.code == code && i.optional);
                                catalog
                                    .item(code)
                                    .and_then(|it| it.fields.iter().find(|f| &f.name == field))
                                    .map(|f| (f, optional))
                            })
                            .collect();
                        let first = defs.first().map(|(f, _)| *f);
                        FormField {
                            name: name.clone(),
                            fills: targets.iter().map(|(c, f)| format!("{c}.{f}")).collect(),
                            r#type: first.map(|f| f.kind.name().to_string()).unwrap_or_default(),
                            required: defs.iter().any(|(f, optional)| f.required && !optional),
                            values: match first.map(|f| &f.kind) {
                                Some(tongban_catalog::FieldType::Enum(v)) => v.clone(),
                                _ => Vec::new(),
                            },
                            example: first.map(|f| f.example.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
                consent_grantee: self.consents.grantee.clone(),
                consent_service: plan::CROSSCITY_V2.to_string(),
                consent_purpose: plan::PURPOSE.to_string(),
            })
            .collect()
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<BundleStatus, Status>> + Send>>;

#[tonic::async_trait]
impl BundleRpc for BundleService {
    async fn list_bundles(
        &self,
        _req: Request<ListBundlesRequest>,
    ) -> Result<Response<ListBundlesResponse>, Status> {
        Ok(Response::new(ListBundlesResponse {
            bundles: self.definitions(),
        }))
    }

    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<BundleStatus>, Status> {
        let v = vouched(req.metadata())?;
        let msg = req.into_inner();
        let key = msg.idempotency_key.clone();
        if key.len() > 128 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(BundleError::Invalid(vec![FieldViolation::new(
                "idempotency_key",
                "idempotency_key is at most 128 printable ASCII characters, without spaces",
            )])
            .into());
        }
        let catalog = Arc::clone(&self.engine.catalog);
        let bundle = catalog
            .bundle(msg.bundle_code.trim())
            .ok_or_else(|| BundleError::UnknownBundle(msg.bundle_code.clone()))?;
        let target = msg.target_city.trim().to_string();
        let checked = plan::check(&catalog, bundle, msg, &v, &self.consents)?;
        let subject = self.pseudonyms.pseudonym(&checked.secrets.applicant_id);
        let id = format!("b-{}", uuid::Uuid::new_v4().simple());
        if !key.is_empty() {
            use sha2::Digest as _;
            let canonical = serde_json::json!([
                bundle.code,
                target,
                subject,
                checked.secrets.fields,
                checked.secrets.materials,
                checked.skipped
            ]);
            let digest = hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()));
            let keyed = Keyed {
                id: id.clone(),
                digest: digest.clone(),
            };
            match self.engine.store.claim_key(&v.caller, &key, &keyed)? {
                None => {}
                Some(first) if first.digest != digest => {
                    return Err(BundleError::KeyReused { key, id: first.id }.into())
                }
                Some(first) => {
                    // The first submission's bundle (stored right after its key was claimed;
                    // a crash between the two leaves the key free of a bundle: a new one).
                    if let Some(r) = self.engine.store.get(&first.id)? {
                        return Ok(Response::new(r.to_wire()));
                    }
                }
            }
        }
        let now = now_ms();
        let items = bundle
            .items
            .iter()
            .map(|b| ItemRec {
                code: b.code.clone(),
                state: if checked.skipped.contains(&b.code) {
                    ItemState::Skipped
                } else {
                    ItemState::Waiting
                } as i32,
                application: String::new(),
                reason: String::new(),
                action: String::new(),
                attempts: 0,
                first_attempt_ms: 0,
            })
            .collect();
        let mut r = Record {
            id: id.clone(),
            code: bundle.code.clone(),
            target_city: target,
            state: BundleState::InProgress as i32,
            subject,
            applicant_masked: tongban_gateway::subject::mask(&checked.secrets.applicant_id),
            caller: v.caller.clone(),
            by_citizen: v.principal.is_citizen(),
            created_at_ms: now,
            updated_at_ms: now,
            items,
            sealed: String::new(),
            withdraw_requested: false,
            withdraw_reason: String::new(),
        };
        r.sealed = self.engine.store.seal(&id, &checked.secrets)?;
        let r = self.engine.start(r).await?;
        tracing::info!(bundle = %r.id, code = %r.code, target = %r.target_city, caller = %r.caller, items = %checked.included.join(","), "bundle started");
        Ok(Response::new(r.to_wire()))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<BundleStatus>, Status> {
        let v = vouched(req.metadata())?;
        let r = self.visible(&req.get_ref().bundle_id, &v)?;
        Ok(Response::new(r.to_wire()))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let v = vouched(req.metadata())?;
        let id = req.into_inner().bundle_id;
        // Subscribe before reading, so that no change between the two is missed.
        let mut changes = self.engine.subscribe();
        let current = self.visible(&id, &v)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = self.engine.store.clone();
        tokio::spawn(async move {
            let mut last = current.to_wire();
            let done = current.is_final();
            if tx.send(Ok(last.clone())).await.is_err() || done {
                return;
            }
            loop {
                let next = match changes.recv().await {
                    Ok(r) if r.id == id => (*r).clone(),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => match store.get(&id) {
                        Ok(Some(r)) => r,
                        _ => break,
                    },
                    Err(RecvError::Closed) => break,
                };
                let wire = next.to_wire();
                let same = BundleStatus {
                    updated_at_ms: last.updated_at_ms,
                    ..wire.clone()
                } == last;
                if same {
                    continue;
                }
                last = wire.clone();
                tracing::debug!(bundle = %id, state = ?next.state(), "status sent to a watcher");
                if tx.send(Ok(wire)).await.is_err() || next.is_final() {
                    tracing::debug!(bundle = %id, "watcher done");
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_mine(
        &self,
        req: Request<ListMineRequest>,
    ) -> Result<Response<ListMineResponse>, Status> {
        let v = vouched(req.metadata())?;
        let subject = v.subject.as_deref().ok_or(BundleError::NoSubject)?;
        let pseudonym = self.pseudonyms.pseudonym(subject);
        let list = self
            .engine
            .store
            .by_subject(&pseudonym, 100, |r| self.may_see(r, &v))?;
        Ok(Response::new(ListMineResponse {
            bundles: list.iter().map(Record::to_wire).collect(),
        }))
    }

    async fn withdraw(
        &self,
        req: Request<WithdrawRequest>,
    ) -> Result<Response<BundleStatus>, Status> {
        let v = vouched(req.metadata())?;
        let r = req.into_inner();
        let out = self
            .engine
            .withdraw(&r.bundle_id, &r.reason, |rec| self.may_see(rec, &v))
            .await?;
        tracing::info!(bundle = %out.id, by = %v.caller, state = ?out.state(), "bundle withdrawal asked");
        Ok(Response::new(out.to_wire()))
    }
}
