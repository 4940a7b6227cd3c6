//! `tongban status`: a node's state at a glance (its Admin API); exit 1 when a peer is down
//! or a peer contradicts the node's audit log.

use std::process::ExitCode;

use tongban_proto::admin::v1::admin_client::AdminClient;
use tongban_proto::admin::v1::StatusRequest;

use crate::client::NodeArgs;

fn ago(now_ms: i64, at_ms: i64) -> String {
    if at_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - at_ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

pub fn run(at: NodeArgs) -> ExitCode {
    crate::block_on(async move {
        let r = AdminClient::new(at.connect().await?)
            .status(StatusRequest {})
            .await;
        let s = match r {
            Ok(r) => r.into_inner(),
            Err(status) => return Ok(crate::client::exit_code(Err(status))),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        println!(
            "node {}: up {} s, catalog v{} ({} services)",
            s.city, s.uptime_s, s.catalog_version, s.services
        );
        println!(
            "audit: head seq {} ({}…), last checkpoint seq {} ({})",
            s.audit_head_seq,
            s.audit_head_hash.get(..16).unwrap_or(""),
            s.last_checkpoint_seq,
            ago(now, s.last_checkpoint_at_ms)
        );
        if !s.contradicted.is_empty() {
            println!("AUDIT CONTRADICTED: {}", s.contradicted);
        }
        println!(
            "{:<10} {:<6} {:<10} {:<9} last catalog",
            "peer", "link", "catalog", "services"
        );
        let mut down = Vec::new();
        for p in &s.peers {
            if !p.up {
                down.push(p.city.clone());
            }
            println!(
                "{:<10} {:<6} {:<10} {:<9} {}",
                p.city,
                if p.up { "up" } else { "DOWN" },
                format!("v{}", p.catalog_version),
                p.services,
                ago(now, p.catalog_issued_at_ms)
            );
        }
        println!(
            "connection errors: {} on the listeners, {} upstream",
            s.listener_connection_errors, s.upstream_connection_errors
        );
        for e in s.recent_errors.iter().take(5) {
            println!(
                "  {} {} {}: {}",
                ago(now, e.at_ms),
                e.side,
                e.peer,
                e.reason
            );
        }
        if !down.is_empty() || !s.contradicted.is_empty() {
            if !down.is_empty() {
                eprintln!("tongban: peer(s) down: {}", down.join(", "));
            }
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}
