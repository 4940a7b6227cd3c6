//! Nodes run as child processes of a test (`tongban node --config`), as operators run them:
//! their config written to a file, their addresses read from their "node started" line.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tongban_devkit::certs;
use tongban_devkit::local::open_policy;

/// Writes the config of `city`'s node under `dir`: plaintext caller listener, loopback ports
/// chosen at start, the open policy of every city in `g`, `peers` as (city, peer address),
/// and `extra` TOML appended (a `[telemetry]` section, say); lines of `extra` that begin
/// with `tls.` (`tls.caller_assertion = "mac"`) go into the `[tls]` table instead.
pub fn write_node_config(
    dir: &Path,
    g: &certs::Generated,
    city: &str,
    peers: &[(&str, String)],
    extra: &str,
) -> PathBuf {
    let f = g.city(city).unwrap();
    let cities: Vec<String> = g.cities.iter().map(|c| c.city.clone()).collect();
    let policy = dir.join(format!("{city}-policy.toml"));
    std::fs::write(&policy, open_policy(&cities)).unwrap();
    let (tls_extra, extra): (Vec<&str>, Vec<&str>) = extra
        .split_inclusive('\n')
        .partition(|l| l.starts_with("tls."));
    let tls_extra: String = tls_extra
        .iter()
        .map(|l| l.trim_start_matches("tls.").trim_end().to_string() + "\n")
        .collect();
    let mut text = format!(
        r#"city = "{city}"
[listen]
caller = "127.0.0.1:0"
peer = "{peer_listen}"
admin = "127.0.0.1:0"
web = "127.0.0.1:0"
caller_plaintext = true
[storage]
data_dir = "{data}"
[tls]
cert = "{cert}"
key = "{key}"
trust_bundle = "{bundle}"
{tls_extra}[auth]
jwks_file = "{jwks}"
issuer = "https://idp.{city}.tongban"
audience = "tongban:{city}"
[policy]
file = "{policy}"
[limits]
caller_rate_per_s = 100000
caller_burst = 100000
catalog_retry_ms = 200
"#,
        peer_listen = peers
            .iter()
            .find(|(c, _)| *c == city)
            .map_or("127.0.0.1:0".to_string(), |(_, a)| a.clone()),
        data = dir.join(format!("{city}-data")).display(),
        cert = f.node_cert.display(),
        key = f.node_key.display(),
        bundle = g.trust_bundle.display(),
        jwks = f.jwks.display(),
        policy = policy.display(),
    );
    for (c, addr) in peers.iter().filter(|(c, _)| *c != city) {
        text.push_str(&format!(
            "[[peers]]\ncity = \"{c}\"\naddress = \"{addr}\"\n"
        ));
    }
    text.push_str(&extra.concat());
    let path = dir.join(format!("{city}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Loopback addresses for listeners that other configs must name before the node starts
/// (a peer's address): bound, read and released.
pub fn free_addrs(n: usize) -> Vec<String> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// A `tongban node` child process; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    /// `host:port` of its caller listener.
    pub caller: String,
    /// `host:port` of its admin listener.
    pub admin: String,
    /// `host:port` of its web listener (gRPC-Web).
    pub web: String,
    /// Every line it logged so far (text or JSON).
    pub lines: Lines,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Starts `tongban <extra> node --config <config>` and waits for its "node started"
    /// line.
    pub fn spawn(config: &Path, extra: &[&str]) -> NodeProcess {
        Self::try_spawn(config, extra).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Self::spawn`], or why the node did not start (with everything it logged).
    pub fn try_spawn(config: &Path, extra: &[&str]) -> Result<NodeProcess, String> {
        let mut cmd = Command::new(crate::tongban_bin());
        cmd.args(extra).args(["node", "--config"]).arg(config);
        let (child, lines, start) = spawn_logged(cmd, "node started", "node")?;
        Ok(NodeProcess {
            child,
            caller: field(&start, "caller").expect("caller address in the start line"),
            admin: field(&start, "admin").expect("admin address in the start line"),
            web: field(&start, "web").expect("web address in the start line"),
            lines,
        })
    }

    /// Waits (bounded) until a logged line satisfies `pred`.
    pub async fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> bool {
        for _ in 0..250 {
            if self.lines.lock().unwrap().iter().any(|l| pred(l)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Everything a child process logged so far.
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Starts `cmd` with its stderr read line by line (kept, and drained so that the child
/// never blocks), and waits up to 30 s for a line containing `marker`: the child, its lines
/// and that line. `what` names it in the error.
pub fn spawn_logged(
    mut cmd: Command,
    marker: &'static str,
    what: &str,
) -> Result<(Child, Lines, String), String> {
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(marker) {
                let _ = tx.send(line.clone());
            }
            kept.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(start) => Ok((child, lines, start)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the {what} did not print its addresses ({e}): {}",
                lines.lock().unwrap().join("\n")
            ))
        }
    }
}

/// A child process (a provider, a registry); killed on drop.
pub struct ChildProcess {
    pub child: Child,
    /// `host:port` it listens on (`listen` of its start line).
    pub listen: String,
    pub lines: Lines,
}

impl ChildProcess {
    /// Starts `tongban <args>` and waits for its line containing `marker`.
    pub fn spawn(args: &[&std::ffi::OsStr], marker: &'static str) -> ChildProcess {
        Self::spawn_env(args, &[], marker)
    }

    /// [`Self::spawn`] with `env` added to its environment.
    pub fn spawn_env(
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        marker: &'static str,
    ) -> ChildProcess {
        let mut cmd = Command::new(crate::tongban_bin());
        cmd.args(args);
        cmd.envs(env.iter().copied());
        let (child, lines, start) =
            spawn_logged(cmd, marker, marker).unwrap_or_else(|e| panic!("{e}"));
        ChildProcess {
            child,
            listen: field(&start, "listen").expect("listen address in the start line"),
            lines,
        }
    }

    /// Its peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peak resident memory (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// A field of the start line, in JSON (`fields.<name>`) or text (`name=value`) form.
fn field(line: &str, name: &str) -> Option<String> {
    let from_json = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["fields"][name].as_str().map(str::to_string));
    let prefix = format!("{name}=");
    from_json.or_else(|| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .map(str::to_string)
    })
}

/// Registers the probe provider at `url` as `<city>/hrss` with the node at `addr` (a caller
/// listener's `host:port`), with `token` of that city.
pub async fn register_probe(addr: &str, token: &str, url: &str, personal_data: bool) {
    use tongban_proto::registry::v1::registry_client::RegistryClient;
    use tongban_proto::registry::v1::{RegisterServiceRequest, ServiceRegistration};
    let mut reg = tonic::Request::new(RegisterServiceRequest {
        registration: Some(ServiceRegistration {
            organisation: "hrss".into(),
            service: crate::CROSSCITY_SERVICE.into(),
            endpoints: vec![url.to_string()],
            personal_data,
            ..Default::default()
        }),
    });
    crate::authorize(&mut reg, token);
    RegistryClient::new(channel(addr).await)
        .register_service(reg)
        .await
        .unwrap();
}

/// A channel to `host:port` over h2c.
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A Jinan and a Qingdao node as processes (each config with `extra` appended), with the
/// probe provider registered at Qingdao as `qingdao/hrss`.
pub struct TwoCities {
    pub dir: tempfile::TempDir,
    pub certs: certs::Generated,
    pub jinan: NodeProcess,
    pub qingdao: NodeProcess,
    pub provider: tongban_devkit::local::RunningProvider,
}

impl TwoCities {
    pub async fn start(extra: &str) -> TwoCities {
        let dir = tempfile::tempdir().unwrap();
        let cities = ["jinan".to_string(), "qingdao".to_string()];
        let g = certs::init(&dir.path().join("certs"), &cities, false).unwrap();
        // Each node must name the other's peer address before either starts: ports are
        // picked free and released, so another test may take one meanwhile; then the node
        // cannot bind (and says so), and both start again on new ports.
        let mut last = String::new();
        let mut started = None;
        for _ in 0..5 {
            let addrs = free_addrs(2);
            let peers = [("jinan", addrs[0].clone()), ("qingdao", addrs[1].clone())];
            let spawn = |city: &str| {
                NodeProcess::try_spawn(&write_node_config(dir.path(), &g, city, &peers, extra), &[])
            };
            match (spawn("jinan"), spawn("qingdao")) {
                (Ok(j), Ok(q)) => {
                    started = Some((j, q));
                    break;
                }
                (Err(e), _) | (_, Err(e)) => last = e,
            }
        }
        let (jinan, qingdao) = started.unwrap_or_else(|| panic!("nodes did not start: {last}"));
        let provider = tongban_devkit::local::RunningProvider::start("qingdao")
            .await
            .unwrap();
        let token = tongban_devkit::local::dev_token(&g, "qingdao", "hrss").unwrap();
        register_probe(&qingdao.caller, &token, &provider.url(), false).await;
        TwoCities {
            dir,
            certs: g,
            jinan,
            qingdao,
            provider,
        }
    }

    /// Waits (bounded) until Jinan's node routes to Qingdao's service: a probe call through
    /// Jinan succeeds.
    pub async fn wait_until_federated(&self) {
        use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
        let token = tongban_devkit::local::dev_token(&self.certs, "jinan", "hrss").unwrap();
        let mut client = CrossCityServiceClient::new(channel(&self.jinan.caller).await);
        let mut last = None;
        for _ in 0..150 {
            let req = crate::case_handling_submit("qingdao", &token);
            match client.submit(req).await {
                Ok(_) => return,
                Err(s) => last = Some(s),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("jinan never routed to qingdao: {last:?}");
    }

    pub async fn stop(self) {
        drop(self.jinan);
        drop(self.qingdao);
        self.provider.stop().await;
    }
}
