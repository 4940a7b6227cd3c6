//! The orchestration of bundles: one driver task per bundle that is not final, the only
//! writer of its items' progress besides the followers' reports, each step persisted before
//! the next one is taken.
//!
//! An item waits for the items it names in `after` to complete, then is submitted to its
//! department with the idempotency key `<bundle id>/<item code>` (so a submission repeated
//! after a crash returns the first application), then followed (`WatchStatus`) to its end.
//! A department that cannot be reached is retried with backoff until the item's deadline
//! (`retry_for` from the first attempt); then the item fails and the bundle ends partial,
//! saying what the citizen must do. An item whose prerequisite did not complete is blocked.
//! A withdrawal withdraws every application that is not final, and the items not yet sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{broadcast, Mutex, Notify, OwnedMutexGuard};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tongban_catalog::bundle::Bundle;
use tongban_catalog::Catalog;
use tongban_gateway::trust::TrustBundle;
use tongban_proto::bundle::v1::{BundleState, ItemState};
use tongban_proto::crosscity::v2::{Application, State};

use crate::downstream::{transient, About, Departments};
use crate::error::BundleError;
use crate::plan;
use crate::store::{ItemRec, Record, Secrets, Store};

/// How long and how often a department that cannot be reached is tried again.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The item's deadline, from its first submission attempt.
    pub retry_for: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            retry_for: Duration::from_secs(30 * 60),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Retry {
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .first_backoff
            .saturating_mul(1u32 << attempts.min(16).saturating_sub(1));
        exp.min(self.max_backoff)
    }
}

pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub struct Engine {
    pub catalog: Arc<Catalog>,
    pub store: Store,
    departments: Departments,
    trust: Arc<TrustBundle>,
    retry: Retry,
    changes: broadcast::Sender<Arc<Record>>,
    /// Serialises read-modify-write of records.
    lock: Arc<Mutex<()>>,
    /// Wakes a bundle's driver when something changed for it.
    wakers: StdMutex<HashMap<String, Arc<Notify>>>,
    stopped: tokio::sync::watch::Sender<bool>,
}

impl Engine {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Store,
        departments: Departments,
        trust: Arc<TrustBundle>,
        retry: Retry,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            catalog,
            store,
            departments,
            trust,
            retry,
            changes: broadcast::channel(1024).0,
            lock: Arc::new(Mutex::new(())),
            wakers: StdMutex::new(HashMap::new()),
            stopped: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.changes.subscribe()
    }

    /// Stops every driver (they resume when the service starts again).
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    fn waker(&self, id: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(id.to_string()).or_default())
    }

    fn wake(&self, id: &str) {
        self.waker(id).notify_one();
    }

    fn forget(&self, id: &str) {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        w.remove(id);
    }

    fn bundle(&self, r: &Record) -> Result<&Bundle, BundleError> {
        self.catalog
            .bundle(&r.code)
            .ok_or_else(|| BundleError::UnknownBundle(r.code.clone()))
    }

    /// Stores a new bundle and starts driving it.
    pub async fn start(self: &Arc<Self>, r: Record) -> Result<Record, BundleError> {
        let guard = self.lock.clone().lock_owned().await;
        self.commit(guard, r.clone()).await?;
        self.drive(r.id.clone());
        Ok(r)
    }

    /// Applies `f` to bundle `id` under the lock; when it says it changed something, ends
    /// the bundle if every item is final, persists and announces it.
    async fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Record) -> bool,
    ) -> Result<Option<Record>, BundleError> {
        let guard = self.lock.clone().lock_owned().await;
        let Some(mut r) = self.store.get(id)? else {
            return Ok(None);
        };
        if r.is_final() || !f(&mut r) {
            return Ok(Some(r));
        }
        r.updated_at_ms = now_ms();
        if r.items.iter().all(ItemRec::is_final) {
            let done = r
                .items
                .iter()
                .all(|i| matches!(i.state(), ItemState::Completed | ItemState::Skipped));
            let state = if r.withdraw_requested {
                BundleState::Withdrawn
            } else if done {
                BundleState::Completed
            } else {
                BundleState::Partial
            };
            r.state = state as i32;
            tracing::info!(bundle = %r.id, code = %r.code, state = ?state, "bundle ended");
        }
        self.commit(guard, r.clone()).await?;
        Ok(Some(r))
    }

    /// Writes `r` and announces it, to the end even when the caller is dropped meanwhile (a
    /// follower aborted as its bundle ends, a client that hangs up): a change on disk that
    /// no watcher heard of leaves them waiting for it. `guard` is held until then.
    async fn commit(&self, guard: OwnedMutexGuard<()>, r: Record) -> Result<(), BundleError> {
        let (store, changes) = (self.store.clone(), self.changes.clone());
        tokio::spawn(async move {
            let _serialised = guard;
            store.put(&r).await?;
            let _ = changes.send(Arc::new(r));
            Ok(())
        })
        .await
        .map_err(|e| BundleError::Store(format!("the bundle's write did not finish: {e}")))?
    }

    /// Records what the department says of item `code`'s application.
    async fn record_application(
        &self,
        id: &str,
        code: &str,
        app: &Application,
    ) -> Result<(), BundleError> {
        self.update(id, |r| r.item_mut(code).is_some_and(|i| apply(i, app)))
            .await?;
        self.wake(id);
        Ok(())
    }

    /// Starts (or resumes) driving bundle `id` in the background.
    pub fn drive(self: &Arc<Self>, id: String) {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = engine.run(&id).await {
                tracing::error!(bundle = %id, %error, "bundle orchestration stopped");
            }
            engine.forget(&id);
        });
    }

    async fn run(self: &Arc<Self>, id: &str) -> Result<(), BundleError> {
        let notify = self.waker(id);
        let mut stopped = self.stopped.subscribe();
        let mut followers: JoinSet<()> = JoinSet::new();
        let mut following: HashSet<String> = HashSet::new();
        // When each item may be tried again (in memory: after a restart, at once).
        let mut next: HashMap<String, Instant> = HashMap::new();
        let secrets = {
            let Some(r) = self.store.get(id)? else {
                return Ok(());
            };
            self.store.open_sealed(&r)?
        };
        loop {
            if *stopped.borrow() {
                break;
            }
            let Some(r) = self.store.get(id)? else {
                break;
            };
            if r.is_final() {
                break;
            }
            let bundle = self.bundle(&r)?.clone();
            self.advance_waiting(id, &bundle).await?;
            let Some(r) = self.store.get(id)? else {
                break;
            };
            let now = Instant::now();
            for item in r.items.iter() {
                let due = next.get(&item.code).is_none_or(|t| *t <= now);
                match item.state() {
                    ItemState::Submitting if due && !r.withdraw_requested => {
                        if let Some(wait) = self.submit(&r, &bundle, item, &secrets).await? {
                            next.insert(item.code.clone(), Instant::now() + wait);
                        } else {
                            next.remove(&item.code);
                        }
                    }
                    ItemState::Submitted if r.withdraw_requested && due => {
                        if let Some(wait) = self.withdraw_item(&r, item, &secrets).await? {
                            next.insert(item.code.clone(), Instant::now() + wait);
                        }
                    }
                    ItemState::Submitted if !following.contains(&item.code) => {
                        if let Some(app) = item.application() {
                            following.insert(item.code.clone());
                            let engine = Arc::clone(self);
                            let (bid, code, target) =
                                (r.id.clone(), item.code.clone(), r.target_city.clone());
                            let secrets = secrets.clone();
                            followers.spawn(async move {
                                engine
                                    .follow(&bid, &code, &target, &app.application_id, &secrets)
                                    .await;
                            });
                        }
                    }
                    _ => {}
                }
            }
            if r.withdraw_requested {
                self.update(id, |r| {
                    let mut changed = false;
                    for i in r.items.iter_mut() {
                        if matches!(i.state(), ItemState::Waiting | ItemState::Submitting) {
                            i.set(ItemState::Withdrawn);
                            i.reason = "the bundle was withdrawn before this item was sent".into();
                            i.action.clear();
                            changed = true;
                        }
                    }
                    changed
                })
                .await?;
            }
            // Something to do at once (an item became ready), or wait for a change.
            let r = self.store.get(id)?;
            let ready = r.as_ref().is_some_and(|r| {
                r.items.iter().any(|i| {
                    i.state() == ItemState::Submitting && !next.contains_key(&i.code)
                        || i.state() == ItemState::Waiting && self.deps_settled(r, &i.code)
                })
            });
            if ready {
                continue;
            }
            let wake_at = next.values().min().copied();
            tokio::select! {
                () = notify.notified() => {}
                () = async {
                    match wake_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = stopped.changed() => {}
            }
        }
        followers.abort_all();
        Ok(())
    }

    fn deps_settled(&self, r: &Record, code: &str) -> bool {
        let Some(b) = self.catalog.bundle(&r.code) else {
            return false;
        };
        b.items.iter().find(|i| i.code == code).is_some_and(|i| {
            i.after
                .iter()
                .all(|a| r.item(a).is_none_or(ItemRec::is_final))
        })
    }

    /// Items whose prerequisites are settled: ready to submit, or blocked.
    async fn advance_waiting(&self, id: &str, bundle: &Bundle) -> Result<(), BundleError> {
        self.update(id, |r| {
            let mut changed = false;
            for b in &bundle.items {
                let Some(item) = r.item(&b.code) else {
                    continue;
                };
                if item.state() != ItemState::Waiting || r.withdraw_requested {
                    continue;
                }
                let deps: Vec<&ItemRec> = b.after.iter().filter_map(|a| r.item(a)).collect();
                if deps.iter().any(|d| !d.is_final()) {
                    continue;
                }
                let failed: Vec<String> = deps
                    .iter()
                    .filter(|d| !matches!(d.state(), ItemState::Completed | ItemState::Skipped))
                    .map(|d| d.code.clone())
                    .collect();
                let Some(i) = r.item_mut(&b.code) else {
                    continue;
                };
                if failed.is_empty() {
                    i.set(ItemState::Submitting);
                } else {
                    i.set(ItemState::Blocked);
                    i.reason =
                        format!("it waits for {}, which did not complete", failed.join(", "));
                    i.action = format!(
                        "once {} is done, apply for {} again",
                        failed.join(", "),
                        b.code
                    );
                }
                changed = true;
            }
            changed
        })
        .await?;
        Ok(())
    }

    /// Fields of item `code` taken from earlier items' results: the result document is
    /// verified with the trust bundle, then its `details` entry of the field's name is taken.
    fn result_fields(
        &self,
        r: &Record,
        bundle: &Bundle,
        code: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for ((item, field), src) in &bundle.from_results {
            if item != code {
                continue;
            }
            let app = r
                .item(src)
                .and_then(ItemRec::application)
                .ok_or_else(|| format!("{src} has no result"))?;
            let doc = tongban_crosscity::ecert::verify(
                &app.result,
                &self.trust,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|e| format!("the result of {src} does not verify: {e}"))?;
            let v = doc
                .details
                .get(field)
                .ok_or_else(|| format!("the result of {src} carries no `{field}`"))?;
            out.push((field.clone(), v.clone()));
        }
        Ok(out)
    }

    /// One submission attempt of `item`; when to try again, if it should be.
    async fn submit(
        &self,
        r: &Record,
        bundle: &Bundle,
        item: &ItemRec,
        secrets: &Secrets,
    ) -> Result<Option<Duration>, BundleError> {
        let code = item.code.as_str();
        let mut req = plan::item_request(
            &self.catalog,
            bundle,
            code,
            secrets,
            format!("{}/{code}", r.id),
        );
        match self.result_fields(r, bundle, code) {
            Ok(fields) => req.fields.extend(fields),
            Err(why) => {
                self.update(&r.id, |r| {
                    let Some(i) = r.item_mut(code) else {
                        return false;
                    };
                    i.set(ItemState::Rejected);
                    i.reason = why.clone();
                    i.action = format!("apply for {code} on its own, with the result it needs");
                    true
                })
                .await?;
                return Ok(None);
            }
        }
        let about = About {
            code,
            target_city: &r.target_city,
            applicant_id: &secrets.applicant_id,
            consent: &secrets.consent,
        };
        let first = if item.first_attempt_ms == 0 {
            now_ms()
        } else {
            item.first_attempt_ms
        };
        let result = self.departments.submit(req, &about).await;
        let deadline_ms = i64::try_from(self.retry.retry_for.as_millis()).unwrap_or(i64::MAX);
        let mut again = None;
        match result {
            Ok(app) => {
                tracing::info!(bundle = %r.id, code, application = %app.application_id, "item submitted");
                crash_point(code);
                // One write: the application and its state (final already, for a key
                // repeated after a crash).
                self.update(&r.id, |r| {
                    let Some(i) = r.item_mut(code) else {
                        return false;
                    };
                    i.attempts += 1;
                    i.first_attempt_ms = first;
                    i.reason.clear();
                    i.action.clear();
                    apply(i, &app);
                    true
                })
                .await?;
                self.wake(&r.id);
            }
            Err(status) if transient(&status) && now_ms().saturating_sub(first) < deadline_ms => {
                let wait = self.retry.backoff(item.attempts + 1);
                tracing::warn!(bundle = %r.id, code, code_status = ?status.code(), error = %status.message(), retry_in_ms = wait.as_millis() as u64, "item not submitted, retrying");
                self.update(&r.id, |r| {
                    let Some(i) = r.item_mut(code) else {
                        return false;
                    };
                    i.attempts += 1;
                    i.first_attempt_ms = first;
                    i.reason = format!("not reached yet: {}", status.message());
                    true
                })
                .await?;
                again = Some(wait);
            }
            Err(status) => {
                let gave_up = transient(&status);
                tracing::warn!(bundle = %r.id, code, code_status = ?status.code(), error = %status.message(), gave_up, "item not submitted");
                let org = self
                    .catalog
                    .item(code)
                    .and_then(|i| i.provider_in(&r.target_city))
                    .unwrap_or("its department")
                    .to_string();
                let city = r.target_city.clone();
                self.update(&r.id, |r| {
                    let Some(i) = r.item_mut(code) else {
                        return false;
                    };
                    i.attempts += 1;
                    i.first_attempt_ms = first;
                    if gave_up {
                        i.set(ItemState::Failed);
                        i.reason = format!(
                            "{org} of {city} could not be reached within {} s: {}",
                            self.retry.retry_for.as_secs(),
                            status.message()
                        );
                        i.action = format!(
                            "{code} was not submitted: apply for it again later, or at the service window of {city}"
                        );
                    } else {
                        i.set(ItemState::Rejected);
                        i.reason = status.message().to_string();
                        i.action = format!(
                            "{code} was refused ({:?}): correct what the message names and apply for {code} again",
                            status.code()
                        );
                    }
                    true
                })
                .await?;
            }
        }
        Ok(again)
    }

    /// Withdraws `item`'s application at its department; when to try again, if needed.
    async fn withdraw_item(
        &self,
        r: &Record,
        item: &ItemRec,
        secrets: &Secrets,
    ) -> Result<Option<Duration>, BundleError> {
        let Some(app) = item.application() else {
            return Ok(None);
        };
        let about = About {
            code: &item.code,
            target_city: &r.target_city,
            applicant_id: &secrets.applicant_id,
            consent: &secrets.consent,
        };
        let reason = if r.withdraw_reason.is_empty() {
            format!("bundle {} withdrawn", r.id)
        } else {
            format!("bundle {} withdrawn: {}", r.id, r.withdraw_reason)
        };
        match self
            .departments
            .withdraw(&app.application_id, &reason, &about)
            .await
        {
            Ok(app) => {
                self.record_application(&r.id, &item.code, &app).await?;
                Ok(None)
            }
            // Final meanwhile (completed or rejected): its state is recorded as it is.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                if let Ok(app) = self.departments.get(&app.application_id, &about).await {
                    self.record_application(&r.id, &item.code, &app).await?;
                }
                Ok(Some(self.retry.first_backoff))
            }
            Err(s) if transient(&s) => Ok(Some(self.retry.backoff(2))),
            Err(s) => {
                let code = item.code.clone();
                self.update(&r.id, |r| {
                    let Some(i) = r.item_mut(&code) else {
                        return false;
                    };
                    i.set(ItemState::Failed);
                    i.reason = format!("could not be withdrawn: {}", s.message());
                    i.action = format!(
                        "withdraw application {} of {code} at its department",
                        app.application_id
                    );
                    true
                })
                .await?;
                Ok(None)
            }
        }
    }

    /// Follows item `code`'s application to its end, reporting each state; reconnects when
    /// the stream breaks.
    async fn follow(&self, id: &str, code: &str, target: &str, app_id: &str, secrets: &Secrets) {
        let about = About {
            code,
            target_city: target,
            applicant_id: &secrets.applicant_id,
            consent: &secrets.consent,
        };
        let mut attempts = 0u32;
        loop {
            let failure = match self.departments.watch(app_id, &about).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(app)) => {
                            attempts = 0;
                            let end = matches!(
                                State::try_from(app.state),
                                Ok(State::Completed | State::Rejected | State::Withdrawn)
                            );
                            if let Err(error) = self.record_application(id, code, &app).await {
                                tracing::error!(bundle = %id, code, %error, "cannot record an item's state");
                            }
                            if end {
                                return;
                            }
                        }
                        Ok(None) => break None,
                        Err(s) => break Some(s),
                    }
                },
                Err(s) => Some(s),
            };
            if let Some(s) = failure {
                if !transient(&s) {
                    tracing::warn!(bundle = %id, code, error = %s.message(), "item can no longer be followed");
                    let _ = self
                        .update(id, |r| {
                            let Some(i) = r.item_mut(code) else {
                                return false;
                            };
                            i.set(ItemState::Failed);
                            i.reason = format!(
                                "its application can no longer be followed: {}",
                                s.message()
                            );
                            i.action =
                                format!("follow application {app_id} of {code} at its department");
                            true
                        })
                        .await;
                    self.wake(id);
                    return;
                }
            }
            attempts += 1;
            tokio::time::sleep(self.retry.backoff(attempts)).await;
        }
    }

    /// Asks for the withdrawal of bundle `id` (its driver withdraws the items), then waits a
    /// bounded time for it to end.
    pub async fn withdraw(
        &self,
        id: &str,
        reason: &str,
        allowed: impl FnOnce(&Record) -> bool,
    ) -> Result<Record, BundleError> {
        let mut changes = self.subscribe();
        {
            let guard = self.lock.clone().lock_owned().await;
            let mut r = self
                .store
                .get(id)?
                .ok_or_else(|| BundleError::NotFound(id.to_string()))?;
            if !allowed(&r) {
                return Err(BundleError::NotFound(id.to_string()));
            }
            if r.is_final() {
                return Err(BundleError::Final {
                    id: id.to_string(),
                    state: state_name(r.state()),
                });
            }
            if !r.withdraw_requested {
                r.withdraw_requested = true;
                r.withdraw_reason = reason.trim().chars().take(200).collect();
                r.updated_at_ms = now_ms();
                self.commit(guard, r).await?;
            }
        }
        self.wake(id);
        let wait = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                c = changes.recv() => match c {
                    Ok(r) if r.id == id && r.is_final() => return Ok((*r).clone()),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        self.store
            .get(id)?
            .ok_or_else(|| BundleError::NotFound(id.to_string()))
    }
}

/// Fault injection for the crash tests: with `TONGBAN_FAULT_ABORT_AFTER_SUBMIT=<item code>`
/// in its environment, the process aborts (like kill -9: nothing flushed, nothing run) right
/// after that item's department took the submission and before the bundle recorded it, the
/// window the idempotency key exists for.
fn crash_point(code: &str) {
    if std::env::var("TONGBAN_FAULT_ABORT_AFTER_SUBMIT").is_ok_and(|c| c == code) {
        tracing::warn!(code, "fault injected: aborting after the submission");
        std::process::abort();
    }
}

/// What the department says of an item's application, applied to the item; whether it
/// changed anything.
fn apply(i: &mut ItemRec, app: &Application) -> bool {
    if i.is_final() || i.application().as_ref() == Some(app) {
        return false;
    }
    i.set_application(app);
    let code = i.code.clone();
    match State::try_from(app.state).unwrap_or(State::Unspecified) {
        State::Completed => {
            i.set(ItemState::Completed);
            i.action.clear();
        }
        State::Rejected => {
            i.set(ItemState::Rejected);
            i.reason = app.rejection_reason.clone();
            i.action = format!(
                "{} of {} did not accept {code} ({}): provide what it asks for and apply for {code} again",
                app.provider_org, app.provider_city, app.rejection_reason
            );
        }
        State::Withdrawn => i.set(ItemState::Withdrawn),
        _ => i.set(ItemState::Submitted),
    }
    true
}

pub fn state_name(s: BundleState) -> &'static str {
    match s {
        BundleState::Unspecified => "unspecified",
        BundleState::InProgress => "in progress",
        BundleState::Completed => "completed",
        BundleState::Partial => "partial",
        BundleState::Withdrawn => "withdrawn",
    }
}

pub fn item_state_name(s: ItemState) -> &'static str {
    match s {
        ItemState::Unspecified => "unspecified",
        ItemState::Waiting => "waiting",
        ItemState::Submitting => "submitting",
        ItemState::Submitted => "submitted",
        ItemState::Completed => "completed",
        ItemState::Rejected => "rejected",
        ItemState::Failed => "failed",
        ItemState::Blocked => "blocked",
        ItemState::Withdrawn => "withdrawn",
        ItemState::Skipped => "skipped",
    }
}
