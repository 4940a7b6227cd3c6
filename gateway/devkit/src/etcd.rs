//! A single-member etcd on loopback with a temporary data dir, for tests and benches: the
//! `etcd` binary of Debian's `etcd-server` (tests/setup-tools.sh installs it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd; killed (and its data dir removed) on drop.
pub struct LocalEtcd {
    child: Child,
    /// `http://127.0.0.1:<port>` (`https://` with TLS)
    pub endpoint: String,
    /// Where `/health` answers over plain HTTP (host:port).
    health_addr: String,
    /// With TLS: the CA that issued etcd's certificate and a client certificate it accepts.
    pub tls: Option<EtcdTlsFiles>,
    /// The host of its own etcd runs on, when it has one (removed after etcd stops).
    pub netns: Option<crate::netns::NetnsHost>,
    _dir: tempfile::TempDir,
}

/// The files a client of a TLS etcd needs (PEM): the CA, and a client certificate and key.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written into `dir`:
/// (server cert, server key, what a client needs).
fn write_tls(
    dir: &std::path::Path,
    ip: &str,
) -> Result<(PathBuf, PathBuf, EtcdTlsFiles), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "tongban test etcd ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let server = issue(
        vec![ip.to_string(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "etcd",
    )?;
    let client = issue(vec![], ExtendedKeyUsagePurpose::ClientAuth, "tongban-node")?;
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).map(|()| path)
    };
    let io = |e: std::io::Error| rcgen::Error::PemError(e.to_string());
    Ok((
        write("server.pem", &server.0).map_err(io)?,
        write("server-key.pem", &server.1).map_err(io)?,
        EtcdTlsFiles {
            ca: write("ca.pem", &ca_cert.pem()).map_err(io)?,
            client_cert: write("client.pem", &client.0).map_err(io)?,
            client_key: write("client-key.pem", &client.1).map_err(io)?,
        },
    ))
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
        Self::start_with(false, None).await
    }

    /// Starts etcd serving clients over TLS only, and requiring a client certificate of its
    /// CA (`tls` names the files a client needs).
    pub async fn start_tls() -> Result<LocalEtcd, EtcdError> {
        Self::start_with(true, None).await
    }

    /// Starts etcd over TLS on a host of its own (a network namespace, see
    /// [`crate::netns`]), so that the network to it can be cut (`netns`).
    pub async fn start_tls_elsewhere() -> Result<LocalEtcd, EtcdError> {
        let host = crate::netns::NetnsHost::create()
            .map_err(|e| EtcdError::Start(format!("network namespace: {e}")))?;
        Self::start_with(true, Some(host)).await
    }

    async fn start_with(
        tls: bool,
        netns: Option<crate::netns::NetnsHost>,
    ) -> Result<LocalEtcd, EtcdError> {
        let dir = tempfile::tempdir().map_err(|e| EtcdError::Start(e.to_string()))?;
        let port = || free_port().map_err(|e| EtcdError::Start(e.to_string()));
        // On a host of its own, its own ports; on loopback, free ones.
        let (ip, client, peer, metrics) = match &netns {
            Some(h) => (h.ns_ip.clone(), 2379, 2380, 2381),
            None => ("127.0.0.1".to_string(), port()?, port()?, port()?),
        };
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let health_addr = format!("{ip}:{metrics}");
        let mut cmd = match &netns {
            Some(h) => h.command(&binary()),
            None => Command::new(binary()),
        };
        let files = if tls {
            let (cert, key, files) =
                write_tls(dir.path(), &ip).map_err(|e| EtcdError::Start(e.to_string()))?;
            cmd.arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--trusted-ca-file={}", files.ca.display()))
                .arg("--client-cert-auth");
            Some(files)
        } else {
            None
        };
        let child = cmd
            .arg("--name=tongban-test")
            .arg(format!("--listen-metrics-urls=http://{health_addr}"))
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
            health_addr,
            tls: files,
            netns,
            _dir: dir,
        };
        etcd.ready().await?;
        Ok(etcd)
    }

    /// Waits until `GET /health` answers healthy.
    async fn ready(&self) -> Result<(), EtcdError> {
        let addr = self.health_addr.clone();
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

    /// Stops etcd with SIGSTOP (its sockets stay open: a partition, as a client sees it)
    /// and returns once every thread of it has stopped; `kill` only queues the signal, and a
    /// request could still be answered meanwhile.
    pub async fn freeze(&self) -> std::io::Result<()> {
        self.signal("-STOP")?;
        let tasks = format!("/proc/{}/task", self.pid());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut all = true;
            for task in std::fs::read_dir(&tasks)? {
                let stat = std::fs::read_to_string(task?.path().join("stat"))?;
                // `tid (comm) state ...`: the state follows the last `)`.
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.trim().chars().next());
                all &= state == Some('T');
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other("etcd did not stop within 5 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets a frozen etcd run again (SIGCONT).
    pub fn thaw(&self) -> std::io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {which} failed")))
        }
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
                health_addr: endpoint.trim_start_matches("http://").to_string(),
                endpoint,
                tls: None,
                netns: None,
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
