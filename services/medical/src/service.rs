//! `tongban.medical.v1.ResultRegistry` of one city.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tongban_gateway::error::FieldViolation;
use tongban_gateway::subject::Pseudonymizer;
use tongban_proto::medical::v1::recognition_server::Recognition;
use tongban_proto::medical::v1::result_registry_server::ResultRegistry;
use tongban_proto::medical::v1::{
    report_chunk, DecideRequest, DecideResponse, Decision, FhirDocument, GetReportRequest,
    PublishRequest, PublishResponse, QueryRequest, QueryResponse, QueryResult, Report, ReportChunk,
    ReportKind, ReportStatus, RetestReason, StatisticsRequest, StatisticsResponse, StatisticsRow,
};
use tongban_proto::metadata::{CALLER, CATALOG_CODE, ORIGIN_CITY, SUBJECT};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::error::MedicalError;
use crate::rules::Rules;
use crate::store::{Attachment, DecisionRecord, Staged, Store};

/// Attachment bytes per streamed chunk.
pub const CHUNK: usize = 256 * 1024;

/// The largest attachment a registry takes by default (`--max-attachment-mib`).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 1 << 30;

/// The registry of one city.
#[derive(Clone)]
pub struct Registry {
    pub city: String,
    pub rules: Arc<Rules>,
    pub(crate) store: Store,
    pub(crate) pseudonyms: Arc<Pseudonymizer>,
    /// The largest attachment taken; larger uploads are refused (RESOURCE_EXHAUSTED).
    pub max_attachment_bytes: u64,
}

/// What the node told the registry.
struct Vouched {
    caller: String,
    origin_city: String,
    subject: Option<String>,
    /// `x-tongban-catalog-code`: the item the node checked the consent for.
    catalog_code: Option<String>,
}

impl Vouched {
    /// The call names `item`, the one its RPC serves (a consent covers only the items it
    /// names, and the node checked it against this one).
    fn naming(self, item: &'static str) -> Result<Vouched, MedicalError> {
        if self.catalog_code.as_deref() == Some(item) {
            Ok(self)
        } else {
            Err(MedicalError::ItemNotNamed(item))
        }
    }
}

fn vouched(md: &MetadataMap) -> Result<Vouched, MedicalError> {
    let text = |k: &str| {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(Vouched {
        caller: text(CALLER).ok_or(MedicalError::NotThroughNode)?,
        origin_city: text(ORIGIN_CITY).unwrap_or_default(),
        subject: text(SUBJECT).map(|s| s.to_ascii_uppercase()),
        catalog_code: text(CATALOG_CODE),
    })
}

fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Every problem of a report to publish.
fn check_report(r: &Report) -> Vec<FieldViolation> {
    let mut bad = Vec::new();
    let mut v = |f: &str, m: String| bad.push(FieldViolation::new(format!("report.{f}"), m));
    if r.report_id.trim().is_empty() || r.report_id.len() > 128 {
        v(
            "report_id",
            "report_id is required (at most 128 characters)".into(),
        );
    }
    if let Err(m) = tongban_catalog::FieldType::ResidentId.check(&r.patient_id) {
        v("patient_id", format!("patient_id {m}"));
    }
    let kind = ReportKind::try_from(r.kind).unwrap_or(ReportKind::Unspecified);
    if kind == ReportKind::Unspecified {
        v("kind", "kind must be laboratory or imaging".into());
    }
    if ReportStatus::try_from(r.status).unwrap_or(ReportStatus::Unspecified)
        == ReportStatus::Unspecified
    {
        v("status", "status is required".into());
    }
    if r.collected_at_ms <= 0 {
        v(
            "collected_at_ms",
            "collected_at_ms (specimen collection or study time) is required".into(),
        );
    }
    if r.issued_at_ms < r.collected_at_ms {
        v(
            "issued_at_ms",
            "issued_at_ms is before collected_at_ms".into(),
        );
    }
    if let Err(m) = tongban_catalog::FieldType::CreditCode.check(&r.institution_code) {
        v("institution_code", format!("institution_code {m}"));
    }
    if r.results.is_empty() {
        v("results", "a report needs at least one result".into());
    }
    let mut ids = BTreeSet::new();
    for (i, res) in r.results.iter().enumerate() {
        if res.result_id.is_empty() || !ids.insert(res.result_id.as_str()) {
            v(
                &format!("results[{i}].result_id"),
                "result_id is required and unique in the report".into(),
            );
        }
        if kind == ReportKind::Laboratory && res.loinc.is_empty() && res.local_code.is_empty() {
            v(
                &format!("results[{i}].loinc"),
                "a laboratory result needs a loinc or a local code".into(),
            );
        }
        if kind == ReportKind::Laboratory && res.value.is_none() {
            v(
                &format!("results[{i}].value"),
                "a laboratory result needs a value".into(),
            );
        }
        if kind == ReportKind::Imaging && (res.modality.is_empty() || res.body_site.is_empty()) {
            v(
                &format!("results[{i}].modality"),
                "an imaging result needs modality and body_site".into(),
            );
        }
    }
    bad
}

type Chunks = Pin<Box<dyn Stream<Item = Result<ReportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ResultRegistry for Registry {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let v = self.publisher(req.metadata())?;
        let mut report = req.into_inner().report.ok_or_else(|| {
            MedicalError::Invalid(vec![FieldViolation::new("report", "report is missing")])
        })?;
        let attachment = std::mem::take(&mut report.attachment);
        let pseudonym = self.accept(&v, &mut report)?;
        let staged = if attachment.is_empty() {
            Staged::none()
        } else {
            self.store
                .stage_bytes(&attachment, self.max_attachment_bytes)
                .await?
        };
        Ok(Response::new(
            self.store_report(&v, report, &pseudonym, staged).await?,
        ))
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<ReportChunk>>,
    ) -> Result<Response<PublishResponse>, Status> {
        let v = self.publisher(req.metadata())?;
        let mut chunks = req.into_inner();
        let mut report = match chunks.message().await?.and_then(|c| c.part) {
            Some(report_chunk::Part::Header(r)) => r,
            _ => {
                return Err(MedicalError::Invalid(vec![FieldViolation::new(
                    "header",
                    "the first message must be the report's header",
                )])
                .into())
            }
        };
        if !report.attachment.is_empty() {
            return Err(MedicalError::Invalid(vec![FieldViolation::new(
                "header.attachment",
                "PublishStream takes the attachment in the messages after the header, not in it",
            )])
            .into());
        }
        // The header is checked before a byte of the attachment is taken.
        let pseudonym = self.accept(&v, &mut report)?;
        let mut staging = self.store.stage(self.max_attachment_bytes).await?;
        while let Some(chunk) = chunks.message().await? {
            match chunk.part {
                Some(report_chunk::Part::Attachment(bytes)) => staging.write(&bytes).await?,
                _ => {
                    return Err(MedicalError::Invalid(vec![FieldViolation::new(
                        "header",
                        "only the first message is a header; the others carry the attachment",
                    )])
                    .into())
                }
            }
        }
        let staged = staging.finish().await?;
        Ok(Response::new(
            self.store_report(&v, report, &pseudonym, staged).await?,
        ))
    }

    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let v = vouched(req.metadata())?.naming(crate::READ_ITEM)?;
        let subject = v.subject.ok_or(MedicalError::NoSubject)?;
        let q = req.into_inner();
        let valid_at = if q.valid_at_ms == 0 {
            now_ms()
        } else {
            q.valid_at_ms
        };
        let wanted: BTreeSet<String> = q.item_codes.into_iter().collect();
        let pseudonym = self.pseudonyms.pseudonym(&subject);
        let mut results = Vec::new();
        for report in self.store.reports_of(&pseudonym)? {
            let kind = ReportKind::try_from(report.kind).unwrap_or(ReportKind::Unspecified);
            let status = ReportStatus::try_from(report.status).unwrap_or(ReportStatus::Unspecified);
            for r in &report.results {
                // Validity counts from the result's own collection or study time.
                let collected = if r.collected_at_ms > 0 {
                    r.collected_at_ms
                } else {
                    report.collected_at_ms
                };
                let (item, verdict, valid_until) = self.rules.verdict(
                    kind,
                    status,
                    collected,
                    &report.institution_code,
                    r,
                    valid_at,
                );
                let code = item.map(|i| i.code.clone()).unwrap_or_default();
                if !wanted.is_empty() && !wanted.contains(&code) && !wanted.contains(&r.loinc) {
                    continue;
                }
                results.push(QueryResult {
                    city: self.city.clone(),
                    report_id: report.report_id.clone(),
                    result: Some(r.clone()),
                    item: code,
                    kind: report.kind,
                    status: report.status,
                    collected_at_ms: collected,
                    institution_code: report.institution_code.clone(),
                    institution_name: report.institution_name.clone(),
                    verdict: Some(verdict),
                    valid_until_ms: valid_until,
                    conclusion: report.conclusion.clone(),
                    registry_id: report.registry_id.clone(),
                });
            }
        }
        // The verdicts given, for the regulators' indicators (before the answer leaves).
        let asked_by = v.caller.split('/').next().unwrap_or_default().to_string();
        let at = now_ms();
        let verdicts: Vec<crate::store::VerdictRecord> = results
            .iter()
            .map(|q| {
                let verdict = q.verdict.clone().unwrap_or_default();
                crate::store::VerdictRecord {
                    at_ms: at,
                    held_by: self.city.clone(),
                    patient: pseudonym.clone(),
                    report_id: q.report_id.clone(),
                    item: q.item.clone(),
                    asked_by: asked_by.clone(),
                    eligible: verdict.eligible,
                    reasons: verdict.reasons,
                }
            })
            .collect();
        self.store.put_verdicts(&verdicts).await?;
        tracing::info!(results = results.len(), by = %v.caller, "query answered");
        Ok(Response::new(QueryResponse {
            results,
            partial: false,
            unreachable_cities: Vec::new(),
        }))
    }

    type GetReportStream = Chunks;

    async fn get_report(&self, req: Request<GetReportRequest>) -> Result<Response<Chunks>, Status> {
        let (id, header) = self.owned_report(req)?;
        let attachment = self.store.attachment(&id).await?;
        // Read as the receiver takes it: two chunks ahead at most, whatever the size.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let header = ReportChunk {
                part: Some(report_chunk::Part::Header(header)),
            };
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            let part = |c: Vec<u8>| {
                Ok(ReportChunk {
                    part: Some(report_chunk::Part::Attachment(c)),
                })
            };
            match attachment {
                Attachment::None => {}
                Attachment::Inline(bytes) => {
                    for c in bytes.chunks(CHUNK) {
                        if tx.send(part(c.to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
                Attachment::File(mut file) => loop {
                    match read_chunk(&mut file).await {
                        Ok(c) if c.is_empty() => return,
                        Ok(c) => {
                            if tx.send(part(c)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let e = MedicalError::Store(format!("attachment of `{id}`: {e}"));
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                },
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn export_fhir(
        &self,
        req: Request<GetReportRequest>,
    ) -> Result<Response<FhirDocument>, Status> {
        let (_, report) = self.owned_report(req)?;
        Ok(Response::new(FhirDocument {
            json: crate::fhir::export(&report).to_string(),
        }))
    }
}

/// Up to [`CHUNK`] bytes of `file` (fewer only at its end; none past it).
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        let n = (&mut *file)
            .take((CHUNK - buf.len()) as u64)
            .read_to_end(&mut buf)
            .await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

impl Registry {
    /// The node's word that this call publishes, from a system of this city.
    fn publisher(&self, md: &MetadataMap) -> Result<Vouched, MedicalError> {
        let v = vouched(md)?.naming(crate::PUBLISH_ITEM)?;
        if v.origin_city != self.city {
            return Err(MedicalError::NotLocal(self.city.clone()));
        }
        Ok(v)
    }

    /// Checks a report to publish (without its attachment) and masks its patient's id;
    /// returns the patient's pseudonym.
    fn accept(&self, v: &Vouched, report: &mut Report) -> Result<String, MedicalError> {
        let bad = check_report(report);
        if !bad.is_empty() {
            return Err(MedicalError::Invalid(bad));
        }
        let patient = report.patient_id.to_ascii_uppercase();
        // The node checked the consent of the patient in x-tongban-subject: the report must
        // be that patient's.
        if v.subject.as_deref() != Some(patient.as_str()) {
            return Err(MedicalError::PatientMismatch);
        }
        report.patient_id = tongban_gateway::subject::mask(&patient);
        Ok(self.pseudonyms.pseudonym(&patient))
    }

    /// Stores a checked report with its received attachment, after checking the
    /// attachment against the SHA-256 the publisher gave.
    async fn store_report(
        &self,
        v: &Vouched,
        report: Report,
        pseudonym: &str,
        attachment: Staged,
    ) -> Result<PublishResponse, MedicalError> {
        let claimed = report.attachment_sha256.trim().to_ascii_lowercase();
        if !claimed.is_empty() && claimed != attachment.sha256 {
            return Err(MedicalError::Invalid(vec![FieldViolation::new(
                "report.attachment_sha256",
                format!(
                    "the attachment received ({} bytes) has SHA-256 {}, not {claimed}: it was damaged or cut on the way",
                    attachment.bytes,
                    if attachment.sha256.is_empty() { "of nothing" } else { &attachment.sha256 },
                ),
            )]));
        }
        let (id, n, bytes) = (
            report.report_id.clone(),
            report.results.len(),
            attachment.bytes,
        );
        let new_id = format!("{}-rpt-{}", self.city, uuid::Uuid::new_v4().simple());
        let registry_id = self
            .store
            .put_report(report, pseudonym, new_id, attachment)
            .await?;
        tracing::info!(report = %id, registry_id = %registry_id, results = n, attachment_bytes = bytes, by = %v.caller, "report published");
        Ok(PublishResponse {
            report_id: id,
            results: i32::try_from(n).unwrap_or(i32::MAX),
            registry_id,
        })
    }

    /// The report a call asks for, if it is about the patient the node vouched for; NOT_FOUND
    /// alike when there is no such report and when it is another patient's, so that a
    /// refusal never tells whether someone else's report exists.
    fn owned_report(
        &self,
        req: Request<GetReportRequest>,
    ) -> Result<(String, Report), MedicalError> {
        let v = vouched(req.metadata())?.naming(crate::READ_ITEM)?;
        let subject = v.subject.ok_or(MedicalError::NoSubject)?;
        let id = req.into_inner().registry_id;
        if id.is_empty() {
            return Err(MedicalError::NoRegistryId);
        }
        match self.store.report(&id)? {
            Some((header, owner)) if owner == self.pseudonyms.pseudonym(&subject) => {
                Ok((id, header))
            }
            _ => Err(MedicalError::NotFound(id)),
        }
    }
}

#[tonic::async_trait]
impl Recognition for Registry {
    async fn decide(
        &self,
        req: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        let v = vouched(req.metadata())?;
        let d = req.into_inner();
        let mut bad = Vec::new();
        for (f, val) in [
            ("origin_city", &d.origin_city),
            ("report_id", &d.report_id),
            ("result_id", &d.result_id),
            ("item", &d.item),
        ] {
            if val.trim().is_empty() {
                bad.push(FieldViolation::new(f, format!("{f} is required")));
            }
        }
        let decision = Decision::try_from(d.decision).unwrap_or(Decision::Unspecified);
        let reason = RetestReason::try_from(d.reason).unwrap_or(RetestReason::Unspecified);
        match decision {
            Decision::Unspecified => bad.push(FieldViolation::new(
                "decision",
                "decision must be accepted or retested",
            )),
            Decision::Retested if reason == RetestReason::Unspecified => {
                bad.push(FieldViolation::new("reason", "a re-test needs its reason"))
            }
            Decision::Retested
                if reason == RetestReason::Other && d.reason_text.trim().is_empty() =>
            {
                bad.push(FieldViolation::new(
                    "reason_text",
                    "reason `other` needs reason_text",
                ))
            }
            _ => {}
        }
        if !bad.is_empty() {
            return Err(MedicalError::Invalid(bad).into());
        }
        let rec = DecisionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            at_ms: now_ms(),
            origin_city: d.origin_city,
            report_id: d.report_id,
            result_id: d.result_id,
            item: d.item,
            decision: decision as i32,
            reason: if decision == Decision::Accepted {
                0
            } else {
                reason as i32
            },
            reason_text: d.reason_text,
            physician: d.physician,
            caller: v.caller,
        };
        self.store.put_decision(&rec).await?;
        tracing::info!(decision = %rec.id, item = %rec.item, origin = %rec.origin_city, ?decision, "decision recorded");
        Ok(Response::new(DecideResponse {
            decision_id: rec.id,
            recorded_at_ms: rec.at_ms,
        }))
    }

    async fn statistics(
        &self,
        req: Request<StatisticsRequest>,
    ) -> Result<Response<StatisticsResponse>, Status> {
        vouched(req.metadata())?;
        let r = req.into_inner();
        let until = if r.until_ms == 0 {
            now_ms()
        } else {
            r.until_ms
        };
        let mut counts: BTreeMap<(String, String, i32, i32), i64> = BTreeMap::new();
        let (mut recognised, mut retested) = (0, 0);
        for d in self.store.decisions(r.from_ms, until)? {
            if d.decision == Decision::Accepted as i32 {
                recognised += 1;
            } else {
                retested += 1;
            }
            *counts
                .entry((d.item, d.origin_city, d.decision, d.reason))
                .or_default() += 1;
        }
        Ok(Response::new(StatisticsResponse {
            recognised,
            retested,
            rows: counts
                .into_iter()
                .map(
                    |((item, origin_city, decision, reason), count)| StatisticsRow {
                        item,
                        origin_city,
                        decision,
                        reason,
                        count,
                    },
                )
                .collect(),
        }))
    }
}
