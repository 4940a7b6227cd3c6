//! `tongban certs init`: the dev PKI of a federation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tongban_devkit::certs;
use tongban_gateway::trust::NodeKeyType;

use crate::EX_CONFIG;

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Generate a CA and a node certificate per city, and the trust bundle.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// A city of the federation (repeat for each).
        #[arg(long = "city", required = true)]
        cities: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Key type of the CAs and node certificates: ed25519 (default) or p256 (ECDSA
        /// P-256, for peers whose TLS stack has no Ed25519 certificates, e.g. gRPC C core).
        #[arg(long, value_enum, default_value_t = KeyTypeArg::Ed25519)]
        key_type: KeyTypeArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KeyTypeArg {
    Ed25519,
    P256,
}

/// Generates the certificates.
pub fn run(cmd: CertsCmd) -> ExitCode {
    let CertsCmd::Init {
        out,
        cities,
        force,
        key_type,
    } = cmd;
    let kind = match key_type {
        KeyTypeArg::Ed25519 => NodeKeyType::Ed25519,
        KeyTypeArg::P256 => NodeKeyType::P256,
    };
    match certs::init_with(&out, &cities, force, kind) {
        Ok(g) => {
            println!("trust bundle: {}", g.trust_bundle.display());
            for c in g.cities {
                println!(
                    "{}: node certificate {}, key {}",
                    c.city,
                    c.node_cert.display(),
                    c.node_key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}
