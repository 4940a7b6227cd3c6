//! `tongban node`: run a node from its config until a signal (or until a peer contradicts
//! its audit log).

use std::path::PathBuf;
use std::process::ExitCode;

use tongban_gateway::NodeConfig;

use crate::{EX_CONFIG, EX_DATAERR, EX_UNAVAILABLE};

/// Parses and loads everything the config names before a port is bound; a bad config exits
/// with 64 and a message naming the key.
pub fn run(path: PathBuf, logging: crate::Logging) -> ExitCode {
    let config = match NodeConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let rt = match runtime(config.runtime) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tongban: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Logs and span export (`[telemetry]`) start before anything else is loaded.
        let telemetry = match tongban_telemetry::init(
            &logging.filter,
            logging.format.into(),
            config.telemetry.as_ref(),
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("tongban: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        let code = run_node(config).await;
        telemetry.shutdown().await;
        code
    })
}

/// The node's runtime, shaped by `[runtime]` (`auto`: by the cores this process may use).
fn runtime(
    shape: tongban_gateway::config::RuntimeShape,
) -> anyhow::Result<tokio::runtime::Runtime> {
    use tongban_gateway::config::RuntimeShape;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut b = if shape.resolve(cores) == RuntimeShape::CurrentThread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let RuntimeShape::MultiThread {
        worker_threads: Some(n),
    } = shape
    {
        b.worker_threads(n);
    }
    anyhow::Context::context(b.enable_all().build(), "cannot start the async runtime")
}

async fn run_node(config: NodeConfig) -> ExitCode {
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
    let mut anchor = node.auditor().watch_anchor();
    let gave_up =
        |a: &tongban_gateway::audit::Anchor| matches!(a, tongban_gateway::audit::Anchor::GaveUp(_));
    let stop = tokio::select! {
        () = wait_for_signal() => None,
        Ok(c) = contradiction.wait_for(Option::is_some) => c.clone().map(|why| (EX_DATAERR, format!("the audit log is contradicted by a peer: {why}"))),
        Ok(a) = anchor.wait_for(gave_up) => Some((EX_UNAVAILABLE, a.describe())),
    };
    node.shutdown().await;
    match stop {
        None => ExitCode::SUCCESS,
        Some((code, why)) => {
            eprintln!("tongban: {why}");
            ExitCode::from(code)
        }
    }
}

/// SIGTERM or ctrl-c.
pub async fn wait_for_signal() {
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
