//! Reports and decisions in sled. A report is stored without its patient's id (a keyed
//! pseudonym indexes it, a masked id is kept for display) and its attachment apart, so that
//! a query reads headers only. Writes are flushed before they are acknowledged.

use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};
use tongban_proto::medical::v1::Report;

use crate::error::MedicalError;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    reports: sled::Tree,
    attachments: sled::Tree,
    owners: sled::Tree,
    by_patient: sled::Tree,
    /// `institution_code/report_id` → registry id (a republished report keeps its id).
    sources: sled::Tree,
    decisions: sled::Tree,
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

impl Store {
    pub async fn open(dir: &Path) -> Result<Store, MedicalError> {
        let db = tongban_gateway::store::sled::open_db(&dir.join("results"), 16 * 1024 * 1024)
            .await
            .map_err(|e| MedicalError::Store(e.to_string()))?;
        Ok(Store {
            reports: db.open_tree("reports")?,
            attachments: db.open_tree("attachments")?,
            owners: db.open_tree("owners")?,
            by_patient: db.open_tree("by_patient")?,
            sources: db.open_tree("sources")?,
            decisions: db.open_tree("decisions")?,
            db,
        })
    }

    async fn flush(&self) -> Result<(), MedicalError> {
        tongban_gateway::store::sled::flush(&self.db).await?;
        Ok(())
    }

    /// Stores a report (its `patient_id` already masked) for the patient `pseudonym`, under
    /// its registry id: the one it already has when the same institution published the same
    /// report id before (for the same patient), `new_id` otherwise. Returns the registry id.
    pub async fn put_report(
        &self,
        mut report: Report,
        pseudonym: &str,
        new_id: String,
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
        let attachment = std::mem::take(&mut report.attachment);
        self.reports.insert(id.as_bytes(), report.encode_to_vec())?;
        self.attachments.insert(id.as_bytes(), attachment)?;
        self.owners.insert(id.as_bytes(), pseudonym.as_bytes())?;
        self.by_patient
            .insert(format!("{pseudonym}/{id}").as_bytes(), &[])?;
        self.sources.insert(source.as_bytes(), id.as_bytes())?;
        self.flush().await?;
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

    pub fn attachment(&self, id: &str) -> Result<Vec<u8>, MedicalError> {
        Ok(self
            .attachments
            .get(id.as_bytes())?
            .map(|v| v.to_vec())
            .unwrap_or_default())
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
            .put_report(report("QILU", "R1"), "p-a", "id-1".into())
            .await
            .unwrap();
        assert_eq!(first, "id-1");
        // Republished (an amendment): the same registry id, still one report of p-a.
        let again = store
            .put_report(report("QILU", "R1"), "p-a", "id-2".into())
            .await
            .unwrap();
        assert_eq!(again, "id-1");
        assert_eq!(store.reports_of("p-a").unwrap().len(), 1);
        assert_eq!(store.report("id-1").unwrap().unwrap().0.registry_id, "id-1");
        // The same institution's id for another patient: refused, nothing replaced.
        let e = store
            .put_report(report("QILU", "R1"), "p-b", "id-3".into())
            .await
            .unwrap_err();
        assert!(matches!(e, MedicalError::OtherPatientsReport(_)), "{e}");
        assert_eq!(store.report("id-1").unwrap().unwrap().1, "p-a");
        // Another institution's report with the same id is another report.
        let other = store
            .put_report(report("COMMUNITY", "R1"), "p-b", "id-4".into())
            .await
            .unwrap();
        assert_eq!(other, "id-4");
        assert_eq!(store.reports_of("p-a").unwrap().len(), 1);
        assert_eq!(store.reports_of("p-b").unwrap().len(), 1);
        // Not found by the institution's id.
        assert!(store.report("R1").unwrap().is_none());
    }
}
