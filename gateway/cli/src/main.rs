//! `tongban`: run a node, generate a federation's certificates, run the demo, manage a node's
//! registry, or run the reference provider. `main` only parses and wires.

mod audit;
mod catalog;
mod cert;
mod certs;
mod client;
mod demo;
mod medical;
mod node;
mod policy;
mod provider;
mod registry;
mod report;
mod status;
mod token;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Exit code for a bad config or bad arguments (sysexits EX_USAGE).
const EX_CONFIG: u8 = 64;
/// sysexits EX_DATAERR: the audit log does not verify (or a peer contradicts it).
const EX_DATAERR: u8 = 65;
/// sysexits EX_UNAVAILABLE: no peer confirmed the audit log in time (`audit.anchor = "wait"`).
const EX_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "tongban",
    version,
    about = "Tongban: a federated gRPC gateway between city governments"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Log lines for people (`text`) or one JSON object per line (`json`), with the fields
    /// of the enclosing spans (a call's `request_id`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node from its TOML config.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Certificates of a federation.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Start a Jinan and a Qingdao node with providers on loopback and make cross-city calls.
    Demo {
        /// Keep the federation running, serve the citizens' portal, and print where to
        /// point a client.
        #[arg(long)]
        serve: bool,
        #[command(flatten)]
        portal: demo::PortalArgs,
    },
    /// The regulators' indicators (监测评估) for a window, from the nodes' audit logs and the
    /// departments' application states: table, CSV, JSON or one self-contained HTML page.
    Report(report::ReportArgs),
    /// Manage the registry of a node (through its Registry API).
    #[command(subcommand)]
    Registry(registry::RegistryCmd),
    /// Run a reference provider behind a node.
    #[command(subcommand)]
    Provider(provider::ProviderCmd),
    /// Caller tokens from the dev identity provider made by `certs init`.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Inspect a node's policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// A node's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// A node's state at a glance (peers, catalogs, audit head, recent errors); exit 1 when
    /// a peer is down or the audit log cannot be written. With `--config`, asks the node's
    /// admin listener (no token); with `--node`, its caller listener (role audit-operator).
    Status {
        #[command(flatten)]
        at: status::StatusArgs,
    },
    /// Medical results: import FHIR R4 into a city's result registry.
    #[command(subcommand)]
    Medical(medical::MedicalCmd),
    /// Electronic certificates (电子证照) issued by the cross-city services.
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// The operator-owned data files: the federation's catalog (deploy/catalog/) and the
    /// medical recognition rules (deploy/medical/).
    #[command(subcommand)]
    Catalog(catalog::CatalogCmd),
}

impl From<LogFormat> for tongban_telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => tongban_telemetry::LogFormat::Text,
            LogFormat::Json => tongban_telemetry::LogFormat::Json,
        }
    }
}

/// How a command logs: the global flags.
#[derive(Clone)]
pub struct Logging {
    filter: String,
    format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.cmd {
        // The demo's output is its table: keep the logs to warnings unless asked.
        Cmd::Demo { .. } if cli.log == "info" => "warn".to_string(),
        _ => cli.log.clone(),
    };
    let logging = Logging {
        filter: log,
        format: cli.log_format,
    };
    // A node sets up its logs (and span export) from its config, once it is parsed.
    if !matches!(cli.cmd, Cmd::Node { .. }) {
        let _ = tongban_telemetry::init(&logging.filter, logging.format.into(), None);
    }
    match cli.cmd {
        Cmd::Node { config } => node::run(config, logging),
        Cmd::Certs(c) => certs::run(c),
        Cmd::Demo { serve, portal } => demo::run(serve, portal),
        Cmd::Registry(c) => registry::run(c),
        Cmd::Provider(c) => provider::run(c),
        Cmd::Token(c) => token::run(c),
        Cmd::Policy(c) => policy::run(c),
        Cmd::Audit(c) => audit::run(c),
        Cmd::Status { at } => status::run(at),
        Cmd::Cert(c) => cert::run(c),
        Cmd::Medical(c) => medical::run(c),
        Cmd::Catalog(c) => catalog::run(c),
        Cmd::Report(a) => report::run(a),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs an async command on a new runtime; an error is printed and exits 1.
fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(f)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tongban: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
