//! `tongban status`: a node's state at a glance (its Admin API); exit 1 when a peer is down,
//! the audit log cannot be written, or a peer contradicts the node's audit log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tongban_proto::admin::v1::admin_client::AdminClient;
use tongban_proto::admin::v1::{StatusRequest, StatusResponse};

/// Which node: its config (the admin listener, no token), or its caller listener and a
/// token with role audit-operator.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The node's config file: status is read from its admin listener (`listen.admin`).
    #[arg(long, required_unless_present = "node", conflicts_with = "node")]
    config: Option<PathBuf>,
    /// The node's caller address, e.g. http://127.0.0.1:7000 (with --token).
    #[arg(long, requires = "token")]
    node: Option<String>,
    /// A caller JWT with role audit-operator (with --node); env TONGBAN_TOKEN.
    #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

async fn fetch(at: &StatusArgs) -> anyhow::Result<Result<StatusResponse, tonic::Status>> {
    if let Some(path) = &at.config {
        let config = tongban_gateway::NodeConfig::load(path)?;
        let addr = config.admin_addr;
        if addr.port() == 0 {
            anyhow::bail!(
                "listen.admin in {} has no fixed port (the node picked one at start and logged it); set one, or use --node",
                path.display()
            );
        }
        let host = if addr.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        let url = format!("http://{host}");
        let channel = tonic::transport::Channel::from_shared(url.clone())?
            .connect()
            .await
            .with_context(|| format!("cannot reach the admin listener of the node at {url}"))?;
        return Ok(AdminClient::new(channel)
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner));
    }
    let (Some(node), Some(token)) = (&at.node, &at.token) else {
        anyhow::bail!("give --config FILE, or --node URL with --token");
    };
    Ok(AdminClient::new(crate::client::connect(node, token).await?)
        .status(StatusRequest {})
        .await
        .map(tonic::Response::into_inner))
}

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

pub fn run(at: StatusArgs) -> ExitCode {
    crate::block_on(async move {
        let s = match fetch(&at).await? {
            Ok(s) => s,
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
        if !s.audit_writable {
            println!("AUDIT NOT WRITABLE: the node reports NOT_SERVING");
        }
        if s.audit_anchor_confirmed {
            println!("audit anchor: {}", s.audit_anchor);
        } else {
            println!("AUDIT ANCHOR {}", s.audit_anchor);
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
        if !down.is_empty() || !s.contradicted.is_empty() || !s.audit_writable {
            if !down.is_empty() {
                eprintln!("tongban: peer(s) down: {}", down.join(", "));
            }
            if !s.audit_writable {
                eprintln!("tongban: the audit log cannot be written");
            }
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}
