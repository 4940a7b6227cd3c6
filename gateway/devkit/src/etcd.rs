//! A single-member etcd on loopback with a temporary data dir, for tests and benches: the
//! `etcd` binary of Debian's `etcd-server` (tests/setup-tools.sh installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd; killed (and its data dir removed) on drop.
pub struct LocalEtcd {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

/// Why etcd did not start.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd binary ({0}); install Debian's etcd-server (bash tests/setup-tools.sh)")]
    Missing(String),
    #[error("etcd did not start: {0}")]
    Start(String),
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary() -> PathBuf {
    std::env::var_os("TONGBAN_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

impl LocalEtcd {
    /// Starts etcd and waits until it answers (up to 20 s).
    pub async fn start() -> Result<LocalEtcd, EtcdError> {
        let dir = tempfile::tempdir().map_err(|e| EtcdError::Start(e.to_string()))?;
        let (client, peer) = (
            free_port().map_err(|e| EtcdError::Start(e.to_string()))?,
            free_port().map_err(|e| EtcdError::Start(e.to_string()))?,
        );
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(binary())
            .arg("--name=tongban-test")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=tongban-test={peer_url}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EtcdError::Missing(format!("{}: {e}", binary().display())))?;
        let etcd = LocalEtcd {
            child,
            endpoint,
            _dir: dir,
        };
        etcd.ready().await?;
        Ok(etcd)
    }

    /// Waits until `GET /health` answers healthy.
    async fn ready(&self) -> Result<(), EtcdError> {
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(body) = health(&addr).await {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(EtcdError::Start(format!(
                    "{} not healthy within 20 s",
                    self.endpoint
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id (to stop it with a signal, as a partition or crash would).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

async fn health(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three-member example cluster of `deploy/etcd/member-{1,2,3}.yaml`, started from those
/// files on loopback: their ports replaced by free ones and their data dirs by a temporary
/// one, everything else as written. Killed on drop.
pub struct ExampleCluster {
    pub members: Vec<LocalEtcd>,
}

impl ExampleCluster {
    pub async fn start(example_dir: &std::path::Path) -> Result<ExampleCluster, EtcdError> {
        let texts: Vec<String> = (1..=3)
            .map(|i| std::fs::read_to_string(example_dir.join(format!("member-{i}.yaml"))))
            .collect::<Result<_, _>>()
            .map_err(|e| EtcdError::Start(format!("{}: {e}", example_dir.display())))?;
        // Every loopback port of the example, mapped to a free one.
        let mut ports = std::collections::BTreeMap::new();
        for t in &texts {
            for part in t.split("127.0.0.1:").skip(1) {
                let port: String = part.chars().take_while(char::is_ascii_digit).collect();
                if let std::collections::btree_map::Entry::Vacant(e) = ports.entry(port) {
                    e.insert(free_port().map_err(|e| EtcdError::Start(e.to_string()))?);
                }
            }
        }
        let mut members = Vec::new();
        let mut pending = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let dir = tempfile::tempdir().map_err(|e| EtcdError::Start(e.to_string()))?;
            let mut text = t.clone();
            for (from, to) in &ports {
                text = text.replace(&format!("127.0.0.1:{from}\n"), &format!("127.0.0.1:{to}\n"));
                text = text.replace(&format!("127.0.0.1:{from},"), &format!("127.0.0.1:{to},"));
            }
            let data = format!("data/etcd/member-{}", i + 1);
            text = text.replace(&data, &dir.path().join("data").display().to_string());
            let file = dir.path().join("member.yaml");
            std::fs::write(&file, &text).map_err(|e| EtcdError::Start(e.to_string()))?;
            let endpoint = text
                .lines()
                .find_map(|l| l.strip_prefix("advertise-client-urls: "))
                .ok_or_else(|| EtcdError::Start("no advertise-client-urls".into()))?
                .trim()
                .to_string();
            let child = Command::new(binary())
                .arg(format!("--config-file={}", file.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| EtcdError::Missing(format!("{}: {e}", binary().display())))?;
            pending.push(LocalEtcd {
                child,
                endpoint,
                _dir: dir,
            });
        }
        // A member is healthy once the cluster has a leader: all three started first.
        for m in pending {
            m.ready().await?;
            members.push(m);
        }
        Ok(ExampleCluster { members })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }
}
