//! `tongban policy check`: which rule of a node's policy decides a call.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tongban_gateway::NodeConfig;

use crate::EX_CONFIG;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Say whether a call would pass the node's policy, and which rule decides.
    Check(PolicyCheck),
}

#[derive(clap::Args)]
pub struct PolicyCheck {
    #[arg(long)]
    config: PathBuf,
    /// city/org of the caller.
    #[arg(long)]
    caller: String,
    /// A role of the caller (repeat for several).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// The city that serves the call.
    #[arg(long)]
    target: String,
    #[arg(long)]
    service: String,
    #[arg(long, default_value = "")]
    method: String,
    #[arg(long)]
    purpose: String,
    #[arg(long)]
    catalog_code: Option<String>,
}

/// Runs a policy command.
pub fn run(cmd: PolicyCmd) -> ExitCode {
    let PolicyCmd::Check(args) = cmd;
    policy_check(args)
}

/// `tongban policy check`: exit 0 when allowed, 1 when denied, 64 on a bad config.
fn policy_check(args: PolicyCheck) -> ExitCode {
    let PolicyCheck {
        config,
        caller,
        roles,
        target,
        service,
        method,
        purpose,
        catalog_code,
    } = args;
    let policy = NodeConfig::load(&config)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            tongban_gateway::policy::Policy::load(&c.policy_file).map_err(|e| e.to_string())
        });
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let Some((caller_city, caller_org)) = caller.split_once('/') else {
        eprintln!("tongban: --caller must be city/org, e.g. jinan/hrss");
        return ExitCode::from(EX_CONFIG);
    };
    let req = tongban_gateway::policy::PolicyRequest {
        caller_city,
        caller_org,
        roles: &roles,
        target_city: &target,
        service: &service,
        method: &method,
        purpose: &purpose,
        catalog_code: catalog_code.as_deref(),
    };
    let decision = policy.decide(&req);
    println!("{}", if decision.allowed { "ALLOW" } else { "DENY" });
    println!("{}", decision.explain(&req));
    if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
