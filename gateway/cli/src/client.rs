//! The CLI's client of a node's control-plane APIs: a channel that sends `--token`.

use std::process::ExitCode;

use anyhow::Context as _;

/// A channel to a node's caller listener that sends `--token` with every call.
pub type Authed = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    tongban_devkit::local::Bearer,
>;

pub async fn connect(node: &str, token: &str) -> anyhow::Result<Authed> {
    let channel = tonic::transport::Channel::from_shared(node.to_string())
        .with_context(|| format!("`{node}` is not a node url (e.g. http://127.0.0.1:7000)"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the node at {node}"))?;
    let bearer = tongban_devkit::local::Bearer::new(token.trim())
        .map_err(|_| anyhow::anyhow!("--token is not a jwt"))?;
    Ok(Authed::new(channel, bearer))
}

/// Which node a control-plane command talks to, and with which token.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's caller address, e.g. http://127.0.0.1:7000
    #[arg(long)]
    pub node: String,
    /// A caller JWT of the node's city (`tongban token issue`); env TONGBAN_TOKEN.
    #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl NodeArgs {
    pub async fn connect(&self) -> anyhow::Result<Authed> {
        connect(&self.node, &self.token).await
    }
}

/// 0 when the call succeeded; 1 and the status on stderr otherwise.
pub fn exit_code(result: Result<(), tonic::Status>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => {
            eprintln!("tongban: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}
