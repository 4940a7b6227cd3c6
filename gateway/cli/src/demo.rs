//! `tongban demo [--serve]`: a Jinan and a Qingdao node with their providers on loopback,
//! cross-city calls both ways, and both audit chains verified.

use std::process::ExitCode;

use anyhow::Context as _;
use tongban_devkit::demo;

use crate::node::wait_for_signal;

/// Runs the demo.
pub fn run(serve: bool) -> ExitCode {
    crate::block_on(run_demo(serve))
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
    let demo = demo::start(dir.path()).await?;
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
            "ok: all {} items completed both ways with verified certificates; the recognition story went as told; each cross-city call was answered by the other city's provider",
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
        wait_for_signal().await;
    }
    demo.shutdown().await;
    Ok(if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
