//! A test host in a network namespace of its own (iproute2: `ip netns`, a veth pair), so
//! that what crosses the network can be cut for real: [`NetnsHost::partition`] black-holes
//! the route to it (packets lost silently, established connections included, as on a broken
//! network: the other side learns of it only by its timeouts), [`NetnsHost::heal`] restores
//! it. Needs root (CAP_NET_ADMIN), which the sessions and CI have. Removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace with a veth link to this one: `host_ip` here, `ns_ip` there.
pub struct NetnsHost {
    name: String,
    host_if: String,
    /// This side's address on the link.
    pub host_ip: String,
    /// The namespace's address: what a program started with [`Self::command`] listens on.
    pub ns_ip: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl NetnsHost {
    /// Makes the namespace and its link; names and a /30 subnet unique to this process.
    pub fn create() -> std::io::Result<NetnsHost> {
        let n = std::process::id()
            .wrapping_mul(8)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let id = n % 1_000_000;
        let name = format!("tb{id}");
        let host_if = format!("tbh{id}");
        let ns_if = format!("tbn{id}");
        // 10.(64..127).x.(4k): a /30 per id.
        let (a, b, c) = (64 + (n >> 14) % 64, (n >> 6) % 256, (n % 64) * 4);
        let host_ip = format!("10.{a}.{b}.{}", c + 1);
        let ns_ip = format!("10.{a}.{b}.{}", c + 2);
        let host = NetnsHost {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Cuts the network between here and the namespace: the route to it black-holed.
    pub fn partition(&self) -> std::io::Result<()> {
        ip(&["route", "add", "blackhole", &format!("{}/32", self.ns_ip)])
    }

    /// Restores the network cut by [`Self::partition`].
    pub fn heal(&self) -> std::io::Result<()> {
        ip(&["route", "del", "blackhole", &format!("{}/32", self.ns_ip)])
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        let _ = self.heal();
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
