//! Applications in sled: one record per application (JSON), and an index by the applicant's
//! pseudonym, newest first, for portals. Every write is flushed before it is acknowledged,
//! so an application a caller was told about survives a crash of the provider.
//!
//! The applicant's identity number is never stored: only its keyed pseudonym (the secret
//! stays in the data directory) and a masked form.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tongban_proto::crosscity::v2::{Application, State, Transition};

use crate::error::CrossCityError;

/// An application as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub id: String,
    pub code: String,
    pub state: i32,
    pub provider_city: String,
    pub provider_org: String,
    pub origin_city: String,
    pub applicant_masked: String,
    /// Keyed pseudonym of the applicant's id.
    pub subject: String,
    /// Who submitted it (`x-tongban-caller`, e.g. `jinan/hrss`).
    pub caller: String,
    /// Submitted by the citizen themselves (through a portal): the portal's organisation
    /// does not make its other callers the submitter.
    #[serde(default)]
    pub by_citizen: bool,
    /// The person who submitted it, as the node vouched (an official's id; a citizen's
    /// pseudonym at their home node).
    #[serde(default)]
    pub submitted_by: String,
    pub received_at_ms: i64,
    pub due_date: String,
    pub history: Vec<Step>,
    pub fields: BTreeMap<String, String>,
    pub materials: Vec<Material>,
    pub rejection_reason: String,
    pub result_kind: String,
    /// The signed result document (JSON), once completed.
    pub result: Option<String>,
}

/// A material the application references (kept so that the department can fetch it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Material {
    pub kind: String,
    pub uri: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub state: i32,
    pub at_ms: i64,
    pub note: String,
}

impl Stored {
    pub fn state(&self) -> State {
        State::try_from(self.state).unwrap_or(State::Unspecified)
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self.state(),
            State::Completed | State::Rejected | State::Withdrawn
        )
    }

    /// Moves to `state` at `at_ms`, recording the step.
    pub fn enter(&mut self, state: State, at_ms: i64, note: impl Into<String>) {
        self.state = state as i32;
        self.history.push(Step {
            state: state as i32,
            at_ms,
            note: note.into(),
        });
    }

    /// The wire form.
    pub fn to_wire(&self) -> Application {
        Application {
            application_id: self.id.clone(),
            catalog_code: self.code.clone(),
            state: self.state,
            provider_city: self.provider_city.clone(),
            provider_org: self.provider_org.clone(),
            origin_city: self.origin_city.clone(),
            applicant_masked: self.applicant_masked.clone(),
            received_at_ms: self.received_at_ms,
            due_date: self.due_date.clone(),
            history: self
                .history
                .iter()
                .map(|s| Transition {
                    state: s.state,
                    at_ms: s.at_ms,
                    note: s.note.clone(),
                })
                .collect(),
            rejection_reason: self.rejection_reason.clone(),
            result_kind: self.result_kind.clone(),
            result: self
                .result
                .clone()
                .map(String::into_bytes)
                .unwrap_or_default(),
        }
    }
}

/// The application store of one provider.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    apps: sled::Tree,
    by_subject: sled::Tree,
    /// `caller NUL key` → the application a keyed submission created, and the digest of that
    /// submission.
    keys: sled::Tree,
}

/// What an idempotency key was first used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyed {
    pub id: String,
    pub digest: String,
}

/// Index key: pseudonym, then the inverted receipt time (newest first), then the id.
fn subject_key(s: &Stored) -> Vec<u8> {
    let inverted = u64::MAX - u64::try_from(s.received_at_ms).unwrap_or(0);
    format!("{}/{inverted:020}/{}", s.subject, s.id).into_bytes()
}

impl Store {
    /// Opens the store under `dir` (waiting a bounded time for a previous instance that is
    /// still closing it).
    pub async fn open(dir: &Path) -> Result<Store, CrossCityError> {
        let db = tongban_gateway::store::sled::open_db(&dir.join("applications"), 16 * 1024 * 1024)
            .await
            .map_err(|e| CrossCityError::Store(e.to_string()))?;
        Ok(Store {
            apps: db.open_tree("apps")?,
            by_subject: db.open_tree("by_subject")?,
            keys: db.open_tree("idempotency_keys")?,
            db,
        })
    }

    /// Claims `key` of `caller` for `keyed`, atomically: `None` when it was free (now it is
    /// this submission's; made durable by the application's own `put`), else what it was
    /// first used for.
    pub fn claim_key(
        &self,
        caller: &str,
        key: &str,
        keyed: &Keyed,
    ) -> Result<Option<Keyed>, CrossCityError> {
        let k = format!("{caller}\0{key}");
        let v = serde_json::to_vec(keyed)?;
        match self
            .keys
            .compare_and_swap(k.as_bytes(), None as Option<&[u8]>, Some(v))?
        {
            Ok(()) => Ok(None),
            Err(e) => Ok(e.current.map(|c| serde_json::from_slice(&c)).transpose()?),
        }
    }

    /// A new, never reused sequence number for an application id.
    pub fn next_seq(&self) -> Result<u64, CrossCityError> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Writes a record (and its index entry) and flushes before returning.
    pub async fn put(&self, s: &Stored) -> Result<(), CrossCityError> {
        self.apps.insert(s.id.as_bytes(), serde_json::to_vec(s)?)?;
        self.by_subject.insert(subject_key(s), &[])?;
        tongban_gateway::store::sled::flush(&self.db).await?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Stored>, CrossCityError> {
        match self.apps.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    /// Every application, one at a time (reports read a department's states this way, in
    /// bounded memory).
    pub fn each(&self, mut f: impl FnMut(Stored)) -> Result<(), CrossCityError> {
        for kv in self.apps.iter() {
            let (_, v) = kv?;
            f(serde_json::from_slice(&v)?);
        }
        Ok(())
    }

    /// Applications that are not final (resumed after a restart).
    pub fn open_applications(&self) -> Result<Vec<Stored>, CrossCityError> {
        let mut out = Vec::new();
        for kv in self.apps.iter() {
            let (_, v) = kv?;
            let s: Stored = serde_json::from_slice(&v)?;
            if !s.is_final() {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Up to `limit` applications of the subject `pseudonym` that `keep` keeps (those the
    /// caller may see), newest first, after the index key `after` (the page token); also the
    /// token of the next page, only when there is one.
    pub fn by_subject(
        &self,
        pseudonym: &str,
        after: Option<&[u8]>,
        limit: usize,
        keep: impl Fn(&Stored) -> bool,
    ) -> Result<(Vec<Stored>, Option<Vec<u8>>), CrossCityError> {
        let prefix = format!("{pseudonym}/").into_bytes();
        let start = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for kv in self.by_subject.range(start..) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let id = k.rsplit(|b| *b == b'/').next().unwrap_or_default();
            let id = String::from_utf8_lossy(id).into_owned();
            let Some(s) = self.get(&id)?.filter(|s| keep(s)) else {
                continue;
            };
            if out.len() == limit {
                return Ok((out, last));
            }
            out.push(s);
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }
}
