//! `tongban.audit.v1.Audit` on the caller listener. Operators (role `audit-operator`) query,
//! fetch both sides of an exchange, verify the chain and read checkpoints; a citizen (role
//! `citizen`, `sub` = their resident id) reads only their own access log.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use tongban_proto::audit::v1::audit_server::Audit;
use tongban_proto::audit::v1::{
    Access, AccessLogRequest, AccessLogResponse, CheckpointsRequest, CheckpointsResponse,
    GetRequest, GetResponse, ProveRequest, ProveResponse, QueryRequest, QueryResponse,
    VerifyRequest, VerifyResponse,
};
use tongban_proto::federation::v1::federation_client::FederationClient;
use tongban_proto::federation::v1::GetAuditRecordsRequest;
use tonic::{Request, Response, Status};

use super::index::Filter;
use super::Auditor;
use crate::auth::Caller;
use crate::auth::{require, Grant};
use crate::error::{ApiError, BadField};
use crate::subject::{validate_resident_id, Pseudonymizer};
use crate::upstream::{Endpoint, EndpointChannel};

/// Role of the operators who read the audit.
pub const OPERATOR_ROLE: &str = "audit-operator";
const MAX_PAGE: u32 = 1000;

pub struct AuditApi {
    /// This node's city (the issuer of its assertions to peers).
    pub city: String,
    /// Signs the assertion that asks a peer for a citizen's accesses.
    pub signer: Arc<crate::assertion::Signer>,
    pub auditor: Arc<Auditor>,
    pub pseudonyms: Arc<Pseudonymizer>,
    /// The peer nodes' endpoints (to fetch their side of an exchange).
    pub peers: BTreeMap<String, Arc<Endpoint>>,
    pub connect_timeout: std::time::Duration,
    /// The other replicas of this city (an access log covers all of them).
    pub replicas: crate::replicas::Replicas,
}

/// Marks a request one replica makes of another for its own records (not fanned out again).
const FANOUT: &str = "x-tongban-replica-fanout";

/// A failure of the node's own audit store while answering.
#[derive(Debug, thiserror::Error)]
#[error("audit: {0}")]
pub struct AuditApiFailure(String);

impl ApiError for AuditApiFailure {
    fn code(&self) -> tonic::Code {
        tonic::Code::Internal
    }
    fn reason(&self) -> &'static str {
        "AUDIT_STORE"
    }
}

crate::into_status!(AuditApiFailure);

fn internal(e: impl std::fmt::Display) -> Status {
    AuditApiFailure(e.to_string()).status()
}

/// The accesses to `subject`'s data this node recorded, and the changes of their consents,
/// newest first; with how much of the log they reflect.
pub async fn accesses_of(
    auditor: &Auditor,
    pseudonyms: &Pseudonymizer,
    subject: &str,
    limit: usize,
    with_proofs: bool,
) -> (Vec<Access>, super::Coverage) {
    let pseudonym = pseudonyms.pseudonym(subject);
    let (records, coverage) = auditor.for_subject(&pseudonym, limit).await;
    let mut accesses: Vec<Access> = records
        .into_iter()
        .map(|a| Access {
            seq: a.seq,
            proof: None,
            node_certificate: Vec::new(),
            change: a
                .state_change
                .as_ref()
                .map(|c| super::change::kind_name(c.kind).to_string())
                .unwrap_or_default(),
            at_ms: a.started_at_ms,
            caller_city: a.caller_city,
            caller_org: a.caller_org,
            target_city: a.target_city,
            service: a.service,
            method: a.method,
            purpose: a.purpose,
            catalog_code: a.catalog_code,
            grpc_status: a.grpc_status,
            request_id: a.request_id,
            consent_id: a.consent_id,
            node_city: a.node_city,
            caller_person: a.caller_person,
            caller_kind: a.caller_kind,
        })
        .collect();
    if with_proofs {
        let cert = auditor.node_certificate();
        for a in &mut accesses {
            match auditor.prove_inclusion(a.seq).await {
                Ok(p) => {
                    a.proof = Some(p);
                    a.node_certificate = cert.clone();
                }
                Err(error) => {
                    tracing::warn!(seq = a.seq, %error, "no inclusion proof for an access log entry")
                }
            }
        }
    }
    (accesses, coverage)
}

/// What binds a subject access log request to its subject: SHA-256 of the resident id.
pub fn subject_binding(subject: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(
            subject.to_ascii_uppercase().as_bytes()
        ))
    )
}

/// The Federation method a home node calls for a citizen's accesses at a peer.
pub const SUBJECT_ACCESS_LOG: (&str, &str) =
    ("tongban.federation.v1.Federation", "SubjectAccessLog");

impl AuditApi {
    /// Another replica's records of accesses to `r.subject`, asked at its caller listener
    /// with the caller's own credentials (it checks them as this replica did).
    async fn replica_accesses(
        &self,
        url: &str,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        r: &AccessLogRequest,
    ) -> Result<Vec<tongban_proto::audit::v1::Access>, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(self.connect_timeout)
            .timeout(self.connect_timeout * 5)
            .connect()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let mut req = Request::new(r.clone());
        if let Some(a) = authorization {
            req.metadata_mut().insert("authorization", a);
        }
        req.metadata_mut()
            .insert(FANOUT, tonic::metadata::MetadataValue::from_static("1"));
        let resp = tongban_proto::audit::v1::audit_client::AuditClient::new(channel)
            .access_log(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(resp.into_inner().accesses)
    }

    /// `city`'s records of accesses to the citizen's data, asked with an assertion that
    /// this node signed the citizen in.
    async fn peer_accesses(
        &self,
        city: &str,
        endpoint: &Arc<Endpoint>,
        caller: &Caller,
        subject: &str,
        limit: usize,
        with_proofs: bool,
    ) -> Result<(Vec<Access>, Option<tongban_proto::audit::v1::Coverage>), String> {
        let rid = tongban_telemetry::trace::unique_id();
        let now = crate::assertion::now_s();
        let claims = crate::assertion::AssertionClaims {
            iss: self.city.clone(),
            aud: city.to_string(),
            sub: caller.org.clone(),
            roles: caller.roles.clone(),
            purpose: "access-log".into(),
            subj: Some(subject_binding(subject)),
            own: true,
            knd: caller.kind.as_str().to_string(),
            prs: caller.person.clone(),
            rid: rid.clone(),
            svc: SUBJECT_ACCESS_LOG.0.into(),
            mth: SUBJECT_ACCESS_LOG.1.into(),
            iat: now,
            exp: now + crate::assertion::TTL.as_secs(),
            jti: tongban_telemetry::trace::unique_id(),
            // A control-plane call (a generated client: the connection is chosen after the
            // request is made), not bound to its connection.
            chb: String::new(),
        };
        let token = self.signer.sign(&claims).map_err(|e| e.to_string())?;
        let mut req = Request::new(tongban_proto::federation::v1::SubjectAccessLogRequest {
            subject: subject.to_string(),
            limit: u32::try_from(limit).unwrap_or(MAX_PAGE),
            request_id: rid,
            with_proofs,
        });
        let value = tonic::metadata::MetadataValue::try_from(token).map_err(|e| e.to_string())?;
        req.metadata_mut().insert(crate::assertion::HEADER, value);
        let ch = EndpointChannel::new(endpoint.clone(), self.connect_timeout);
        FederationClient::new(ch)
            .subject_access_log(req)
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.accesses, r.coverage)
            })
            .map_err(|s| s.message().to_string())
    }

    /// An operator, named: the audit is about people, so whoever reads it is recorded.
    async fn operator<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let c = crate::auth::principal_of(req)?;
        c.require_person()?;
        require(&c, "read the audit", &[Grant::Role(OPERATOR_ROLE)])?;
        Ok(c)
    }
}

fn page_token(next: Option<(i64, u64)>) -> String {
    next.map(|(ts, seq)| format!("{ts:x}.{seq:x}"))
        .unwrap_or_default()
}

fn parse_page_token(t: &str) -> Result<Option<(i64, u64)>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || Status::from(BadField::new("page_token", "not one this node returned"));
    let (a, b) = t.split_once('.').ok_or_else(bad)?;
    let ts = i64::from_str_radix(a, 16).map_err(|_| bad())?;
    let seq = u64::from_str_radix(b, 16).map_err(|_| bad())?;
    Ok(Some((ts, seq)))
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn query(&self, req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        self.operator(&req).await?;
        let q = req.into_inner();
        if q.to_ms != 0 && q.to_ms < q.from_ms {
            return Err(BadField::new("to_ms", "to_ms is before from_ms").into());
        }
        let filter = Filter {
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            caller: Some(q.caller).filter(|c| !c.is_empty()),
            service: Some(q.service.clone()).filter(|s| !s.is_empty()),
            after: parse_page_token(&q.page_token)?,
            limit: q.limit.clamp(1, MAX_PAGE) as usize,
        };
        let (mut records, next, coverage) = self.auditor.query_covered(&filter).await;
        // The index used the most selective filter; apply the others.
        if filter.caller.is_some() && !q.service.is_empty() {
            records.retain(|r| r.service == q.service);
        }
        Ok(Response::new(QueryResponse {
            records,
            next_page_token: page_token(next),
            coverage: Some(coverage.to_proto()),
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.operator(&req).await?;
        let rid = req.into_inner().request_id;
        if rid.is_empty() || rid.len() > 64 {
            return Err(
                BadField::new("request_id", "request_id must be 1 to 64 characters").into(),
            );
        }
        let (local, coverage) = self.auditor.records_for_request_covered(&rid).await;
        let mut peer = Vec::new();
        let mut peer_error = String::new();
        let peer_cities: Vec<String> = local
            .iter()
            .map(|r| r.peer_city.clone())
            .filter(|c| !c.is_empty())
            .collect();
        for city in peer_cities.iter().take(1) {
            match self.peers.get(city) {
                None => peer_error = format!("`{city}` is not a configured peer"),
                Some(p) => {
                    let ch = EndpointChannel::new(p.clone(), self.connect_timeout);
                    let fetched = FederationClient::new(ch)
                        .get_audit_records(GetAuditRecordsRequest {
                            request_id: rid.clone(),
                        })
                        .await;
                    match fetched {
                        Ok(r) => peer = r.into_inner().records,
                        Err(s) => peer_error = format!("peer `{city}`: {}", s.message()),
                    }
                }
            }
        }
        Ok(Response::new(GetResponse {
            local,
            peer,
            peer_error,
            coverage: Some(coverage.to_proto()),
        }))
    }

    async fn verify(
        &self,
        req: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        self.operator(&req).await?;
        let r = req.into_inner();
        if r.to_seq != 0 && r.to_seq < r.from_seq {
            return Err(BadField::new("to_seq", "to_seq is before from_seq").into());
        }
        let auditor = self.auditor.clone();
        let report =
            tokio::task::spawn_blocking(move || auditor.verify_range(r.from_seq, r.to_seq))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        let (first_bad_seq, reason) = report.first_bad.clone().unwrap_or((0, String::new()));
        Ok(Response::new(VerifyResponse {
            ok: report.first_bad.is_none(),
            records: report.records,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_vec(),
            first_bad_seq,
            reason,
        }))
    }

    async fn prove(&self, req: Request<ProveRequest>) -> Result<Response<ProveResponse>, Status> {
        use tongban_proto::audit::v1::prove_request::What;
        use tongban_proto::audit::v1::prove_response::Proof;
        let caller = crate::auth::principal_of(&req)?;
        caller.require_person()?;
        let operator = caller.roles.iter().any(|r| r == OPERATOR_ROLE);
        let proof = match req.into_inner().what {
            Some(What::InclusionOfSeq(seq)) => {
                let p = self.auditor.prove_inclusion(seq).await?;
                // A citizen proves only a record about themselves; another's is not found,
                // exactly like one that does not exist.
                if !operator {
                    let about = tongban_proto::audit::v1::LogEntry::decode(p.entry.as_slice())
                        .ok()
                        .and_then(|e| e.record)
                        .map(|r| r.subject_pseudonym)
                        .unwrap_or_default();
                    if about.is_empty() || !caller.is_citizen(&about) {
                        return Err(super::ProveError::NotYours(seq).into());
                    }
                }
                Proof::Inclusion(p)
            }
            Some(What::Consistency(c)) => {
                require(
                    &caller,
                    "prove the audit log's consistency",
                    &[Grant::Role(OPERATOR_ROLE)],
                )?;
                Proof::Consistency(self.auditor.prove_consistency(c.from_seq, c.to_seq).await?)
            }
            None => {
                return Err(BadField::new("what", "name inclusion_of_seq or consistency").into())
            }
        };
        Ok(Response::new(ProveResponse {
            proof: Some(proof),
            node_certificate: self.auditor.node_certificate(),
        }))
    }

    async fn checkpoints(
        &self,
        req: Request<CheckpointsRequest>,
    ) -> Result<Response<CheckpointsResponse>, Status> {
        self.operator(&req).await?;
        Ok(Response::new(CheckpointsResponse {
            own: self.auditor.own_checkpoints(),
            peers: self.auditor.peer_checkpoints(),
        }))
    }

    async fn access_log(
        &self,
        req: Request<AccessLogRequest>,
    ) -> Result<Response<AccessLogResponse>, Status> {
        let caller = crate::auth::principal_of(&req)?;
        caller.require_person()?;
        let fanned_out = req.metadata().contains_key(FANOUT);
        let authorization = req.metadata().get("authorization").cloned();
        let r = req.into_inner();
        validate_resident_id(&r.subject).map_err(|m| BadField::new("subject", m))?;
        let pseudonym = self.pseudonyms.pseudonym(&r.subject);
        require(
            &caller,
            "read this subject's access log",
            &[Grant::Role(OPERATOR_ROLE), Grant::Citizen(&pseudonym)],
        )?;
        let limit = r.limit.clamp(1, MAX_PAGE) as usize;
        let (mut accesses, coverage) = accesses_of(
            &self.auditor,
            &self.pseudonyms,
            &r.subject,
            limit,
            r.with_proofs,
        )
        .await;
        let mut unreachable = Vec::new();
        // The other replicas of this city served some of the exchanges: each is asked with
        // the caller's own credentials, for its own records only.
        if !fanned_out {
            for (id, url) in self.replicas.others() {
                match self.replica_accesses(&url, authorization.clone(), &r).await {
                    Ok(mut more) => accesses.append(&mut more),
                    Err(why) => unreachable.push(format!("{} replica {id}: {why}", self.city)),
                }
            }
        }
        // A citizen sees every city's records: each peer is asked, vouched for by this node.
        if caller.kind == crate::auth::PersonKind::Citizen && !fanned_out {
            for (city, endpoint) in &self.peers {
                match self
                    .peer_accesses(city, endpoint, &caller, &r.subject, limit, r.with_proofs)
                    .await
                {
                    Ok((mut more, cov)) => {
                        accesses.append(&mut more);
                        if let Some(c) = cov.filter(|c| !c.complete) {
                            unreachable.push(format!(
                                "{city}: answered before its index caught up (records up to seq {} of {})",
                                c.indexed_seq, c.head_seq
                            ));
                        }
                    }
                    Err(why) => unreachable.push(format!("{city}: {why}")),
                }
            }
            // One row per exchange (a cross-city exchange is recorded by both nodes): the
            // newer of its two records.
            let mut seen = std::collections::HashSet::new();
            accesses.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
            accesses.retain(|a| a.request_id.is_empty() || seen.insert(a.request_id.clone()));
        }
        // Newest first, across replicas and cities.
        accesses.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
        accesses.truncate(limit);
        Ok(Response::new(AccessLogResponse {
            accesses,
            unreachable,
            coverage: Some(coverage.to_proto()),
        }))
    }
}
