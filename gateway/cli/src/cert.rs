//! `tongban cert verify`: checks an electronic certificate (电子证照) with nothing but the
//! federation trust bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum CertCmd {
    /// Verify a result document (tongban-ecert/1): exit 0 when valid, 1 with the reason
    /// (bad signature, unknown city, expired, edited, malformed).
    Verify {
        file: PathBuf,
        #[arg(long, default_value = "deploy/certs/trust-bundle.toml")]
        trust_bundle: PathBuf,
    },
}

pub fn run(cmd: CertCmd) -> ExitCode {
    let CertCmd::Verify { file, trust_bundle } = cmd;
    let bundle = match tongban_gateway::trust::TrustBundle::load(&trust_bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tongban: cannot read {}: {e}", file.display());
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    match tongban_crosscity::ecert::verify(&bytes, &bundle, time::OffsetDateTime::now_utc()) {
        Ok(d) => {
            println!(
                "verified: {} {} ({}) issued by {}/{} to {} at {}, valid until {}",
                d.item.code,
                d.item.name_zh,
                d.kind,
                d.issuer.city,
                d.issuer.organisation,
                d.holder.masked_id,
                d.issued_at,
                d.valid_until
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {e}");
            ExitCode::FAILURE
        }
    }
}
