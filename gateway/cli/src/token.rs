//! `tongban token issue`: caller tokens from the dev identity provider of `certs init`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tongban_devkit::idp;

use crate::EX_CONFIG;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Print a JWT for an organisation of a city.
    Issue {
        /// The directory given to `certs init --out`.
        #[arg(long, default_value = "deploy/certs")]
        certs: PathBuf,
        #[arg(long)]
        city: String,
        #[arg(long)]
        org: String,
        /// A role (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 1d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The `sub` claim (the calling system); defaults to `<org>-system`.
        #[arg(long)]
        sub: Option<String>,
    },
}

/// Prints a token.
pub fn run(cmd: TokenCmd) -> ExitCode {
    let TokenCmd::Issue {
        certs,
        city,
        org,
        roles,
        ttl,
        sub,
    } = cmd;
    let Some(ttl) = idp::parse_ttl(&ttl) else {
        eprintln!("tongban: --ttl `{ttl}` is not a duration like 90s, 15m, 1h or 1d");
        return ExitCode::from(EX_CONFIG);
    };
    let key = certs.join(&city).join("idp.key");
    let kid = idp::kid(&city, 1);
    let sub = sub.unwrap_or_else(|| format!("{org}-system"));
    let token =
        idp::DevIdp::load(&city, &kid, &key).and_then(|idp| idp.issue(&org, &roles, ttl, &sub));
    match token {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}
