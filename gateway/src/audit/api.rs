//! `tongban.audit.v1.Audit` on the caller listener. Operators (role `audit-operator`) query,
//! fetch both sides of an exchange, verify the chain and read checkpoints; a citizen (role
//! `citizen`, `sub` = their resident id) reads only their own access log.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use tongban_proto::audit::v1::audit_server::Audit;
use tongban_proto::audit::v1::{
    Access, AccessLogRequest, AccessLogResponse, AuditRecord, CheckpointsRequest,
    CheckpointsResponse, GetRequest, GetResponse, ProveRequest, ProveResponse, QueryRequest,
    QueryResponse, ReplicaVerification, VerifyRequest, VerifyResponse,
};
use tongban_proto::federation::v1::federation_client::FederationClient;
use tongban_proto::federation::v1::GetAuditRecordsRequest;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Response, Status};

use super::index::Filter;
use super::Auditor;
use crate::auth::Caller;
use crate::auth::{require, Grant};
use crate::error::{ApiError, BadField};
use crate::subject::{validate_resident_id, Pseudonymizer};
use crate::upstream::{Endpoint, EndpointChannel};
use tongban_proto::audit::v1::audit_client::AuditClient;

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
    /// How to reach another replica's TLS caller listener (this node's caller TLS: the
    /// replicas share its certificate); none when the caller listener is plaintext.
    pub replica_tls: Option<Arc<rustls::ClientConfig>>,
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
    /// Each other replica of the city asked `call`, with the caller's own credentials (it
    /// checks them as this replica did) and marked as a fan-out (it answers for itself only):
    /// its id and its answer, or why there is none. Asked all at once.
    async fn fan_out<M, T, F, Fut>(
        &self,
        authorization: Option<&MetadataValue<Ascii>>,
        msg: &M,
        call: F,
    ) -> Vec<(String, Result<T, String>)>
    where
        M: Clone,
        F: Fn(&str, AuditClient<EndpointChannel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let asks = self.replicas.others().into_iter().map(|(id, url)| {
            let mut req = Request::new(msg.clone());
            if let Some(a) = authorization {
                req.metadata_mut().insert("authorization", a.clone());
            }
            req.metadata_mut()
                .insert(FANOUT, MetadataValue::from_static("1"));
            let call = &call;
            async move {
                let answer = async {
                    let endpoint = match (url.strip_prefix("https://"), &self.replica_tls) {
                        (Some(addr), Some(tls)) => Endpoint::replica(addr, tls.clone()),
                        (Some(_), None) => {
                            return Err("its caller listener is TLS, this one's is not".into())
                        }
                        (None, _) => Endpoint::provider(&url),
                    }
                    .map_err(|e| e.to_string())?;
                    let channel = EndpointChannel::new(Arc::new(endpoint), self.connect_timeout);
                    let asked = call(&id, AuditClient::new(channel), req);
                    match tokio::time::timeout(self.connect_timeout * 5, asked).await {
                        Err(_) => Err("no answer in time".to_string()),
                        Ok(r) => r
                            .map(Response::into_inner)
                            .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                .await;
                (id, answer)
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// Whether `req` is another replica's fan-out (answered for this replica only), and the
    /// caller's credentials to fan out with.
    fn fan_out_of<T>(req: &Request<T>) -> (bool, Option<MetadataValue<Ascii>>) {
        (
            req.metadata().contains_key(FANOUT),
            req.metadata().get("authorization").cloned(),
        )
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
        // The connection the channel will use (the endpoint's one), whose binding the
        // assertion names.
        let chb = endpoint
            .ready_conn(self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?
            .binding
            .map(|b| b.as_str().to_string())
            .unwrap_or_default();
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
            chb,
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

    /// This replica's page of `q` after `after`.
    async fn query_own(
        &self,
        q: &QueryRequest,
        after: Option<(i64, u64)>,
        limit: usize,
    ) -> (Vec<AuditRecord>, Option<(i64, u64)>, super::Coverage) {
        let filter = Filter {
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            caller: Some(q.caller.clone()).filter(|c| !c.is_empty()),
            service: Some(q.service.clone()).filter(|s| !s.is_empty()),
            after,
            limit,
        };
        let (mut records, next, coverage) = self.auditor.query_covered(&filter).await;
        // The index used the most selective filter; apply the others.
        if filter.caller.is_some() && !q.service.is_empty() {
            records.retain(|r| r.service == q.service);
        }
        (records, next, coverage)
    }

    /// An operator, named: the audit is about people, so whoever reads it is recorded.
    async fn operator<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let c = crate::auth::principal_of(req)?;
        c.require_person()?;
        require(&c, "read the audit", &[Grant::Role(OPERATOR_ROLE)])?;
        Ok(c)
    }
}

/// Where each replica's part of a query across the replicas stopped: the page token of
/// such a query, `<replica>~<ts hex>.<seq hex>` (or `<replica>~end`) for each replica that
/// has been asked, joined by `,`.
#[derive(Debug, Default)]
struct ReplicaCursors(BTreeMap<String, Option<(i64, u64)>>);

impl ReplicaCursors {
    fn parse(token: &str) -> Result<ReplicaCursors, Status> {
        let mut out = BTreeMap::new();
        if token.is_empty() {
            return Ok(ReplicaCursors(out));
        }
        let bad = || Status::from(BadField::new("page_token", "not one this node returned"));
        for part in token.split(',') {
            let (id, at) = part.split_once('~').ok_or_else(bad)?;
            let cursor = match at {
                "end" => None,
                t => Some(parse_page_token(t)?.ok_or_else(bad)?),
            };
            out.insert(id.to_string(), cursor);
        }
        Ok(ReplicaCursors(out))
    }

    /// Where to start `replica`'s part: `None` when it has given everything.
    fn start_of(&self, replica: &str) -> Option<Option<(i64, u64)>> {
        match self.0.get(replica) {
            None => Some(None),
            Some(None) => None,
            Some(Some(c)) => Some(Some(*c)),
        }
    }

    fn set(&mut self, replica: &str, cursor: Option<(i64, u64)>) {
        self.0.insert(replica.to_string(), cursor);
    }

    fn end(&mut self, replica: &str) {
        self.0.insert(replica.to_string(), None);
    }

    /// The next page's token: empty when every replica has given everything.
    fn token(&self) -> String {
        if self.0.values().all(Option::is_none) {
            return String::new();
        }
        self.0
            .iter()
            .map(|(id, c)| match c {
                None => format!("{id}~end"),
                Some(c) => format!("{id}~{}", page_token(Some(*c))),
            })
            .collect::<Vec<_>>()
            .join(",")
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
        let (fanned_out, authorization) = Self::fan_out_of(&req);
        let q = req.into_inner();
        if q.to_ms != 0 && q.to_ms < q.from_ms {
            return Err(BadField::new("to_ms", "to_ms is before from_ms").into());
        }
        let limit = q.limit.clamp(1, MAX_PAGE) as usize;
        if fanned_out || self.replicas.others().is_empty() {
            let (records, next, coverage) = self
                .query_own(&q, parse_page_token(&q.page_token)?, limit)
                .await;
            return Ok(Response::new(QueryResponse {
                records,
                next_page_token: page_token(next),
                coverage: Some(coverage.to_proto()),
                unreachable: Vec::new(),
            }));
        }
        // Across the replicas: each one's page from where the token says it stopped, merged
        // oldest first; the token says where each stopped in what was returned.
        let mut cursors = ReplicaCursors::parse(&q.page_token)?;
        let own = self.replicas.own.clone();
        let mut pages: Vec<(String, Vec<AuditRecord>, bool)> = Vec::new();
        let mut coverage = None;
        if let Some(after) = cursors.start_of(&own) {
            let (records, next, cov) = self.query_own(&q, after, limit).await;
            coverage = Some(cov.to_proto());
            pages.push((own.clone(), records, next.is_some()));
        }
        let asked: Vec<String> = self
            .replicas
            .others()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut unreachable = Vec::new();
        let mut msgs = Vec::new();
        for id in &asked {
            if let Some(after) = cursors.start_of(id) {
                msgs.push((id.clone(), page_token(after)));
            }
        }
        let answers = self
            .fan_out(authorization.as_ref(), &q, |id, mut c, mut r| {
                let token = msgs
                    .iter()
                    .find(|(asked, _)| asked == id)
                    .map(|(_, t)| t.clone());
                async move {
                    match token {
                        Some(t) => {
                            r.get_mut().page_token = t;
                            c.query(r).await
                        }
                        None => Ok(Response::new(QueryResponse::default())),
                    }
                }
            })
            .await;
        for (id, answer) in answers {
            match answer {
                Ok(r) if cursors.start_of(&id).is_some() => {
                    pages.push((id, r.records, !r.next_page_token.is_empty()))
                }
                Ok(_) => {}
                Err(why) => unreachable.push(format!("{} replica {id}: {why}", self.city)),
            }
        }
        let mut merged: Vec<(String, AuditRecord)> = pages
            .iter()
            .flat_map(|(id, records, _)| records.iter().map(move |r| (id.clone(), r.clone())))
            .collect();
        merged.sort_by(|a, b| {
            (a.1.started_at_ms, &a.0, a.1.seq).cmp(&(b.1.started_at_ms, &b.0, b.1.seq))
        });
        merged.truncate(limit);
        for (id, records, more) in &pages {
            let taken: Vec<&AuditRecord> = merged
                .iter()
                .filter(|(r, _)| r == id)
                .map(|(_, rec)| rec)
                .collect();
            match taken.last() {
                Some(last) if taken.len() < records.len() || *more => {
                    cursors.set(id, Some((last.started_at_ms, last.seq)))
                }
                Some(_) => cursors.end(id),
                None if records.is_empty() => cursors.end(id),
                None => {}
            }
        }
        Ok(Response::new(QueryResponse {
            records: merged.into_iter().map(|(_, r)| r).collect(),
            next_page_token: cursors.token(),
            coverage,
            unreachable,
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.operator(&req).await?;
        let (fanned_out, authorization) = Self::fan_out_of(&req);
        let rid = req.into_inner().request_id;
        if rid.is_empty() || rid.len() > 64 {
            return Err(
                BadField::new("request_id", "request_id must be 1 to 64 characters").into(),
            );
        }
        let (mut local, coverage) = self.auditor.records_for_request_covered(&rid).await;
        // The replica that served the exchange has its records: ask the others too.
        let mut unreachable = Vec::new();
        if !fanned_out {
            let ask = GetRequest {
                request_id: rid.clone(),
            };
            for (id, answer) in self
                .fan_out(authorization.as_ref(), &ask, |_, mut c, r| async move {
                    c.get(r).await
                })
                .await
            {
                match answer {
                    Ok(mut r) => local.append(&mut r.local),
                    Err(why) => unreachable.push(format!("{} replica {id}: {why}", self.city)),
                }
            }
        }
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
            unreachable,
        }))
    }

    async fn verify(
        &self,
        req: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        self.operator(&req).await?;
        let (fanned_out, authorization) = Self::fan_out_of(&req);
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
        // Each other replica verifies its own chain (the same range of its own sequence).
        let mut replicas = Vec::new();
        if !fanned_out {
            for (id, answer) in self
                .fan_out(authorization.as_ref(), &r, |_, mut c, r| async move {
                    c.verify(r).await
                })
                .await
            {
                replicas.push(match answer {
                    Ok(v) => ReplicaVerification {
                        replica: id,
                        ok: v.ok,
                        records: v.records,
                        head_seq: v.head_seq,
                        head_hash: v.head_hash,
                        first_bad_seq: v.first_bad_seq,
                        reason: v.reason,
                        unreachable: String::new(),
                    },
                    Err(why) => ReplicaVerification {
                        replica: id,
                        unreachable: why,
                        ..Default::default()
                    },
                });
            }
        }
        Ok(Response::new(VerifyResponse {
            ok: report.first_bad.is_none() && replicas.iter().all(|v| v.ok),
            records: report.records,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_vec(),
            first_bad_seq,
            reason,
            replicas,
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
        let (fanned_out, authorization) = Self::fan_out_of(&req);
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
            for (id, answer) in self
                .fan_out(authorization.as_ref(), &r, |_, mut c, r| async move {
                    c.access_log(r).await
                })
                .await
            {
                match answer {
                    Ok(mut more) => accesses.append(&mut more.accesses),
                    Err(why) => unreachable.push(format!("{} replica {id}: {why}", self.city)),
                }
            }
        }
        // A citizen sees every city's records: each peer is asked, vouched for by this node.
        // A peer city of several replicas is asked at every address it is listed with: each
        // replica answers for the exchanges it served.
        if caller.kind == crate::auth::PersonKind::Citizen && !fanned_out {
            for (city, endpoints) in &self.peers {
                let each = endpoints.each_address();
                for endpoint in &each {
                    let at = if each.len() > 1 {
                        format!("{city} ({})", endpoint.label())
                    } else {
                        city.clone()
                    };
                    match self
                        .peer_accesses(city, endpoint, &caller, &r.subject, limit, r.with_proofs)
                        .await
                    {
                        Ok((mut more, cov)) => {
                            accesses.append(&mut more);
                            if let Some(c) = cov.filter(|c| !c.complete) {
                                unreachable.push(format!(
                                    "{at}: answered before its index caught up (records up to seq {} of {})",
                                    c.indexed_seq, c.head_seq
                                ));
                            }
                        }
                        Err(why) => unreachable.push(format!("{at}: {why}")),
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_across_replicas_says_where_each_stopped() {
        let mut c = ReplicaCursors::parse("").unwrap();
        assert_eq!(c.start_of("a"), Some(None), "not asked yet: from the start");
        c.set("a", Some((1_700_000_000_000, 42)));
        c.end("b");
        let token = c.token();
        let back = ReplicaCursors::parse(&token).unwrap();
        assert_eq!(back.start_of("a"), Some(Some((1_700_000_000_000, 42))));
        assert_eq!(back.start_of("b"), None, "b gave everything");
        assert_eq!(
            back.start_of("c"),
            Some(None),
            "a replica that joined since"
        );
        let mut done = back;
        done.end("a");
        assert_eq!(done.token(), "", "every replica gave everything");
        for bad in ["a", "a~", "a~zz", "a~1", "a~1.2,b"] {
            assert!(ReplicaCursors::parse(bad).is_err(), "{bad}");
        }
    }
}
