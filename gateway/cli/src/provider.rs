//! `tongban provider`: the reference providers a department runs behind its node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};

#[derive(Subcommand)]
pub enum ProviderCmd {
    /// The cross-city services of one organisation of one city (tongban.crosscity.v2, h2c):
    /// the catalog items the catalog assigns to it, applications in sled under --data-dir,
    /// results signed with the organisation's key.
    Crosscity {
        #[command(flatten)]
        at: Placement,
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
        #[command(flatten)]
        register: Registration,
    },
    /// The city's registry of mutually recognisable examination and lab results
    /// (tongban.medical.v1.ResultRegistry, h2c): reports in sled under --data-dir, verdicts by
    /// the rules file.
    Medical {
        #[command(flatten)]
        at: Placement,
        /// The recognition rules; the embedded Jinan–Qingdao rules if absent.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// The largest report attachment taken (MiB); larger uploads get RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 1024)]
        max_attachment_mib: u64,
        #[command(flatten)]
        register: Registration,
    },
    /// The city's "one thing" bundle service (tongban.bundle.v1, h2c): bundles in sled under
    /// --data-dir, each item submitted to its department through --node as --org, with the
    /// citizen's consent; unfinished bundles resume at start.
    Bundle {
        #[command(flatten)]
        at: Placement,
        /// The catalog file (its [[bundles]]); the embedded Jinan–Qingdao catalog if absent.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// The federation PKI: CERTS/trust-bundle.toml, and CERTS/<city>/node.pem (the node
        /// whose consents the service checks).
        #[arg(long, default_value = "deploy/certs")]
        certs: PathBuf,
        /// The city node's caller address: the service registers there and reaches the
        /// departments through it.
        #[arg(long)]
        node: String,
        /// The organisation's caller JWT at --node; env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        /// The URL the node reaches this service at (default http://LISTEN).
        #[arg(long)]
        advertise: Option<String>,
        /// How long an item whose department cannot be reached is retried (its deadline),
        /// in seconds from its first attempt; then the bundle ends partial.
        #[arg(long, default_value_t = 1800)]
        retry_for_s: u64,
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

/// Registering with the node at start.
#[derive(clap::Args)]
pub struct Registration {
    /// Register with this node at start (its caller address, e.g. http://127.0.0.1:7000)
    /// for the organisation's catalog items; retried until the node answers.
    #[arg(long)]
    node: Option<String>,
    /// The organisation's caller JWT for --node (`tongban token issue --org ORG`); env
    /// TONGBAN_TOKEN.
    #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The URL the node reaches this provider at (default http://LISTEN, with the port
    /// bound when LISTEN's is 0).
    #[arg(long)]
    advertise: Option<String>,
}

impl Registration {
    /// Starts registering `registrations` (their endpoints filled in) in the background.
    fn spawn(
        self,
        listen: std::net::SocketAddr,
        registrations: Vec<ServiceRegistration>,
    ) -> anyhow::Result<()> {
        let Some(node) = self.node else {
            return Ok(());
        };
        let token = self
            .token
            .context("--node needs --token (or TONGBAN_TOKEN)")?;
        let endpoint = self.advertise.unwrap_or_else(|| format!("http://{listen}"));
        tokio::spawn(async move {
            for mut r in registrations {
                r.endpoints = vec![endpoint.clone()];
                register_until_done(node.clone(), token.clone(), r).await;
            }
        });
        Ok(())
    }
}

/// Where a provider runs: its city and organisation (it serves and registers as that
/// organisation), its listener and its data directory (its store and subject key).
#[derive(clap::Args)]
pub struct Placement {
    #[arg(long)]
    city: String,
    /// The organisation, e.g. gjj.
    #[arg(long)]
    org: String,
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long)]
    data_dir: PathBuf,
}

/// Runs a provider until a signal. Its configuration is checked before it listens: a bad
/// catalog, key or organisation exits 64.
pub fn run(cmd: ProviderCmd) -> ExitCode {
    match cmd {
        ProviderCmd::Medical {
            at:
                Placement {
                    city,
                    org,
                    listen,
                    data_dir,
                },
            rules,
            max_attachment_mib,
            register,
        } => {
            let rules = match tongban_medical::Rules::load_or_embedded(rules.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tongban: {e}");
                    return ExitCode::from(crate::EX_CONFIG);
                }
            };
            crate::block_on(async move {
                let version = rules.version.clone();
                let mut registry = tongban_medical::Registry::open(&city, data_dir, rules).await?;
                registry.max_attachment_bytes = max_attachment_mib.saturating_mul(1 << 20);
                let listener = bind(listen).await?;
                let listen = listener.local_addr()?;
                tracing::info!(%city, %org, %listen, rules = %version, "medical result registry started");
                let registration =
                    |service: &str, personal_data, codes: &[&str]| ServiceRegistration {
                        organisation: org.clone(),
                        service: service.into(),
                        endpoints: Vec::new(),
                        catalog_codes: codes.iter().map(|c| c.to_string()).collect(),
                        personal_data,
                        description: format!("medical results of {city}"),
                    };
                register.spawn(
                    listen,
                    vec![
                        registration(tongban_medical::SERVICE, true, &tongban_medical::ITEMS),
                        registration(tongban_medical::RECOGNITION, false, &[]),
                    ],
                )?;
                registry
                    .serve(listener, crate::node::wait_for_signal())
                    .await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        ProviderCmd::Probe { city, listen } => crate::block_on(async move {
            let listener = bind(listen).await?;
            tracing::info!(%city, %listen, "probe provider started");
            tongban_devkit::probe::Provider::new(city)
                .serve(listener, crate::node::wait_for_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }),
        ProviderCmd::Bundle {
            at:
                Placement {
                    city,
                    org,
                    listen,
                    data_dir,
                },
            catalog,
            certs,
            node,
            token,
            advertise,
            retry_for_s,
        } => {
            let retry = tongban_bundle::Retry {
                retry_for: Duration::from_secs(retry_for_s),
                ..tongban_bundle::Retry::default()
            };
            let config = match bundle_config(
                &city,
                &org,
                data_dir,
                catalog,
                &certs,
                (&node, &token),
                retry,
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tongban: {e:#}");
                    return ExitCode::from(crate::EX_CONFIG);
                }
            };
            crate::block_on(async move {
                let service = tongban_bundle::BundleService::open(config).await?;
                let listener = bind(listen).await?;
                let listen = listener.local_addr()?;
                tracing::info!(%city, %org, %listen, "bundle service started");
                Registration {
                    node: Some(node),
                    token: Some(token),
                    advertise,
                }
                .spawn(
                    listen,
                    vec![ServiceRegistration {
                        organisation: org.clone(),
                        service: tongban_bundle::SERVICE.into(),
                        endpoints: Vec::new(),
                        catalog_codes: Vec::new(),
                        personal_data: true,
                        description: format!("\"one thing\" bundles of {city}"),
                    }],
                )?;
                service
                    .serve(listener, crate::node::wait_for_signal())
                    .await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        ProviderCmd::Crosscity {
            at:
                Placement {
                    city,
                    org,
                    listen,
                    data_dir,
                },
            catalog,
            certs,
            step_ms,
            register,
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
                let listen = listener.local_addr()?;
                tracing::info!(%city, %org, %listen, codes = %dept.codes().join(","), "cross-city provider started");
                register.spawn(
                    listen,
                    vec![ServiceRegistration {
                        organisation: org.clone(),
                        service: "tongban.crosscity.v2.CrossCityService".into(),
                        endpoints: Vec::new(),
                        catalog_codes: dept.codes(),
                        personal_data: dept.personal_data(),
                        description: format!("cross-city services of {city}/{org}"),
                    }],
                )?;
                dept.serve(listener, crate::node::wait_for_signal()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// Registers with the node, retrying while it is unreachable; a refusal is final.
async fn register_until_done(node: String, token: String, registration: ServiceRegistration) {
    let mut attempt = 0u32;
    loop {
        let result = match crate::client::connect(&node, &token).await {
            Ok(channel) => RegistryClient::new(channel)
                .register_service(RegisterServiceRequest {
                    registration: Some(registration.clone()),
                })
                .await
                .map(|r| r.into_inner().catalog_version)
                .map_err(|s| {
                    (
                        s.code() == tonic::Code::Unavailable,
                        s.message().to_string(),
                    )
                }),
            Err(e) => Err((true, format!("{e:#}"))),
        };
        match result {
            Ok(version) => {
                tracing::info!(%node, version, "registered with the node");
                return;
            }
            Err((true, error)) => {
                if attempt.is_multiple_of(25) {
                    tracing::warn!(%node, %error, "node not reachable yet, retrying");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((false, error)) => {
                tracing::error!(%node, %error, "the node refused the registration");
                return;
            }
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

fn bundle_config(
    city: &str,
    org: &str,
    data_dir: PathBuf,
    catalog: Option<PathBuf>,
    certs: &std::path::Path,
    (node, token): (&str, &str),
    retry: tongban_bundle::Retry,
) -> anyhow::Result<tongban_bundle::BundleConfig> {
    let catalog = tongban_catalog::Catalog::load_or_embedded(catalog.as_deref())?;
    let trust = tongban_gateway::trust::TrustBundle::load(&certs.join("trust-bundle.toml"))?;
    let home_node_key =
        tongban_gateway::trust::node_public_key(city, &certs.join(city).join("node.pem"), &trust)
            .with_context(|| format!("the node certificate of {city}"))?;
    Ok(tongban_bundle::BundleConfig {
        city: city.to_string(),
        org: org.to_string(),
        data_dir,
        catalog: Arc::new(catalog),
        trust: Arc::new(trust),
        home_node_key,
        node: node.to_string(),
        token: token.to_string(),
        retry,
    })
}
