//! Reports and decisions in sled, attachments in files. A report is stored without its
//! patient's id (a keyed pseudonym indexes it, a masked id is kept for display) and its
//! attachment apart, so that a query reads headers only. Writes are flushed before they are
//! acknowledged.
//!
//! An attachment (a CT study runs to hundreds of MiB) never sits in memory whole: it is
//! written to `attachments/staging/` as it arrives ([`Staging`]), hashed on the way, synced,
//! and then renamed to `attachments/<registry id>.<uuid>` when its report is stored; the
//! report's header names that file. A republished report gets a new file and its old one is
//! removed after the new header is durable. What a crash leaves half-done (a staged file, a
//! renamed file whose header never landed) is removed when the store opens.

use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tongban_proto::medical::v1::Report;

use crate::error::MedicalError;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    reports: sled::Tree,
    /// Attachments of reports published before attachments moved to files: read, never
    /// written (a republished report moves its attachment to a file).
    attachments: sled::Tree,
    /// registry id → the name of its attachment's file under `files`.
    attachment_files: sled::Tree,
    files: PathBuf,
    owners: sled::Tree,
    by_patient: sled::Tree,
    /// `institution_code/report_id` → registry id (a republished report keeps its id).
    sources: sled::Tree,
    decisions: sled::Tree,
    verdicts: sled::Tree,
}

/// A physician's decision as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: String,
    pub at_ms: i64,
    pub origin_city: String,
    pub report_id: String,
    pub result_id: String,
    pub item: String,
    pub decision: i32,
    pub reason: i32,
    pub reason_text: String,
    pub physician: String,
    pub caller: String,
}

/// A recognition verdict this registry gave in answer to a query: the regulators' report
/// counts results queried, eligible and not (by reason) from these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictRecord {
    pub at_ms: i64,
    /// The city of this registry (where the result was produced and is held).
    pub held_by: String,
    /// The patient's keyed pseudonym at this registry.
    pub patient: String,
    /// The report the result is in (its id as Query returns it, which decisions name).
    #[serde(default)]
    pub report_id: String,
    /// The recognition item (empty: the result maps to none).
    pub item: String,
    /// The city that asked (its caller's city).
    pub asked_by: String,
    pub eligible: bool,
    pub reasons: Vec<String>,
}

/// An attachment being received: written to a staging file as it comes, hashed, counted
/// against the limit. Dropped unfinished (the publisher went away, the upload was refused),
/// its file is removed.
pub struct Staging {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

/// A received attachment, synced to disk, waiting for its report to be stored. Removed when
/// dropped unstored.
pub struct Staged {
    path: Option<PathBuf>,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl Staging {
    /// Appends a chunk; past the limit, the upload is refused (and its file removed on drop).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), MedicalError> {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        if self.bytes.saturating_add(len) > self.limit {
            return Err(MedicalError::AttachmentTooLarge(self.limit));
        }
        self.file.write_all(chunk).await.map_err(io)?;
        self.hasher.update(chunk);
        self.bytes += len;
        Ok(())
    }

    /// Syncs the file: the attachment is durable before its report is acknowledged.
    pub async fn finish(mut self) -> Result<Staged, MedicalError> {
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let path = std::mem::take(&mut self.path);
        Ok(Staged {
            path: Some(path),
            bytes: self.bytes,
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Staged {
    /// No attachment.
    pub fn none() -> Staged {
        Staged {
            path: None,
            bytes: 0,
            sha256: String::new(),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A stored attachment, opened for reading.
pub enum Attachment {
    None,
    File(tokio::fs::File),
    /// Published before attachments moved to files.
    Inline(Vec<u8>),
}

fn io(e: std::io::Error) -> MedicalError {
    MedicalError::Store(format!("attachment file: {e}"))
}

/// Syncs a directory, so that a rename in it is durable.
async fn sync_dir(dir: &Path) -> Result<(), MedicalError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| MedicalError::Store(format!("sync task failed: {e}")))?
        .map_err(io)
}

impl Store {
    pub async fn open(dir: &Path) -> Result<Store, MedicalError> {
        let db = tongban_gateway::store::sled::open_db(&dir.join("results"), 16 * 1024 * 1024)
            .await
            .map_err(|e| MedicalError::Store(e.to_string()))?;
        let files = dir.join("attachments");
        let store = Store {
            reports: db.open_tree("reports")?,
            attachments: db.open_tree("attachments")?,
            attachment_files: db.open_tree("attachment_files")?,
            files,
            owners: db.open_tree("owners")?,
            by_patient: db.open_tree("by_patient")?,
            sources: db.open_tree("sources")?,
            decisions: db.open_tree("decisions")?,
            verdicts: db.open_tree("verdicts")?,
            db,
        };
        store.sweep()?;
        Ok(store)
    }

    /// Removes what a crash left half-done: staged files, and attachment files no header
    /// names.
    fn sweep(&self) -> Result<(), MedicalError> {
        let staging = self.files.join("staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io)?;
        let mut named = std::collections::HashSet::new();
        for kv in self.attachment_files.iter() {
            let (_, v) = kv?;
            named.insert(String::from_utf8_lossy(&v).into_owned());
        }
        for entry in std::fs::read_dir(&self.files).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map_err(io)?.is_file() && !named.contains(&name) {
                tracing::warn!(file = %name, "removing an attachment file no report names (an interrupted publish)");
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        Ok(())
    }

    /// A new attachment upload of at most `limit` bytes.
    pub async fn stage(&self, limit: u64) -> Result<Staging, MedicalError> {
        let path = self
            .files
            .join("staging")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create(&path).await.map_err(io)?;
        Ok(Staging {
            file,
            path,
            hasher: Sha256::new(),
            bytes: 0,
            limit,
        })
    }

    /// An attachment held in memory (a unary Publish), staged like a streamed one.
    pub async fn stage_bytes(&self, bytes: &[u8], limit: u64) -> Result<Staged, MedicalError> {
        let mut s = self.stage(limit).await?;
        s.write(bytes).await?;
        s.finish().await
    }

    async fn flush(&self) -> Result<(), MedicalError> {
        tongban_gateway::store::sled::flush(&self.db).await?;
        Ok(())
    }

    /// Stores a report (its `patient_id` already masked) for the patient `pseudonym`, under
    /// its registry id: the one it already has when the same institution published the same
    /// report id before (for the same patient), `new_id` otherwise, with its `attachment`.
    /// Returns the registry id.
    pub async fn put_report(
        &self,
        mut report: Report,
        pseudonym: &str,
        new_id: String,
        mut attachment: Staged,
    ) -> Result<String, MedicalError> {
        let source = format!("{}/{}", report.institution_code, report.report_id);
        let id = match self.sources.get(source.as_bytes())? {
            Some(v) => {
                let id = String::from_utf8_lossy(&v).into_owned();
                let owner = self.owners.get(id.as_bytes())?;
                if owner.as_deref().is_some_and(|o| o != pseudonym.as_bytes()) {
                    return Err(MedicalError::OtherPatientsReport(report.report_id));
                }
                id
            }
            None => new_id,
        };
        report.registry_id = id.clone();
        report.attachment.clear();
        report.attachment_bytes = attachment.bytes;
        report.attachment_sha256 = if attachment.bytes == 0 {
            String::new()
        } else {
            attachment.sha256.clone()
        };
        // The file first (renamed and synced), then the header that names it.
        let old = match attachment.path.take() {
            Some(staged) if attachment.bytes > 0 => {
                let name = format!("{id}.{}", uuid::Uuid::new_v4().simple());
                if let Err(e) = tokio::fs::rename(&staged, self.files.join(&name)).await {
                    let _ = std::fs::remove_file(&staged);
                    return Err(io(e));
                }
                sync_dir(&self.files).await?;
                self.attachment_files
                    .insert(id.as_bytes(), name.as_bytes())?
            }
            staged => {
                if let Some(p) = staged {
                    let _ = std::fs::remove_file(p);
                }
                self.attachment_files.remove(id.as_bytes())?
            }
        };
        self.attachments.remove(id.as_bytes())?;
        self.reports.insert(id.as_bytes(), report.encode_to_vec())?;
        self.owners.insert(id.as_bytes(), pseudonym.as_bytes())?;
        self.by_patient
            .insert(format!("{pseudonym}/{id}").as_bytes(), &[])?;
        self.sources.insert(source.as_bytes(), id.as_bytes())?;
        self.flush().await?;
        if let Some(old) = old {
            // Readers that opened it keep reading it; new readers get the new one.
            let _ = std::fs::remove_file(self.files.join(String::from_utf8_lossy(&old).as_ref()));
        }
        Ok(id)
    }

    /// The report header and the pseudonym of its patient.
    pub fn report(&self, id: &str) -> Result<Option<(Report, String)>, MedicalError> {
        let Some(v) = self.reports.get(id.as_bytes())? else {
            return Ok(None);
        };
        let owner = self
            .owners
            .get(id.as_bytes())?
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default();
        let mut report = Report::decode(v.as_ref())?;
        if report.registry_id.is_empty() {
            // Published before registry ids: its key is the institution's id.
            report.registry_id = id.to_string();
        }
        Ok(Some((report, owner)))
    }

    /// The attachment of report `id`, opened for reading.
    pub async fn attachment(&self, id: &str) -> Result<Attachment, MedicalError> {
        // A republish may remove the file between reading its name and opening it: then the
        // name is read again.
        for _ in 0..3 {
            let Some(name) = self.attachment_files.get(id.as_bytes())? else {
                return Ok(match self.attachments.get(id.as_bytes())? {
                    Some(v) if !v.is_empty() => Attachment::Inline(v.to_vec()),
                    _ => Attachment::None,
                });
            };
            let path = self.files.join(String::from_utf8_lossy(&name).as_ref());
            match tokio::fs::File::open(&path).await {
                Ok(f) => return Ok(Attachment::File(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            }
        }
        Err(MedicalError::Store(format!(
            "the attachment of report `{id}` kept changing while it was opened"
        )))
    }

    /// Every report header of the patient `pseudonym`.
    pub fn reports_of(&self, pseudonym: &str) -> Result<Vec<Report>, MedicalError> {
        let mut out = Vec::new();
        for kv in self
            .by_patient
            .scan_prefix(format!("{pseudonym}/").as_bytes())
        {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[pseudonym.len() + 1..]).into_owned();
            if let Some((r, _)) = self.report(&id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub async fn put_decision(&self, d: &DecisionRecord) -> Result<(), MedicalError> {
        let key = format!("{:020}/{}", d.at_ms, d.id);
        self.decisions
            .insert(key.as_bytes(), serde_json::to_vec(d)?)?;
        self.flush().await
    }

    /// Records the verdicts given in answer to one query (one write, flushed with it).
    pub async fn put_verdicts(&self, v: &[VerdictRecord]) -> Result<(), MedicalError> {
        if v.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (i, r) in v.iter().enumerate() {
            let key = format!("{:020}/{}/{i}", r.at_ms, uuid::Uuid::new_v4().simple());
            batch.insert(key.as_bytes(), serde_json::to_vec(r)?);
        }
        self.verdicts.apply_batch(batch)?;
        self.flush().await
    }

    /// Every verdict recorded, one at a time (bounded memory).
    pub fn each_verdict(&self, mut f: impl FnMut(VerdictRecord)) -> Result<(), MedicalError> {
        for kv in self.verdicts.iter() {
            let (_, v) = kv?;
            f(serde_json::from_slice(&v)?);
        }
        Ok(())
    }

    /// Every decision recorded, one at a time.
    pub fn each_decision(&self, mut f: impl FnMut(DecisionRecord)) -> Result<(), MedicalError> {
        for kv in self.decisions.iter() {
            let (_, v) = kv?;
            f(serde_json::from_slice(&v)?);
        }
        Ok(())
    }

    /// Decisions recorded in `[from, until]`.
    pub fn decisions(
        &self,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<DecisionRecord>, MedicalError> {
        let start = format!("{:020}", from_ms.max(0));
        let mut out = Vec::new();
        for kv in self.decisions.range(start.as_bytes()..) {
            let (_, v) = kv?;
            let d: DecisionRecord = serde_json::from_slice(&v)?;
            if d.at_ms > until_ms {
                break;
            }
            out.push(d);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report(institution: &str, id: &str) -> Report {
        Report {
            report_id: id.into(),
            institution_code: institution.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_report_keeps_its_registry_id_and_institutions_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let first = store
            .put_report(report("QILU", "R1"), "p-a", "id-1".into(), Staged::none())
            .await
            .unwrap();
        assert_eq!(first, "id-1");
        // Republished (an amendment): the same registry id, still one report of p-a.
        let again = store
            .put_report(report("QILU", "R1"), "p-a", "id-2".into(), Staged::none())
            .await
            .unwrap();
        assert_eq!(again, "id-1");
        assert_eq!(store.reports_of("p-a").unwrap().len(), 1);
        assert_eq!(store.report("id-1").unwrap().unwrap().0.registry_id, "id-1");
        // The same institution's id for another patient: refused, nothing replaced.
        let e = store
            .put_report(report("QILU", "R1"), "p-b", "id-3".into(), Staged::none())
            .await
            .unwrap_err();
        assert!(matches!(e, MedicalError::OtherPatientsReport(_)), "{e}");
        assert_eq!(store.report("id-1").unwrap().unwrap().1, "p-a");
        // Another institution's report with the same id is another report.
        let other = store
            .put_report(
                report("COMMUNITY", "R1"),
                "p-b",
                "id-4".into(),
                Staged::none(),
            )
            .await
            .unwrap();
        assert_eq!(other, "id-4");
        assert_eq!(store.reports_of("p-a").unwrap().len(), 1);
        assert_eq!(store.reports_of("p-b").unwrap().len(), 1);
        // Not found by the institution's id.
        assert!(store.report("R1").unwrap().is_none());
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn an_upload_past_the_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let staging = dir.path().join("attachments").join("staging");
        let mut s = store.stage(10).await.unwrap();
        s.write(b"123456").await.unwrap();
        assert_eq!(files_in(&staging).len(), 1);
        let e = s.write(b"789012").await.unwrap_err();
        assert!(matches!(e, MedicalError::AttachmentTooLarge(10)), "{e}");
        drop(s);
        assert!(files_in(&staging).is_empty());
        // Exactly at the limit is taken.
        let staged = store.stage_bytes(b"0123456789", 10).await.unwrap();
        assert_eq!(staged.bytes, 10);
        // A staged attachment whose report is never stored is removed too.
        drop(staged);
        assert!(files_in(&staging).is_empty());
    }

    #[tokio::test]
    async fn opening_sweeps_what_an_interrupted_publish_left() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("attachments");
        let kept = {
            let store = Store::open(dir.path()).await.unwrap();
            let staged = store.stage_bytes(b"the study", 1 << 20).await.unwrap();
            let id = store
                .put_report(report("QILU", "CT1"), "p-a", "id-1".into(), staged)
                .await
                .unwrap();
            let (r, _) = store.report(&id).unwrap().unwrap();
            assert_eq!(r.attachment_bytes, 9);
            assert_eq!(
                r.attachment_sha256,
                hex::encode(Sha256::digest(b"the study"))
            );
            files_in(&files)
        };
        assert_eq!(kept.len(), 1);
        // A crash after the rename and before the header, and one mid-upload.
        std::fs::write(files.join("id-2.0123"), b"orphan").unwrap();
        std::fs::write(files.join("staging").join("half"), b"half").unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(files_in(&files), kept);
        assert!(files_in(&files.join("staging")).is_empty());
        let Attachment::File(mut f) = store.attachment("id-1").await.unwrap() else {
            panic!("no attachment file");
        };
        let mut back = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut f, &mut back)
            .await
            .unwrap();
        assert_eq!(back, b"the study");
    }
}
