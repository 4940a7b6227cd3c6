//! `tongban.admin.v1.Admin`, on the caller listener and the admin listener: the node's state at a glance for its
//! operators (role `audit-operator`): city, uptime, its catalog, each peer's link and last
//! catalog, the audit head and last checkpoint, and the recent connection failures.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tongban_proto::admin::v1::admin_server::Admin;
use tongban_proto::admin::v1::{ErrorEvent, PeerStatus, StatusRequest, StatusResponse};
use tongban_proto::audit::v1::Checkpoint;
use tonic::{Request, Response, Status};

use crate::audit::api::OPERATOR_ROLE;
use crate::audit::Auditor;
use crate::auth::{require, Grant};
use crate::catalog::Catalog;
use crate::federation::Peer;
use crate::stats;

#[derive(Clone)]
pub struct StatusApi {
    pub city: String,
    pub started_at_ms: i64,
    /// `Some` on the caller listener (role audit-operator required); `None` on the admin
    /// listener, where access is by network.
    /// On the caller listener: only an operator (role `audit-operator`) reads the status;
    /// the admin listener's copy answers without a token.
    pub operators_only: bool,
    /// Whether the audit log can be written now.
    pub audit_writable: prometheus_client::metrics::gauge::Gauge,
    pub catalog: Arc<Catalog>,
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub auditor: Arc<Auditor>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Admin for StatusApi {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        if self.operators_only {
            let caller = crate::auth::principal_of(&req)?;
            require(
                &caller,
                "read the node's status",
                &[Grant::Role(OPERATOR_ROLE)],
            )?;
        }
        let snap = self.catalog.snapshot();
        let peers = self
            .peers
            .iter()
            .map(|(city, p)| {
                let cat = snap.peers.get(city);
                PeerStatus {
                    city: city.clone(),
                    up: p.is_up(),
                    catalog_version: cat.map_or(0, |c| c.version),
                    catalog_issued_at_ms: cat.map_or(0, |c| c.issued_at_ms),
                    services: cat
                        .map_or(0, |c| u32::try_from(c.services.len()).unwrap_or(u32::MAX)),
                }
            })
            .collect();
        let head = self.auditor.head();
        let checkpoint = self
            .auditor
            .latest_checkpoint()
            .and_then(|s| Checkpoint::decode(s.checkpoint.as_slice()).ok())
            .unwrap_or_default();
        let (listener, upstream) = stats::connection_errors();
        let now = now_ms();
        Ok(Response::new(StatusResponse {
            city: self.city.clone(),
            started_at_ms: self.started_at_ms,
            uptime_s: u64::try_from((now - self.started_at_ms) / 1000).unwrap_or(0),
            catalog_version: snap.local_version,
            services: u32::try_from(snap.local.len()).unwrap_or(u32::MAX),
            peers,
            audit_head_seq: head.seq,
            audit_head_hash: hex::encode(head.hash),
            last_checkpoint_seq: checkpoint.seq,
            last_checkpoint_at_ms: checkpoint.at_ms,
            contradicted: self.auditor.contradicted().unwrap_or_default(),
            audit_anchor: self.auditor.anchor().describe(),
            audit_anchor_confirmed: self.auditor.anchor().confirmed(),
            audit_writable: self.audit_writable.get() == 1,
            listener_connection_errors: listener,
            upstream_connection_errors: upstream,
            recent_errors: stats::recent_errors()
                .into_iter()
                .map(|e| ErrorEvent {
                    at_ms: e.at_ms,
                    side: format!("{:?}", e.side).to_ascii_lowercase(),
                    peer: e.peer,
                    reason: e.reason,
                })
                .collect(),
        }))
    }
}
