//! `tongban provider`: the reference providers a department runs behind its node.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ProviderCmd {
    /// The reference cross-city services provider (h2c).
    Crosscity {
        #[arg(long)]
        city: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// Runs a provider until a signal.
pub fn run(cmd: ProviderCmd) -> ExitCode {
    crate::block_on(async move {
        let ProviderCmd::Crosscity { city, listen } = cmd;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%city, %listen, "cross-city provider started");
        tongban_crosscity::Provider::new(city)
            .serve(listener, crate::node::wait_for_signal())
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}
