//! A TCP load balancer of a few lines, for tests of replicas: each new connection goes to
//! the next ready backend that accepts it (round robin). Readiness is what an orchestrator
//! sets (Kubernetes takes a terminating pod out of its endpoints, and puts a new one in once
//! its readiness probe passes); connections already open stay where they are.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Vec<(SocketAddr, AtomicBool, AtomicUsize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port; every backend starts ready.
    pub async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends: Arc<Vec<(SocketAddr, AtomicBool, AtomicUsize)>> = Arc::new(
            backends
                .into_iter()
                .map(|b| (b, AtomicBool::new(true), AtomicUsize::new(0)))
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let all = backends.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let all = all.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let n = all.len();
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for k in 0..n {
                        let (backend, ready, count) = &all[(first + k) % n];
                        if !ready.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Ok(mut server) = TcpStream::connect(backend).await {
                            count.fetch_add(1, Ordering::SeqCst);
                            let _ = server.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Balancer {
            addr,
            backends,
            task,
        })
    }

    /// Whether new connections may go to backend `i`.
    pub fn set_ready(&self, i: usize, ready: bool) {
        if let Some((_, r, _)) = self.backends.get(i) {
            r.store(ready, Ordering::SeqCst);
        }
    }

    /// Connections sent to backend `i` so far.
    pub fn connections(&self, i: usize) -> usize {
        self.backends
            .get(i)
            .map_or(0, |(_, _, c)| c.load(Ordering::SeqCst))
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
