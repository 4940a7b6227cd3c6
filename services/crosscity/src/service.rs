//! `tongban.crosscity.v2.CrossCityService` of one department.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tongban_gateway::subject::Pseudonymizer;
use tongban_proto::crosscity::v2::cross_city_service_server::CrossCityService;
use tongban_proto::crosscity::v2::{
    Application, GetStatusRequest, ListApplicationsRequest, ListApplicationsResponse, State,
    SubmitRequest, WithdrawRequest,
};
use tonic::{Request, Response, Status};

use crate::error::CrossCityError;
use crate::office::{now_ms, Office};
use crate::rules::{self, mask_id, Vouched};
use crate::store::{Keyed, Material, Stored};
use tongban_gateway::error::FieldViolation;

/// The provider of one organisation of one city.
#[derive(Clone)]
pub struct Department {
    office: Arc<Office>,
    pseudonyms: Arc<Pseudonymizer>,
}

impl Department {
    pub(crate) fn new(office: Arc<Office>, pseudonyms: Pseudonymizer) -> Department {
        Department {
            office,
            pseudonyms: Arc::new(pseudonyms),
        }
    }

    pub(crate) fn office(&self) -> &Office {
        &self.office
    }

    pub(crate) fn office_handle(&self) -> Arc<Office> {
        Arc::clone(&self.office)
    }

    /// Resumes the handling of every unfinished application (after a restart).
    pub(crate) fn resume(&self) -> Result<(), CrossCityError> {
        let open = self.office.store.open_applications()?;
        if !open.is_empty() {
            tracing::info!(count = open.len(), "resuming unfinished applications");
        }
        for s in open {
            self.office.handle(s.id);
        }
        Ok(())
    }

    /// The application `id`, if the call may see it ([`Self::may_see`]); NOT_FOUND alike
    /// when it does not exist and when it is someone else's.
    fn visible(&self, id: &str, v: &Vouched) -> Result<Stored, CrossCityError> {
        match self.office.store.get(id)? {
            Some(s) if self.may_see(&s, v) => Ok(s),
            _ => Err(CrossCityError::NotFound(id.to_string())),
        }
    }

    /// Who may see and change an application, decided from the principal the node vouched
    /// for, never from the calling organisation alone:
    /// - a citizen (their own token, or a portal on their behalf): only their own
    ///   applications (the node lets a citizen name only themselves in `x-tongban-subject`);
    /// - an official or a system account: a call naming the application's item
    ///   (`x-tongban-catalog-code`, so that the node checked the consent for that item), for
    ///   an item with personal data about its applicant (`x-tongban-subject`, whose consent
    ///   the node checked, so the access is recorded under the right citizen), and either
    ///   submitted by the caller's organisation itself (not by citizens through it) or about
    ///   that applicant.
    fn may_see(&self, s: &Stored, v: &Vouched) -> bool {
        let about_applicant = v
            .subject
            .as_deref()
            .is_some_and(|id| self.pseudonyms.pseudonym(id) == s.subject);
        if v.principal.is_citizen() {
            return about_applicant;
        }
        let personal = self
            .office
            .catalog
            .item(&s.code)
            .is_none_or(|i| i.personal_data);
        let own_submission = s.caller == v.caller && !s.by_citizen;
        v.catalog_code.as_deref() == Some(s.code.as_str())
            && (about_applicant || (own_submission && !personal))
    }
}

type AppStream = Pin<Box<dyn Stream<Item = Result<Application, Status>> + Send>>;

#[tonic::async_trait]
impl CrossCityService for Department {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<Application>, Status> {
        let v = Vouched::from_metadata(req.metadata())?;
        let o = &self.office;
        let msg = req.into_inner();
        let key = msg.idempotency_key.clone();
        if key.len() > 128 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(CrossCityError::Invalid(vec![FieldViolation::new(
                "idempotency_key",
                "idempotency_key is at most 128 printable ASCII characters, without spaces",
            )])
            .into());
        }
        let sub = rules::check(&o.catalog, &o.city, &o.org, msg, &v)?;
        let mut id = new_application_id(&o.city, &o.org);
        // A keyed submission: claimed and stored under the office's lock, so a retry (even
        // one racing the first) returns the first application and never makes a second.
        let exclusive = if key.is_empty() {
            None
        } else {
            let guard = o.exclusive().await;
            let digest = submission_digest(&sub, &self.pseudonyms.pseudonym(&sub.applicant_id));
            let keyed = Keyed {
                id: id.clone(),
                digest: digest.clone(),
            };
            match o.store.claim_key(&v.caller, &key, &keyed)? {
                None => {}
                Some(first) if first.digest != digest => {
                    return Err(CrossCityError::KeyReused { key, id: first.id }.into())
                }
                Some(first) => {
                    if let Some(existing) = o.store.get(&first.id)? {
                        tracing::info!(application = %existing.id, caller = %v.caller, "repeated submission answered with the first application (idempotency key)");
                        return Ok(Response::new(existing.to_wire()));
                    }
                    // Claimed, then a crash before it was stored: it is stored now, under
                    // the id the key names.
                    id = first.id;
                }
            }
            Some(guard)
        };
        let received = now_ms();
        let mut s = Stored {
            id,
            code: sub.item.code.clone(),
            state: State::Unspecified as i32,
            provider_city: o.city.clone(),
            provider_org: o.org.clone(),
            origin_city: v.origin_city.clone(),
            applicant_masked: mask_id(&sub.applicant_id),
            subject: self.pseudonyms.pseudonym(&sub.applicant_id),
            caller: v.caller.clone(),
            by_citizen: v.principal.is_citizen(),
            submitted_by: v.principal.person.clone(),
            received_at_ms: received,
            due_date: o
                .catalog
                .calendar
                .due_date(received, sub.item.time_limit_days)
                .to_string(),
            history: Vec::new(),
            fields: sub.fields,
            materials: sub
                .materials
                .into_iter()
                .map(|m| Material {
                    kind: m.kind,
                    uri: m.uri,
                    sha256: m.sha256.to_ascii_lowercase(),
                })
                .collect(),
            rejection_reason: String::new(),
            result_kind: sub.item.produces.as_str().to_string(),
            result: None,
        };
        s.enter(
            State::Received,
            received,
            format!("received from {}", v.caller),
        );
        let s = o.receive(s, exclusive).await?;
        tracing::info!(application = %s.id, code = %s.code, caller = %s.caller, due = %s.due_date, "application received");
        Ok(Response::new(s.to_wire()))
    }

    async fn get_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<Application>, Status> {
        let v = Vouched::from_metadata(req.metadata())?;
        let s = self.visible(&req.get_ref().application_id, &v)?;
        Ok(Response::new(s.to_wire()))
    }

    type WatchStatusStream = AppStream;

    async fn watch_status(
        &self,
        req: Request<GetStatusRequest>,
    ) -> Result<Response<AppStream>, Status> {
        let v = Vouched::from_metadata(req.metadata())?;
        let id = req.into_inner().application_id;
        // Subscribe before reading, so that no change between the two is missed.
        let mut changes = self.office.subscribe();
        let current = self.visible(&id, &v)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = self.office.store.clone();
        tokio::spawn(async move {
            let mut last = current.history.len();
            let done = current.is_final();
            if tx.send(Ok(current.to_wire())).await.is_err() || done {
                return;
            }
            loop {
                let next = match changes.recv().await {
                    Ok(s) if s.id == id => (*s).clone(),
                    Ok(_) => continue,
                    // Fell behind: read the application as it is now.
                    Err(RecvError::Lagged(_)) => match store.get(&id) {
                        Ok(Some(s)) => s,
                        _ => break,
                    },
                    Err(RecvError::Closed) => break,
                };
                if next.history.len() <= last {
                    continue;
                }
                last = next.history.len();
                let done = next.is_final();
                if tx.send(Ok(next.to_wire())).await.is_err() || done {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_applications(
        &self,
        req: Request<ListApplicationsRequest>,
    ) -> Result<Response<ListApplicationsResponse>, Status> {
        let v = Vouched::from_metadata(req.metadata())?;
        let subject = v.subject.as_deref().ok_or(CrossCityError::NoSubject)?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => 20,
            n @ 1..=100 => usize::try_from(n).unwrap_or(20),
            n => {
                return Err(CrossCityError::Invalid(vec![
                    tongban_gateway::error::FieldViolation::new(
                        "page_size",
                        format!("page_size {n} is not 0 to 100"),
                    ),
                ])
                .into())
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(hex::decode(&r.page_token).map_err(|_| {
                CrossCityError::Invalid(vec![tongban_gateway::error::FieldViolation::new(
                    "page_token",
                    "page_token is not one this provider issued",
                )])
            })?)
        };
        let pseudonym = self.pseudonyms.pseudonym(subject);
        // Only what the caller may see: an official, the item the call names.
        let (apps, next) =
            self.office
                .store
                .by_subject(&pseudonym, after.as_deref(), size, |s| self.may_see(s, &v))?;
        Ok(Response::new(ListApplicationsResponse {
            applications: apps.iter().map(Stored::to_wire).collect(),
            next_page_token: next.map(hex::encode).unwrap_or_default(),
        }))
    }

    async fn withdraw(
        &self,
        req: Request<WithdrawRequest>,
    ) -> Result<Response<Application>, Status> {
        let v = Vouched::from_metadata(req.metadata())?;
        let r = req.into_inner();
        let s = self
            .office
            .withdraw(&r.application_id, &r.reason, |s| self.may_see(s, &v))
            .await?;
        tracing::info!(application = %s.id, by = %v.caller, "application withdrawn");
        Ok(Response::new(s.to_wire()))
    }
}

/// A new application id: readable city and organisation, then 122 random bits (a UUID v4),
/// so that nobody can guess another applicant's id from their own.
fn new_application_id(city: &str, org: &str) -> String {
    format!("{city}-{org}-{}", uuid::Uuid::new_v4().simple())
}

/// What makes two submissions the same one, for an idempotency key: the item, the applicant
/// (their pseudonym), the fields and the materials.
fn submission_digest(sub: &rules::Submission<'_>, applicant: &str) -> String {
    use sha2::Digest as _;
    let materials: Vec<(&str, &str, String)> = sub
        .materials
        .iter()
        .map(|m| {
            (
                m.kind.as_str(),
                m.uri.as_str(),
                m.sha256.to_ascii_lowercase(),
            )
        })
        .collect();
    let canonical = serde_json::json!([sub.item.code, applicant, sub.fields, materials]);
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}
