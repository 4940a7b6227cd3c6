//! `tongban demo [--serve]`: a Jinan and a Qingdao node with their providers on loopback,
//! cross-city calls both ways, and both audit chains verified.

use std::process::ExitCode;

use anyhow::Context as _;
use tongban_devkit::demo;

use std::path::PathBuf;

use tongban_devkit::oidc::{dev_citizens, OidcSettings, RunningOidc, PORTAL_CLIENT_ID};
use tongban_devkit::portal::{PortalSite, RunningPortal};

use crate::node::wait_for_signal;

/// With `--serve`: where the citizens' portal is served from and on which address.
#[derive(clap::Args, Clone)]
pub struct PortalArgs {
    /// The built portal (`npm --prefix services/portal run build`).
    #[arg(long, default_value = "services/portal/dist")]
    pub portal_dir: PathBuf,
    /// Address of the portal's site (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub portal_addr: std::net::SocketAddr,
    /// How long the departments' back offices take per step of an application (ms); a
    /// slower office leaves time to follow and withdraw a bundle in the portal.
    #[arg(long, default_value_t = 20)]
    pub step_ms: u64,
}

/// Runs the demo.
pub fn run(serve: bool, portal: PortalArgs) -> ExitCode {
    crate::block_on(run_demo(serve, portal))
}

async fn run_demo(serve: bool, portal: PortalArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("tongban-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    println!(
        "tongban demo: jinan and qingdao nodes on loopback (certificates and data in {})",
        dir.path().display()
    );
    // Serving: the portal's address is known first, so the nodes let its pages call them.
    let portal_listener = if serve {
        Some(
            tokio::net::TcpListener::bind(portal.portal_addr)
                .await
                .with_context(|| format!("cannot listen on {}", portal.portal_addr))?,
        )
    } else {
        None
    };
    let origins: Vec<String> = match &portal_listener {
        Some(l) => vec![RunningPortal::url_of(l)?.trim_end_matches('/').to_string()],
        None => Vec::new(),
    };
    let step = std::time::Duration::from_millis(portal.step_ms);
    let demo = demo::start_with_step(dir.path(), &origins, step).await?;
    let fed = &demo.fed;
    for c in &fed.cities {
        println!(
            "  {:<8} node: callers {}  peers {}   provider {}",
            c.city, c.config.caller_addr, c.config.peer_addr, c.provider.addr
        );
    }
    println!(
        "  departments: {} cross-city providers (tongban.crosscity.v2), one per organisation and city",
        demo.departments.running.len()
    );
    println!();
    println!("the 27 cross-city services (跨市通办), each submitted both ways and followed to completion:");
    let items = demo::run_items(fed).await?;
    println!("{}", demo::items_table(&items));
    println!();
    println!("mutual recognition (检查检验结果互认): a Jinan patient tested in Jinan, treated in Qingdao;");
    println!("the Qingdao hospital finds her results through the federation, with her consent:");
    let story = demo::run_medical(fed).await?;
    for l in &story.found {
        println!("  {l}");
    }
    println!("the Qingdao physician decides on the eligible results:");
    for l in &story.decisions {
        println!("  {l}");
    }
    println!(
        "statistics (Qingdao): {} recognised, {} re-tested",
        story.recognised, story.retested
    );
    println!();
    println!("\"one thing\" bundles (高效办成一件事): a citizen of each city moves to the other, one form,");
    println!("one consent naming the four items, one status (household registration first, then pension,");
    println!("provident fund and medical insurance, each at the other city's department):");
    let moves = [
        ("jinan", "qingdao", demo::demo_subject("37010219850312002")),
        ("qingdao", "jinan", demo::demo_subject("37020219920704003")),
    ];
    let moving = tongban_devkit::bundles::run_moving(fed, &moves).await?;
    for story in &moving {
        for l in story.lines() {
            println!("  {l}");
        }
    }
    println!();
    println!("federation checks (consent, revocation, routing) on the probe service:");
    let rows = demo::run_calls(fed).await?;
    println!("{}", demo::table(&rows));
    println!();
    println!("audit chains:");
    let heads = demo::audit_heads(fed).await;
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
    let checked = demo::check_items(&items)
        .and_then(|()| demo::check_medical(&story))
        .and_then(|()| match moving.iter().find(|m| !m.ok()) {
            Some(m) => Err(demo::DemoError::Check(format!(
                "the moving bundle {} → {} did not complete with verified certificates",
                m.home, m.target
            ))),
            None if moving.len() == 2 => Ok(()),
            None => Err(demo::DemoError::Check(
                "the moving bundle did not run both ways".into(),
            )),
        })
        .and_then(|()| demo::check(&rows))
        .and_then(
            |()| match heads.iter().find(|h| h.verified.is_err() || h.records == 0) {
                Some(h) => Err(demo::DemoError::Check(format!(
                    "the audit chain of {} does not verify",
                    h.city
                ))),
                None => Ok(()),
            },
        );
    match &checked {
        Ok(()) => println!(
            "ok: all {} items completed both ways with verified certificates; the moving bundle completed both ways; the recognition story went as told; each cross-city call was answered by the other city's provider",
            items.len()
        ),
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
        println!("operators: metrics, status and health on each node's admin listener:");
        for c in &fed.cities {
            if let Some(n) = c.node() {
                println!(
                    "  {}: http://{}/metrics  (tongban status: grpc on the same address)",
                    c.city, n.admin_addr
                );
            }
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
        let site = match portal_listener {
            Some(l) => serve_portal(fed, l, &portal.portal_dir).await,
            None => None,
        };
        wait_for_signal().await;
        if let Some((oidc, site)) = site {
            oidc.stop().await;
            if let Some(site) = site {
                site.stop().await;
            }
        }
    }
    demo.shutdown().await;
    Ok(if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The citizens' portal of Jinan and its dev sign-in; prints where they are.
async fn serve_portal(
    fed: &tongban_devkit::local::LocalFederation,
    listener: tokio::net::TcpListener,
    dir: &std::path::Path,
) -> Option<(RunningOidc, Option<RunningPortal>)> {
    let url = RunningPortal::url_of(&listener).ok()?;
    let jinan = fed.city("jinan").ok()?;
    let web = jinan.node()?.web_addr?;
    let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let users = dev_citizens("jinan");
    let oidc = RunningOidc::start(
        idp_listener,
        fed.idp("jinan").ok()?,
        OidcSettings {
            client_id: PORTAL_CLIENT_ID.into(),
            redirect_uris: vec![url.clone()],
            org: "portal".into(),
            users: users.clone(),
            token_ttl: std::time::Duration::from_secs(15 * 60),
        },
    )
    .ok()?;
    let site = PortalSite {
        city: "jinan".into(),
        web_url: format!("http://{web}"),
        idp_url: oidc.url.clone(),
        client_id: PORTAL_CLIENT_ID.into(),
        cities: fed.cities.iter().map(|c| c.city.clone()).collect(),
    };
    println!();
    let running = match RunningPortal::start(listener, dir, &site) {
        Ok(p) => {
            println!("citizens' portal of jinan (济青通办 · 市民服务): {}", p.url);
            Some(p)
        }
        Err(e) => {
            println!("citizens' portal not served: {e}");
            None
        }
    };
    println!(
        "  sign-in: the dev identity provider of jinan at {} (OpenID Connect, code + PKCE), citizens:",
        oidc.url
    );
    for u in &users {
        println!(
            "    {}  {}",
            u.name,
            tongban_gateway::subject::mask(&u.resident_id)
        );
    }
    println!("  the page calls jinan's node at its web listener http://{web} (gRPC-Web)");
    Some((oidc, running))
}
