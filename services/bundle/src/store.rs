//! Bundles in sled: one record per bundle (JSON), flushed before any step that depends on it
//! is taken, so that a restarted service resumes where it was.
//!
//! What the orchestration needs in clear to submit the items later (the applicant's id, the
//! consent token, the form and the materials) is sealed with AES-256-GCM under a key kept in
//! the data directory (`bundle-seal.key`, mode 0600): the store alone never reveals a citizen.
//! The record keeps only the keyed pseudonym of the applicant and a masked id in clear.

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tongban_gateway::store::secret::{FileSecrets, SecretSource};
use tongban_proto::bundle::v1::{BundleState, BundleStatus, ItemState, ItemStatus};
use tongban_proto::crosscity::v2::{Application, MaterialRef};

use crate::error::BundleError;

/// What is sealed: the clear values the items are submitted with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secrets {
    pub applicant_id: String,
    pub consent: String,
    /// The bundle's form, as submitted (normalised).
    pub fields: BTreeMap<String, String>,
    pub materials: Vec<Material>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Material {
    pub kind: String,
    pub uri: String,
    pub sha256: String,
}

impl From<&Material> for MaterialRef {
    fn from(m: &Material) -> MaterialRef {
        MaterialRef {
            kind: m.kind.clone(),
            uri: m.uri.clone(),
            sha256: m.sha256.clone(),
        }
    }
}

/// One item of a bundle as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemRec {
    pub code: String,
    pub state: i32,
    /// The department's application (prost bytes, base64), once submitted.
    #[serde(default)]
    pub application: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub attempts: u32,
    /// When the first submission attempt was made (its deadline counts from there).
    #[serde(default)]
    pub first_attempt_ms: i64,
}

impl ItemRec {
    pub fn state(&self) -> ItemState {
        ItemState::try_from(self.state).unwrap_or(ItemState::Unspecified)
    }

    pub fn set(&mut self, state: ItemState) {
        self.state = state as i32;
    }

    pub fn is_final(&self) -> bool {
        !matches!(
            self.state(),
            ItemState::Waiting | ItemState::Submitting | ItemState::Submitted
        )
    }

    pub fn application(&self) -> Option<Application> {
        if self.application.is_empty() {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.application)
            .ok()?;
        Application::decode(bytes.as_slice()).ok()
    }

    pub fn set_application(&mut self, app: &Application) {
        self.application = base64::engine::general_purpose::STANDARD.encode(app.encode_to_vec());
    }
}

/// A bundle as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub code: String,
    pub target_city: String,
    pub state: i32,
    /// Keyed pseudonym of the applicant.
    pub subject: String,
    pub applicant_masked: String,
    /// Who submitted it (`x-tongban-caller`).
    pub caller: String,
    pub by_citizen: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub items: Vec<ItemRec>,
    /// [`Secrets`], sealed: base64 of nonce ‖ ciphertext.
    pub sealed: String,
    /// The bundle is being withdrawn: its driver withdraws every item not final.
    #[serde(default)]
    pub withdraw_requested: bool,
    #[serde(default)]
    pub withdraw_reason: String,
}

impl Record {
    pub fn state(&self) -> BundleState {
        BundleState::try_from(self.state).unwrap_or(BundleState::Unspecified)
    }

    pub fn is_final(&self) -> bool {
        !matches!(self.state(), BundleState::InProgress)
    }

    pub fn item(&self, code: &str) -> Option<&ItemRec> {
        self.items.iter().find(|i| i.code == code)
    }

    pub fn item_mut(&mut self, code: &str) -> Option<&mut ItemRec> {
        self.items.iter_mut().find(|i| i.code == code)
    }

    /// The wire form.
    pub fn to_wire(&self) -> BundleStatus {
        let items: Vec<ItemStatus> = self
            .items
            .iter()
            .map(|i| ItemStatus {
                code: i.code.clone(),
                state: i.state,
                application: i.application(),
                reason: i.reason.clone(),
                action: i.action.clone(),
                attempts: i.attempts,
            })
            .collect();
        let due_date = items
            .iter()
            .filter_map(|i| i.application.as_ref().map(|a| a.due_date.clone()))
            .max()
            .unwrap_or_default();
        let action = self
            .items
            .iter()
            .filter(|i| !i.action.is_empty())
            .map(|i| format!("{}: {}", i.code, i.action))
            .collect();
        BundleStatus {
            bundle_id: self.id.clone(),
            bundle_code: self.code.clone(),
            target_city: self.target_city.clone(),
            state: self.state,
            items,
            due_date,
            applicant_masked: self.applicant_masked.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            action,
        }
    }
}

/// What an idempotency key of a Submit was first used for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyed {
    pub id: String,
    pub digest: String,
}

/// The bundle store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    bundles: sled::Tree,
    by_subject: sled::Tree,
    keys: sled::Tree,
    seal: std::sync::Arc<LessSafeKey>,
}

const SEAL_KEY: &str = "bundle-seal.key";

impl Store {
    pub async fn open(dir: &Path) -> Result<Store, BundleError> {
        std::fs::create_dir_all(dir).map_err(|e| BundleError::Store(e.to_string()))?;
        let secret = FileSecrets::new(dir)
            .secret(SEAL_KEY, 32)
            .map_err(|e| BundleError::Store(format!("the seal key: {e}")))?;
        let key = UnboundKey::new(&AES_256_GCM, &secret)
            .map_err(|_| BundleError::Store("the seal key is not 32 bytes".into()))?;
        let db = tongban_gateway::store::sled::open_db(&dir.join("bundles"), 16 * 1024 * 1024)
            .await
            .map_err(|e| BundleError::Store(e.to_string()))?;
        Ok(Store {
            bundles: db.open_tree("bundles")?,
            by_subject: db.open_tree("by_subject")?,
            keys: db.open_tree("idempotency_keys")?,
            db,
            seal: std::sync::Arc::new(LessSafeKey::new(key)),
        })
    }

    /// Seals `secrets` for the record `id` (the id is the associated data: a sealed value
    /// moved to another record does not open).
    pub fn seal(&self, id: &str, secrets: &Secrets) -> Result<String, BundleError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| BundleError::Store("no randomness".into()))?;
        let mut buf = serde_json::to_vec(secrets)?;
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| BundleError::Store("cannot seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn open_sealed(&self, r: &Record) -> Result<Secrets, BundleError> {
        let bad = || BundleError::Store(format!("bundle {}: the sealed part does not open", r.id));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&r.sealed)
            .map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (n, c) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| bad())?;
        let mut buf = c.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(r.id.as_bytes()), &mut buf)
            .map_err(|_| bad())?;
        Ok(serde_json::from_slice(plain)?)
    }

    /// Claims `key` of `caller` for `keyed`, atomically: `None` when it was free.
    pub fn claim_key(
        &self,
        caller: &str,
        key: &str,
        keyed: &Keyed,
    ) -> Result<Option<Keyed>, BundleError> {
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

    /// Writes a record (and its index entry) and flushes before returning.
    pub async fn put(&self, r: &Record) -> Result<(), BundleError> {
        self.bundles
            .insert(r.id.as_bytes(), serde_json::to_vec(r)?)?;
        let inverted = u64::MAX - u64::try_from(r.created_at_ms).unwrap_or(0);
        self.by_subject
            .insert(format!("{}/{inverted:020}/{}", r.subject, r.id), &[])?;
        tongban_gateway::store::sled::flush(&self.db)
            .await
            .map_err(|e| BundleError::Store(e.to_string()))?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, BundleError> {
        match self.bundles.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        }
    }

    /// Bundles that are not final (resumed after a restart).
    pub fn open_bundles(&self) -> Result<Vec<Record>, BundleError> {
        let mut out = Vec::new();
        for kv in self.bundles.iter() {
            let (_, v) = kv?;
            let r: Record = serde_json::from_slice(&v)?;
            if !r.is_final() {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Up to `limit` bundles of `pseudonym` that `keep` keeps, newest first.
    pub fn by_subject(
        &self,
        pseudonym: &str,
        limit: usize,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, BundleError> {
        let mut out = Vec::new();
        for kv in self.by_subject.scan_prefix(format!("{pseudonym}/")) {
            let (k, _) = kv?;
            let id = k.rsplit(|b| *b == b'/').next().unwrap_or_default();
            let id = String::from_utf8_lossy(id).into_owned();
            if let Some(r) = self.get(&id)?.filter(|r| keep(r)) {
                out.push(r);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            code: "JQB-01".into(),
            target_city: "qingdao".into(),
            state: BundleState::InProgress as i32,
            subject: "p".into(),
            applicant_masked: "370***********002X".into(),
            caller: "jinan/portal".into(),
            by_citizen: true,
            created_at_ms: 1,
            updated_at_ms: 1,
            items: Vec::new(),
            sealed: String::new(),
            withdraw_requested: false,
            withdraw_reason: String::new(),
        }
    }

    #[tokio::test]
    async fn sealed_secrets_open_only_in_their_own_record_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets {
            applicant_id: "37010219850312002X".into(),
            consent: "token".into(),
            fields: BTreeMap::from([("to_division".into(), "370202".into())]),
            materials: Vec::new(),
        };
        let mut r = record("b-1");
        {
            let s = Store::open(dir.path()).await.unwrap();
            r.sealed = s.seal("b-1", &secrets).unwrap();
            s.put(&r).await.unwrap();
        }
        let raw = std::fs::read_dir(dir.path().join("bundles"))
            .unwrap()
            .count();
        assert!(raw > 0);
        let s = Store::open(dir.path()).await.unwrap();
        let back = s.get("b-1").unwrap().unwrap();
        assert!(!back.sealed.contains("37010219850312002X"));
        assert_eq!(s.open_sealed(&back).unwrap(), secrets);
        // Moved to another record, it does not open.
        let mut other = record("b-2");
        other.sealed = back.sealed.clone();
        assert!(s.open_sealed(&other).is_err());
    }
}
