//! `tongban`: run a node, generate a federation's certificates, run the demo, manage a node's
//! registry, or run the reference provider. `main` only parses and wires.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tongban_gateway::{certs, demo, NodeConfig};
use tongban_proto::registry::v1::registry_client::RegistryClient;
use tongban_proto::registry::v1::{
    ListServicesRequest, RegisterServiceRequest, Scope, ServiceRegistration, WithdrawServiceRequest,
};

/// Exit code for a bad config or bad arguments (sysexits EX_USAGE).
const EX_CONFIG: u8 = 64;
/// sysexits EX_DATAERR: the audit log does not verify (or a peer contradicts it).
const EX_DATAERR: u8 = 65;

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
    #[command(subcommand)]
    cmd: Cmd,
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
    Certs(CertsCmd),
    /// Start a Jinan and a Qingdao node with providers on loopback and make cross-city calls.
    Demo {
        /// Keep the federation running and print where to point a client.
        #[arg(long)]
        serve: bool,
    },
    /// Manage the registry of a node (through its Registry API).
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Run a reference provider behind a node.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// Caller tokens from the dev identity provider made by `certs init`.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Inspect a node's policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// A node's audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the hash chain (and this node's signed checkpoints) of a data directory.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Rebuild the audit indexes from the log (stop the node first).
    Reindex {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Query records through a node's Audit API (needs role audit-operator).
    Query {
        #[arg(long)]
        node: String,
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        /// city/org of the caller.
        #[arg(long, default_value = "")]
        caller: String,
        #[arg(long, default_value = "")]
        service: String,
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Both sides' records of one exchange.
    Show {
        #[arg(long)]
        node: String,
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        request_id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
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

#[derive(Subcommand)]
enum PolicyCmd {
    /// Say whether a call would pass the node's policy, and which rule decides.
    Check(PolicyCheck),
}

#[derive(clap::Args)]
struct PolicyCheck {
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

#[derive(Subcommand)]
enum CertsCmd {
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
enum KeyTypeArg {
    Ed25519,
    P256,
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Register (or replace) a service of an organisation.
    Register {
        /// The node's caller address, e.g. http://127.0.0.1:7000
        #[arg(long)]
        node: String,
        /// A caller JWT of the node's city (`tongban token issue`); env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
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
        /// The node's caller address, e.g. http://127.0.0.1:7000
        #[arg(long)]
        node: String,
        /// A caller JWT of the node's city (`tongban token issue`); env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        org: String,
        #[arg(long)]
        service: String,
    },
    /// List the catalog.
    List {
        /// The node's caller address, e.g. http://127.0.0.1:7000
        #[arg(long)]
        node: String,
        /// A caller JWT of the node's city (`tongban token issue`); env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, value_enum, default_value = "all")]
        scope: ScopeArg,
        #[arg(long, default_value = "")]
        city: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    All,
    Local,
    Federated,
}

#[derive(Subcommand)]
enum ProviderCmd {
    /// The reference cross-city services provider (h2c).
    Crosscity {
        #[arg(long)]
        city: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.cmd {
        // The demo's output is its table: keep the logs to warnings unless asked.
        Cmd::Demo { .. } if cli.log == "info" => "warn".to_string(),
        _ => cli.log.clone(),
    };
    init_tracing(&log);
    match cli.cmd {
        Cmd::Node { config } => run_node(config),
        Cmd::Certs(CertsCmd::Init {
            out,
            cities,
            force,
            key_type,
        }) => {
            let kind = match key_type {
                KeyTypeArg::Ed25519 => tongban_gateway::trust::NodeKeyType::Ed25519,
                KeyTypeArg::P256 => tongban_gateway::trust::NodeKeyType::P256,
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
        Cmd::Token(TokenCmd::Issue {
            certs,
            city,
            org,
            roles,
            ttl,
            sub,
        }) => {
            let Some(ttl) = tongban_gateway::idp::parse_ttl(&ttl) else {
                eprintln!("tongban: --ttl `{ttl}` is not a duration like 90s, 15m, 1h or 1d");
                return ExitCode::from(EX_CONFIG);
            };
            let key = certs.join(&city).join("idp.key");
            let kid = tongban_gateway::idp::kid(&city, 1);
            let sub = sub.unwrap_or_else(|| format!("{org}-system"));
            let token = tongban_gateway::idp::DevIdp::load(&city, &kid, &key)
                .and_then(|idp| idp.issue(&org, &roles, ttl, &sub));
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
        Cmd::Policy(PolicyCmd::Check(args)) => policy_check(args),
        Cmd::Audit(AuditCmd::Verify { data_dir }) => audit_verify(&data_dir),
        Cmd::Audit(AuditCmd::Reindex { data_dir }) => {
            match tongban_gateway::audit::reindex_offline(&data_dir) {
                Ok(r) => {
                    println!("reindexed {} records (head seq {})", r.records, r.head.seq);
                    match r.first_bad {
                        None => ExitCode::SUCCESS,
                        Some((seq, why)) => {
                            println!("the log stops verifying at seq {seq}: {why}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("tongban: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        other => match runtime().and_then(|rt| rt.block_on(run_async(other))) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tongban: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Parses and loads everything the config names before a port is bound; a bad config exits
/// with 64 and a message naming the key.
fn run_node(path: PathBuf) -> ExitCode {
    let config = match NodeConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tongban: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Certificates, keys, JWKS, policy and store, all before any port is bound.
        let prepared = match tongban_gateway::PreparedNode::prepare(config.clone()).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tongban: {e}");
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
            }
        };
        let started = async {
            let listeners = tongban_gateway::Listeners::bind(&config).await?;
            prepared.start(listeners).await
        };
        let node = match started.await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tongban: {e}");
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1));
            }
        };
        let mut contradiction = node.auditor().watch_contradiction();
        let contradicted = tokio::select! {
            () = wait_for_signal() => None,
            Ok(c) = contradiction.wait_for(Option::is_some) => c.clone(),
        };
        node.shutdown().await;
        match contradicted {
            None => ExitCode::SUCCESS,
            Some(why) => {
                eprintln!("tongban: the audit log is contradicted by a peer: {why}");
                ExitCode::from(EX_DATAERR)
            }
        }
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A channel to a node's caller listener that sends `--token` with every call.
type Authed = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    tongban_gateway::local::Bearer,
>;

async fn connect(node: &str, token: &str) -> anyhow::Result<Authed> {
    let channel = tonic::transport::Channel::from_shared(node.to_string())
        .with_context(|| format!("`{node}` is not a node url (e.g. http://127.0.0.1:7000)"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the node at {node}"))?;
    let bearer = tongban_gateway::local::Bearer::new(token.trim())
        .map_err(|_| anyhow::anyhow!("--token is not a jwt"))?;
    Ok(Authed::new(channel, bearer))
}

async fn run_async(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Demo { serve } => run_demo(serve).await,
        Cmd::Registry(r) => run_registry(r).await,
        Cmd::Provider(ProviderCmd::Crosscity { city, listen }) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(%city, %listen, "cross-city provider started");
            tongban_crosscity::Provider::new(city)
                .serve(listener, wait_for_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit(a) => run_audit(a).await,
        Cmd::Node { .. } | Cmd::Certs(_) | Cmd::Token(_) | Cmd::Policy(_) => Ok(ExitCode::FAILURE),
    }
}

/// `tongban audit verify`: exit 0 when the chain verifies, 1 when broken (naming the first
/// bad sequence), 64 when there is no log.
fn audit_verify(data_dir: &std::path::Path) -> ExitCode {
    match tongban_gateway::audit::verify_offline(data_dir) {
        Ok((report, with_checkpoints)) => {
            let cps = if with_checkpoints {
                "and its signed checkpoints verify"
            } else {
                "verifies (signed checkpoints not checked: the store is in use or absent)"
            };
            if let (Some(torn), Some((_, why))) = (&report.torn_tail, &report.first_bad) {
                // Not a break in the chain: what a crash leaves, cut at the next start.
                println!(
                    "ok: {} records, head seq {} hash {}; the chain {cps}",
                    report.records,
                    report.head.seq,
                    hex::encode(report.head.hash)
                );
                println!(
                    "note: {} has a {why} (bytes {}..{})",
                    torn.segment.display(),
                    torn.start,
                    torn.end
                );
                return ExitCode::SUCCESS;
            }
            match report.first_bad {
                None => {
                    println!(
                        "ok: {} records, head seq {} hash {}; the chain {cps}",
                        report.records,
                        report.head.seq,
                        hex::encode(report.head.hash)
                    );
                    ExitCode::SUCCESS
                }
                Some((seq, reason)) => {
                    println!(
                        "BROKEN at seq {seq}: {reason} ({} records verify before it)",
                        report.records
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn print_record(r: &tongban_proto::audit::v1::AuditRecord) {
    println!(
        "seq {:<6} {} {:<8} side {:<8} caller {}/{} → {} {}/{} purpose {} status {} {}µs{}",
        r.seq,
        r.request_id,
        r.node_city,
        match r.side {
            1 => "home",
            2 => "provider",
            3 => "local",
            _ => "?",
        },
        r.caller_city,
        r.caller_org,
        r.target_city,
        r.service,
        r.method,
        r.purpose,
        r.grpc_status,
        r.duration_us,
        if r.receipt_verified {
            " receipt ok"
        } else {
            ""
        }
    );
}

async fn run_audit(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::{GetRequest, QueryRequest};
    let result = match cmd {
        AuditCmd::Query {
            node,
            token,
            caller,
            service,
            from_ms,
            to_ms,
            limit,
        } => AuditClient::new(connect(&node, &token).await?)
            .query(QueryRequest {
                from_ms,
                to_ms,
                caller,
                service,
                page_token: String::new(),
                limit,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                r.records.iter().for_each(print_record);
                if !r.next_page_token.is_empty() {
                    println!("(more: next page token {})", r.next_page_token);
                }
            }),
        AuditCmd::Show {
            node,
            token,
            request_id,
        } => AuditClient::new(connect(&node, &token).await?)
            .get(GetRequest { request_id })
            .await
            .map(|r| {
                let r = r.into_inner();
                println!("this node:");
                r.local.iter().for_each(print_record);
                println!("peer:");
                r.peer.iter().for_each(print_record);
                if !r.peer_error.is_empty() {
                    println!("  ({})", r.peer_error);
                }
            }),
        AuditCmd::Verify { .. } | AuditCmd::Reindex { .. } => return Ok(ExitCode::FAILURE),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(status) => {
            eprintln!("tongban: {:?}: {}", status.code(), status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run_registry(cmd: RegistryCmd) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        RegistryCmd::Register {
            node,
            token,
            org,
            service,
            endpoints,
            catalog_codes,
            personal_data,
            description,
        } => {
            let r = RegistryClient::new(connect(&node, &token).await?)
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
            r.map(|r| {
                println!(
                    "registered; catalog version {}",
                    r.into_inner().catalog_version
                )
            })
        }
        RegistryCmd::Withdraw {
            node,
            token,
            org,
            service,
        } => {
            let r = RegistryClient::new(connect(&node, &token).await?)
                .withdraw_service(WithdrawServiceRequest {
                    organisation: org,
                    service,
                })
                .await;
            r.map(|r| {
                println!(
                    "withdrawn; catalog version {}",
                    r.into_inner().catalog_version
                )
            })
        }
        RegistryCmd::List {
            node,
            token,
            scope,
            city,
        } => {
            let scope = match scope {
                ScopeArg::All => Scope::Unspecified,
                ScopeArg::Local => Scope::Local,
                ScopeArg::Federated => Scope::Federated,
            };
            let r = RegistryClient::new(connect(&node, &token).await?)
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
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(status) => {
            eprintln!("tongban: {:?}: {}", status.code(), status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run_demo(serve: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("tongban-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    println!(
        "tongban demo: jinan and qingdao nodes on loopback (certificates and data in {})",
        dir.path().display()
    );
    let fed = demo::start(dir.path()).await?;
    for c in &fed.cities {
        println!(
            "  {:<8} node: callers {}  peers {}   provider {}",
            c.city, c.config.caller_addr, c.config.peer_addr, c.provider.addr
        );
    }
    println!();
    let rows = demo::run_calls(&fed).await?;
    println!("{}", demo::table(&rows));
    println!();
    println!("audit chains:");
    let heads = demo::audit_heads(&fed).await;
    for h in &heads {
        println!(
            "  {:<8} {} records, head seq {} hash {}…, {} verified receipts: {}",
            h.city,
            h.records,
            h.head_seq,
            h.head_hash,
            h.receipts_verified,
            match &h.verified {
                Ok(()) => "chain verifies".to_string(),
                Err(e) => format!("BROKEN at {e}"),
            }
        );
    }
    println!();
    let checked = demo::check(&rows).and_then(|()| {
        match heads.iter().find(|h| h.verified.is_err() || h.records == 0) {
            Some(h) => Err(demo::DemoError::Check(format!(
                "the audit chain of {} does not verify",
                h.city
            ))),
            None => Ok(()),
        }
    });
    match &checked {
        Ok(()) => println!("ok: each cross-city call was answered by the other city's provider"),
        Err(e) => println!("FAILED: {e}"),
    }
    if serve {
        println!();
        println!("serving until ctrl-c; point a gRPC client at a node's caller address, e.g.:");
        for c in &fed.cities {
            println!(
                "  {}: {}  (x-tongban-target-city: jinan | qingdao)",
                c.city,
                c.caller_url()
            );
        }
        println!();
        println!("callers need a JWT of their city and x-tongban-purpose: case-handling; e.g. for jinan/hrss (1 h):");
        if let Ok(t) = fed.token("jinan", "hrss") {
            println!("  authorization: Bearer {t}");
        }
        let certs = fed
            .certs
            .trust_bundle
            .parent()
            .map(|p| p.display().to_string());
        println!("more tokens (roles: consent-portal, audit-operator, registry-admin, citizen):");
        println!(
            "  tongban token issue --certs {} --city jinan --org hrss [--role R]",
            certs.unwrap_or_default()
        );
        println!("the demo's services hold personal data: calls also need x-tongban-subject and a");
        println!(
            "consent granted through tongban.consent.v1.Consent/Grant on the subject's home node."
        );
        wait_for_signal().await;
    }
    fed.shutdown().await;
    Ok(if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
