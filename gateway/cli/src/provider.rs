//! `tongban provider`: the reference providers a department runs behind its node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ProviderCmd {
    /// The cross-city services of one organisation of one city (tongban.crosscity.v2, h2c):
    /// the catalog items the catalog assigns to it, applications in sled under --data-dir,
    /// results signed with the organisation's key.
    Crosscity {
        #[arg(long)]
        city: String,
        /// The organisation, e.g. gjj (it serves that organisation's catalog items only).
        #[arg(long)]
        org: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where its applications and its subject key live.
        #[arg(long)]
        data_dir: PathBuf,
        /// The catalog file; the embedded Jinan–Qingdao catalog if absent.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// The federation PKI made by `tongban certs init`: the organisation's signing key is
        /// CERTS/<city>/orgs/<org>.{pem,key}, checked against CERTS/trust-bundle.toml.
        #[arg(long, default_value = "deploy/certs")]
        certs: PathBuf,
        /// How long the reference back office takes per step of an application.
        #[arg(long, default_value_t = 1000)]
        step_ms: u64,
    },
    /// The probe: an in-memory tongban.crosscity.v1 service without rules (the benchmark's
    /// backend; it costs next to nothing per call).
    Probe {
        #[arg(long)]
        city: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// Runs a provider until a signal. Its configuration is checked before it listens: a bad
/// catalog, key or organisation exits 64.
pub fn run(cmd: ProviderCmd) -> ExitCode {
    match cmd {
        ProviderCmd::Probe { city, listen } => crate::block_on(async move {
            let listener = bind(listen).await?;
            tracing::info!(%city, %listen, "probe provider started");
            tongban_devkit::probe::Provider::new(city)
                .serve(listener, crate::node::wait_for_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }),
        ProviderCmd::Crosscity {
            city,
            org,
            listen,
            data_dir,
            catalog,
            certs,
            step_ms,
        } => {
            let config = match department_config(city, org, data_dir, catalog, &certs, step_ms) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tongban: {e:#}");
                    return ExitCode::from(crate::EX_CONFIG);
                }
            };
            crate::block_on(async move {
                let (city, org) = (config.city.clone(), config.org.clone());
                let dept = tongban_crosscity::Department::open(config).await?;
                let listener = bind(listen).await?;
                tracing::info!(%city, %org, %listen, codes = %dept.codes().join(","), "cross-city provider started");
                dept.serve(listener, crate::node::wait_for_signal()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

fn department_config(
    city: String,
    org: String,
    data_dir: PathBuf,
    catalog: Option<PathBuf>,
    certs: &std::path::Path,
    step_ms: u64,
) -> anyhow::Result<tongban_crosscity::DepartmentConfig> {
    let catalog = tongban_catalog::Catalog::load_or_embedded(catalog.as_deref())?;
    let bundle = tongban_gateway::trust::TrustBundle::load(&certs.join("trust-bundle.toml"))?;
    let dir = certs.join(&city).join("orgs");
    let signer = tongban_gateway::trust::NodeIdentity::load_org(
        &city,
        &org,
        &dir.join(format!("{org}.pem")),
        &dir.join(format!("{org}.key")),
        &bundle,
    )
    .with_context(|| format!("the signing key of {city}/{org}"))?;
    Ok(tongban_crosscity::DepartmentConfig {
        city,
        org,
        data_dir,
        catalog: Arc::new(catalog),
        signer,
        step: Duration::from_millis(step_ms),
    })
}
