//! Records of changes of a node's own state (side `SIDE_NODE`): consents granted and
//! revoked, registrations added, changed and withdrawn, policy and catalog loaded, the node
//! started and stopped, callers' keys rotated. Each is a record in the chain like an
//! exchange, with the principal who made it, so that the chain proves the consent or the
//! registration that allowed an exchange, and not only the exchange.

use sha2::{Digest as _, Sha256};
use tongban_proto::audit::v1::{AuditRecord, ChangeKind, Side, StateChange};

use crate::auth::Caller;

/// A state change about to be recorded.
#[derive(Debug, Clone)]
pub struct Change {
    record: AuditRecord,
}

impl Change {
    /// A change of `kind` of `object`, at `city`'s node.
    pub fn new(city: &str, kind: ChangeKind, object: impl Into<String>) -> Change {
        let now = super::now_ms();
        Change {
            record: AuditRecord {
                request_id: format!("chg-{}", uuid::Uuid::new_v4().simple()),
                side: Side::Node as i32,
                node_city: city.to_string(),
                started_at_ms: now,
                ended_at_ms: now,
                target_city: city.to_string(),
                state_change: Some(StateChange {
                    kind: kind as i32,
                    object: object.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    /// Made by `caller` (a person or system account, as authenticated).
    pub fn by(mut self, caller: &Caller) -> Change {
        let r = &mut self.record;
        r.caller_city = caller.city.clone();
        r.caller_org = caller.org.clone();
        r.caller_person = caller.person.clone();
        r.caller_kind = caller.kind.as_str().to_string();
        self
    }

    /// Made by the node itself (a start, a stop, a file it reloaded).
    pub fn by_node(mut self) -> Change {
        let r = &mut self.record;
        r.caller_city = r.node_city.clone();
        r.caller_kind = "system".into();
        r.caller_person = "tongban-node".into();
        self
    }

    fn change(&mut self) -> &mut StateChange {
        self.record
            .state_change
            .get_or_insert_with(Default::default)
    }

    pub fn version(mut self, v: impl ToString) -> Change {
        self.change().version = v.to_string();
        self
    }

    /// The SHA-256 of `content`, as loaded.
    pub fn content(mut self, content: &[u8]) -> Change {
        self.change().digest = hex::encode(Sha256::digest(content));
        self
    }

    pub fn digest(mut self, hex_digest: impl Into<String>) -> Change {
        self.change().digest = hex_digest.into();
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Change {
        self.change().detail = d.into();
        self
    }

    /// About a service (`service`, its organisation as target) and a purpose.
    pub fn service(mut self, org: &str, service: &str) -> Change {
        self.record.target_org = org.to_string();
        self.record.service = service.to_string();
        self
    }

    /// A consent's particulars: its subject (the keyed pseudonym at this node, so that the
    /// citizen's access log shows it), id, target city, service, purpose and items.
    pub fn consent(
        mut self,
        pseudonym: &str,
        record: &tongban_proto::consent::v1::ConsentRecord,
    ) -> Change {
        let r = &mut self.record;
        r.subject_pseudonym = pseudonym.to_string();
        r.consent_id = record.id.clone();
        r.target_city = record.target_city.clone();
        r.service = record.service.clone();
        r.purpose = record.purpose.clone();
        r.catalog_code = record.items.join(",");
        self.change().detail = format!(
            "grantee {}; expires_at_ms {}",
            record.grantee, record.expires_at_ms
        );
        self
    }

    pub fn into_record(self) -> AuditRecord {
        self.record
    }
}

/// The name of a change kind as the access log shows it (`consent_granted`, …).
pub fn kind_name(kind: i32) -> &'static str {
    match ChangeKind::try_from(kind).unwrap_or(ChangeKind::Unspecified) {
        ChangeKind::Unspecified => "",
        ChangeKind::ConsentGranted => "consent_granted",
        ChangeKind::ConsentRevoked => "consent_revoked",
        ChangeKind::RegistrationAdded => "registration_added",
        ChangeKind::RegistrationChanged => "registration_changed",
        ChangeKind::RegistrationWithdrawn => "registration_withdrawn",
        ChangeKind::PolicyLoaded => "policy_loaded",
        ChangeKind::CatalogLoaded => "catalog_loaded",
        ChangeKind::NodeStarted => "node_started",
        ChangeKind::NodeStopped => "node_stopped",
        ChangeKind::KeysRotated => "keys_rotated",
        ChangeKind::PeerLinkUp => "peer_link_up",
        ChangeKind::PeerLinkDown => "peer_link_down",
    }
}

/// A change was made but its record could not be written: the node cannot audit (and
/// reports NOT_SERVING), so the caller is told rather than answered as if all were well.
#[derive(Debug, thiserror::Error)]
#[error("the change was made but its audit record could not be written: {0}")]
pub struct ChangeNotRecorded(pub super::log::AuditError);

impl crate::error::ApiError for ChangeNotRecorded {
    fn code(&self) -> tonic::Code {
        tracing::error!(error = %self.0, "state change not recorded in the audit log");
        tonic::Code::Unavailable
    }
    fn reason(&self) -> &'static str {
        "AUDIT_UNAVAILABLE"
    }
}

crate::into_status!(ChangeNotRecorded);

impl super::Auditor {
    /// Records `change`; resolves once it is durable.
    pub async fn record_change(&self, change: Change) -> Result<(), ChangeNotRecorded> {
        let kind = change.record.state_change.as_ref().map_or(0, |c| c.kind);
        self.record(change.into_record())
            .await
            .map(|a| {
                tracing::debug!(
                    seq = a.seq,
                    change = kind_name(kind),
                    "state change recorded"
                )
            })
            .map_err(ChangeNotRecorded)
    }
}
