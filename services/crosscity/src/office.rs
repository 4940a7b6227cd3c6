//! The reference back office: it moves each application through its states, one step every
//! `step`, persisting each transition before announcing it:
//!
//! received → accepted (the materials are complete) or rejected (they are not, 不予受理)
//! → processing → completed, with the result document signed by the organisation.
//!
//! A withdrawal stops it. After a restart, unfinished applications resume where they were.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{broadcast, Mutex, OwnedMutexGuard};
use tongban_catalog::Catalog;
use tongban_gateway::trust::NodeIdentity;
use tongban_proto::crosscity::v2::State;

use crate::ecert;
use crate::error::CrossCityError;
use crate::store::{Store, Stored};
use crate::DepartmentConfig;

pub struct Office {
    pub city: String,
    pub org: String,
    pub catalog: Arc<Catalog>,
    signer: NodeIdentity,
    step: Duration,
    pub store: Store,
    changes: broadcast::Sender<Arc<Stored>>,
    /// Serialises read-modify-write of applications (transitions and withdrawals).
    lock: Arc<Mutex<()>>,
    /// Set when the provider stops: the handling tasks end (and let go of the store).
    stopped: tokio::sync::watch::Sender<bool>,
}

pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Office {
    pub fn new(config: DepartmentConfig, store: Store) -> Arc<Office> {
        Arc::new(Office {
            city: config.city,
            org: config.org,
            catalog: config.catalog,
            signer: config.signer,
            step: config.step,
            store,
            changes: broadcast::channel(1024).0,
            lock: Arc::new(Mutex::new(())),
            stopped: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn codes(&self) -> Vec<String> {
        self.catalog
            .items_of(&self.city, &self.org)
            .map(|i| i.code.clone())
            .collect()
    }

    pub fn personal_data(&self) -> bool {
        self.catalog
            .items_of(&self.city, &self.org)
            .any(|i| i.personal_data)
    }

    /// Stops handling applications (they resume when the provider starts again).
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    /// Every change of any application, as it is persisted.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Stored>> {
        self.changes.subscribe()
    }

    fn publish(&self, s: &Stored) {
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(Arc::new(s.clone()));
    }

    /// Takes in a new application (persisted before this returns) and starts its handling.
    /// Holds every read-modify-write of applications off while the guard lives (a keyed
    /// submission claims its key and stores its application under it).
    pub async fn exclusive(&self) -> OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    /// Stores, announces and starts handling `s`. `exclusive` (a keyed submission's guard)
    /// is held until it is stored.
    pub async fn receive(
        self: &Arc<Self>,
        s: Stored,
        exclusive: Option<OwnedMutexGuard<()>>,
    ) -> Result<Stored, CrossCityError> {
        self.commit(s, exclusive, true).await
    }

    /// Starts (or resumes) the handling of application `id` in the background.
    pub fn handle(self: &Arc<Self>, id: String) {
        let office = Arc::clone(self);
        let mut stopped = self.stopped.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(office.step) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                match office.advance(&id).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(error) => {
                        tracing::error!(application = %id, %error, "application handling stopped");
                        break;
                    }
                }
            }
        });
    }

    /// One step of the state machine; `false` once the application is final.
    async fn advance(&self, id: &str) -> Result<bool, CrossCityError> {
        let _g = self.lock.lock().await;
        let Some(mut s) = self.store.get(id)? else {
            return Ok(false);
        };
        let now = now_ms();
        match s.state() {
            State::Received => {
                let missing = self.missing_materials(&s);
                if missing.is_empty() {
                    s.enter(State::Accepted, now, "materials complete");
                } else {
                    s.rejection_reason = format!("missing materials: {}", missing.join(", "));
                    let reason = s.rejection_reason.clone();
                    s.enter(State::Rejected, now, reason);
                }
            }
            State::Accepted => s.enter(State::Processing, now, "in handling"),
            State::Processing => {
                s.result = Some(self.result_document(&s)?);
                s.enter(State::Completed, now, "result issued");
            }
            _ => return Ok(false),
        }
        self.store.put(&s).await?;
        tracing::info!(application = %s.id, code = %s.code, state = ?s.state(), "application moved");
        self.publish(&s);
        Ok(!s.is_final())
    }

    fn missing_materials(&self, s: &Stored) -> Vec<String> {
        self.catalog
            .item(&s.code)
            .map(|i| {
                i.materials
                    .iter()
                    .filter(|k| !s.materials.iter().any(|m| &m.kind == *k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The signed result document of a completed application.
    fn result_document(&self, s: &Stored) -> Result<String, CrossCityError> {
        let item = self
            .catalog
            .item(&s.code)
            .ok_or_else(|| CrossCityError::UnknownItem(s.code.clone()))?;
        let issued = OffsetDateTime::now_utc();
        let until = issued + time::Duration::days(i64::from(item.valid_days));
        let doc = ecert::Document {
            format: ecert::FORMAT.to_string(),
            document_id: s.id.clone(),
            kind: item.produces.as_str().to_string(),
            item: ecert::ItemRef {
                code: item.code.clone(),
                name_zh: item.name_zh.clone(),
                name_en: item.name_en.clone(),
            },
            holder: ecert::Holder {
                masked_id: s.applicant_masked.clone(),
                pseudonym: s.subject.clone(),
            },
            issuer: ecert::Issuer {
                city: self.city.clone(),
                organisation: self.org.clone(),
                organisation_name: self
                    .catalog
                    .organisation(&self.org)
                    .map(|o| o.name_zh.clone())
                    .unwrap_or_default(),
            },
            issued_at: ecert::rfc3339(issued),
            valid_until: ecert::rfc3339(until),
            details: details_of(item, s),
        };
        let bytes = ecert::sign(doc, &self.signer)
            .map_err(|e| CrossCityError::Store(format!("cannot sign the result: {e}")))?;
        String::from_utf8(bytes).map_err(|e| CrossCityError::Store(e.to_string()))
    }

    /// Withdraws application `id` if `allowed` says the caller may and it is not final.
    pub async fn withdraw(
        self: &Arc<Self>,
        id: &str,
        reason: &str,
        allowed: impl FnOnce(&Stored) -> bool,
    ) -> Result<Stored, CrossCityError> {
        let guard = self.exclusive().await;
        let mut s = self
            .store
            .get(id)?
            .ok_or_else(|| CrossCityError::NotFound(id.to_string()))?;
        if !allowed(&s) {
            return Err(CrossCityError::NotFound(id.to_string()));
        }
        if s.is_final() {
            return Err(CrossCityError::Final {
                id: id.to_string(),
                state: state_name(s.state()),
            });
        }
        let note = if reason.trim().is_empty() {
            "withdrawn by the applicant".to_string()
        } else {
            format!("withdrawn: {}", reason.trim())
        };
        s.enter(State::Withdrawn, now_ms(), note);
        self.commit(s, Some(guard), false).await
    }

    /// Stores and announces `s` (under `guard`) and, when `start`, starts its handling: to
    /// the end even when the caller hangs up meanwhile (tonic drops the handler), since an
    /// application stored but never handled, or a change no watcher heard of, would wait
    /// for a restart.
    async fn commit(
        self: &Arc<Self>,
        s: Stored,
        guard: Option<OwnedMutexGuard<()>>,
        start: bool,
    ) -> Result<Stored, CrossCityError> {
        let office = Arc::clone(self);
        tokio::spawn(async move {
            let _serialised = guard;
            office.store.put(&s).await?;
            office.publish(&s);
            if start {
                office.handle(s.id.clone());
            }
            Ok(s)
        })
        .await
        .map_err(|e| {
            CrossCityError::Store(format!("the application's write did not finish: {e}"))
        })?
    }
}

/// The result's details: the application's fields, and what the office issues with the
/// result. A registration office that registers an enterprise at a domicile (an item with a
/// `domicile_division` field and no `credit_code` of its own) assigns its unified social
/// credit code (GB 32100): the number later items of a bundle take from this result.
fn details_of(
    item: &tongban_catalog::Item,
    s: &Stored,
) -> std::collections::BTreeMap<String, String> {
    let mut details = s.fields.clone();
    let registers = item.fields.iter().any(|f| f.name == "domicile_division")
        && !item.fields.iter().any(|f| f.name == "credit_code");
    if let (true, Some(division)) = (registers, s.fields.get("domicile_division")) {
        if let Some(code) = issue_credit_code(division, &s.id) {
            details.insert("credit_code".into(), code);
        }
    }
    details
}

/// A unified social credit code for the enterprise registered by application `id` at
/// `division`: `91` (market regulation, enterprise), the division, nine digits derived from
/// the application id, and the GB 32100 check character.
pub fn issue_credit_code(division: &str, id: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(id.as_bytes());
    let digits: String = h
        .iter()
        .take(9)
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    let first17 = format!("91{division}{digits}");
    let check = tongban_catalog::credit_code_check_char(&first17)?;
    Some(format!("{first17}{check}"))
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Unspecified => "unspecified",
        State::Received => "received",
        State::Accepted => "accepted",
        State::Rejected => "rejected",
        State::Processing => "processing",
        State::Completed => "completed",
        State::Withdrawn => "withdrawn",
    }
}
