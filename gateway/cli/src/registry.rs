//! `tongban registry`: register, withdraw and list services through a node's Registry API.

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{
    ListCatalogItemsRequest, ListServicesRequest, RegisterServiceRequest, Scope,
    ServiceRegistration, WithdrawServiceRequest,
};

use crate::client::NodeArgs;

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Register (or replace) a service of an organisation.
    Register {
        #[command(flatten)]
        at: NodeArgs,
        #[arg(long)]
        org: String,
        #[arg(long)]
        service: String,
        /// Provider endpoint, e.g. http://127.0.0.1:7101 (repeat for several).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Catalog code (repeat for several).
        #[arg(long = "catalog-code")]
        catalog_codes: Vec<String>,
        #[arg(long)]
        personal_data: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Withdraw a service.
    Withdraw {
        #[command(flatten)]
        at: NodeArgs,
        #[arg(long)]
        org: String,
        #[arg(long)]
        service: String,
    },
    /// List the catalog: the registered services, or with --items the federation's catalog
    /// items (code, names, category, providers, where they are offered now).
    List {
        #[command(flatten)]
        at: NodeArgs,
        #[arg(long, value_enum, default_value = "all")]
        scope: ScopeArg,
        #[arg(long, default_value = "")]
        city: String,
        /// List the catalog items instead of the registered services.
        #[arg(long)]
        items: bool,
        /// With --items: only this category (e.g. provident-fund).
        #[arg(long, default_value = "")]
        category: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    All,
    Local,
    Federated,
}

/// Runs a registry command.
pub fn run(cmd: RegistryCmd) -> ExitCode {
    crate::block_on(run_registry(cmd))
}

async fn run_registry(cmd: RegistryCmd) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        RegistryCmd::Register {
            at,
            org,
            service,
            endpoints,
            catalog_codes,
            personal_data,
            description,
        } => {
            let r = RegistryClient::new(at.connect().await?)
                .register_service(RegisterServiceRequest {
                    registration: Some(ServiceRegistration {
                        organisation: org,
                        service,
                        endpoints,
                        catalog_codes,
                        personal_data,
                        description,
                    }),
                })
                .await;
            r.map(|r| version_line("registered", r.into_inner().catalog_version))
        }
        RegistryCmd::Withdraw { at, org, service } => {
            let mut client = RegistryClient::new(at.connect().await?);
            let request = WithdrawServiceRequest {
                organisation: org,
                service,
            };
            let r = client.withdraw_service(request).await;
            r.map(|r| version_line("withdrawn", r.into_inner().catalog_version))
        }
        RegistryCmd::List {
            at,
            items: true,
            category,
            ..
        } => {
            let r = RegistryClient::new(at.connect().await?)
                .list_catalog_items(ListCatalogItemsRequest { category })
                .await;
            r.map(|r| {
                let r = r.into_inner();
                println!("# catalog {} {}", r.federation, r.version);
                for i in r.items {
                    let mut providers: Vec<String> = i
                        .providers
                        .iter()
                        .map(|(c, o)| format!("{c}/{o}"))
                        .collect();
                    providers.sort();
                    println!(
                        "{:<6} {:<22} {:<24} {:<22} {:<3} {:<22} offered in: {}\n       {} · {}",
                        i.code,
                        i.category,
                        providers.join(" "),
                        i.produces,
                        i.time_limit_days,
                        if i.personal_data { "personal data" } else { "" },
                        if i.offered_in.is_empty() {
                            "-".to_string()
                        } else {
                            i.offered_in.join(", ")
                        },
                        i.name_zh,
                        i.name_en,
                    );
                }
            })
        }
        RegistryCmd::List {
            at, scope, city, ..
        } => {
            let scope = match scope {
                ScopeArg::All => Scope::Unspecified,
                ScopeArg::Local => Scope::Local,
                ScopeArg::Federated => Scope::Federated,
            };
            let r = RegistryClient::new(at.connect().await?)
                .list_services(ListServicesRequest {
                    scope: scope as i32,
                    city,
                })
                .await;
            r.map(|r| {
                for s in r.into_inner().services {
                    println!(
                        "{:<10} {:<16} {:<44} {:<9} {}",
                        s.city,
                        s.organisation,
                        s.service,
                        if s.available { "up" } else { "down" },
                        s.catalog_codes.join(",")
                    );
                }
            })
        }
    };
    Ok(crate::client::exit_code(result))
}

fn version_line(what: &str, version: u64) {
    println!("{what}; catalog version {version}");
}
