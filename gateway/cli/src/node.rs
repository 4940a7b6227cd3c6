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
    let (rt, cores) = match runtime(config.runtime, config.runtime_lifo_slot) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tongban: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let handles = cores.handles.clone();
    let code = rt.block_on(async move {
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
        let mut runtimes = vec![tokio::runtime::Handle::current()];
        runtimes.extend(handles);
        let code = run_node(config, runtimes).await;
        telemetry.shutdown().await;
        code
    });
    cores.stop();
    code
}

/// The current-thread runtimes of `flavor = "per_core"` beside the main one, each on its
/// own thread until stopped.
#[derive(Default)]
struct CoreRuntimes {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl CoreRuntimes {
    fn start(n: usize) -> anyhow::Result<CoreRuntimes> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut out = CoreRuntimes {
            stop: Some(stop),
            ..CoreRuntimes::default()
        };
        for i in 1..=n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            out.handles.push(rt.handle().clone());
            let mut stopped = stopped.clone();
            out.threads.push(
                std::thread::Builder::new()
                    .name(format!("tongban-core-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                    })?,
            );
        }
        Ok(out)
    }

    fn stop(self) {
        if let Some(stop) = self.stop {
            let _ = stop.send(true);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The node's runtime, shaped by `[runtime]` (`auto`: by the cores this process may use),
/// and for `per_core` the current-thread runtimes of the other cores.
fn runtime(
    shape: tongban_gateway::config::RuntimeShape,
    lifo_slot: bool,
) -> anyhow::Result<(tokio::runtime::Runtime, CoreRuntimes)> {
    use tongban_gateway::config::RuntimeShape;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let resolved = shape.resolve(cores);
    let mut b = if matches!(
        resolved,
        RuntimeShape::CurrentThread | RuntimeShape::PerCore
    ) {
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
    #[cfg(tokio_unstable)]
    if !lifo_slot && matches!(resolved, RuntimeShape::MultiThread { .. }) {
        b.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = lifo_slot; // refused when the config is read
    let rt = anyhow::Context::context(b.enable_all().build(), "cannot start the async runtime")?;
    let others = if resolved == RuntimeShape::PerCore {
        anyhow::Context::context(
            CoreRuntimes::start(cores - 1),
            "cannot start the runtimes of the other cores",
        )?
    } else {
        CoreRuntimes::default()
    };
    Ok((rt, others))
}

async fn run_node(config: NodeConfig, runtimes: Vec<tokio::runtime::Handle>) -> ExitCode {
    // Certificates, keys, JWKS, policy and store, all before any port is bound.
    let prepared = match tongban_gateway::PreparedNode::prepare(config.clone()).await {
        Ok(p) if runtimes.len() > 1 => p.with_connection_runtimes(runtimes),
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
