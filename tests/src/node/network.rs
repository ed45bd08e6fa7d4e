//! A node's network, reserved before anything runs: its folder, teardown script and watchdog,
//! a free /24 and the bridge holding its gateway address.

use std::fs::File;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{ensure_root, Footprint, BRIDGE_PREFIX, NODE_PREFIX, POD_NETWORK_PREFIX};
use crate::controlplane::KEEP_ENV;
use crate::process::Watchdog;

/// A lock file that serialises picking a subnet and creating the bridge across processes.
const NETWORK_LOCK: &str = "imagemap-e2e-node-network.lock";

/// A node's folder, teardown script, watchdog and network (a free /24 and the bridge `imgm-ID`
/// holding its gateway address), reserved before anything runs: [`Node::start`] does it first;
/// [`Cluster::start`] does it before the control plane, so that the API server can listen on the
/// gateway, where the node's Pods reach it ([`ControlPlaneOptions::node_gateway`]). Dropped
/// unused, it runs the teardown script; [`Node::start_on`] takes it over.
#[derive(Debug)]
pub struct NodeNetwork {
    footprint: Footprint,
    /// `None` once a [`Node`] took it over.
    watchdog: Option<Watchdog>,
    pub(super) reserved_at: Instant,
}

impl NodeNetwork {
    /// Creates the folder, the teardown script and its watchdog, picks a /24 no route of the
    /// machine overlaps and creates the bridge with the gateway address (under a lock shared by
    /// every process, so that two nodes never pick the same /24). Needs root.
    pub fn reserve() -> Result<NodeNetwork> {
        let reserved_at = Instant::now();
        ensure_root()?;
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty());
        // The network lock is held from picking a subnet until the bridge holds it.
        let lock = File::create(std::env::temp_dir().join(NETWORK_LOCK)).context("creating the network lock")?;
        lock.lock().context("locking the network lock")?;
        let (id, dir) = create_node_dir()?;
        let prepared = free_subnet().context("finding a free 10.244.N.0/24").and_then(|third_octet| {
            let footprint = Footprint::new(&id, dir.clone(), third_octet);
            // The teardown script exists before anything it removes does, and the watchdog runs
            // it if this process dies at any point from here on.
            std::fs::write(footprint.teardown_script(), footprint.teardown_text(keep))?;
            let watchdog = Watchdog::spawn_with_teardown(None, Some(&footprint.teardown_script()))?;
            Ok((footprint, watchdog))
        });
        let (footprint, watchdog) = prepared.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        if keep {
            eprintln!("imagemap-e2e: keeping {} ({KEEP_ENV} is set)", footprint.dir.display());
        }
        // On error `network` is dropped, which runs the teardown.
        let network = NodeNetwork { footprint, watchdog: Some(watchdog), reserved_at };
        create_bridge(&network.footprint)?;
        drop(lock);
        Ok(network)
    }

    /// The bridge's address: the host's side of the Pod network, where Pods reach the host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.footprint.gateway
    }

    /// What the node owns (and will own) on the machine.
    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    pub(super) fn into_parts(mut self) -> (Footprint, Watchdog) {
        let watchdog = self.watchdog.take().expect("a reserved network has its watchdog");
        (self.footprint.clone(), watchdog)
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.disarm();
            if let Err(e) = self.footprint.run_teardown() {
                eprintln!("imagemap-e2e: tearing down node network {}: {e:#}", self.footprint.bridge);
            }
        }
    }
}

/// Creates the bridge with the gateway address (the CNI bridge plugin then only adds veths:
/// `isGateway` is off, so it changes no sysctl and adds no route or iptables rule).
fn create_bridge(footprint: &Footprint) -> Result<()> {
    let bridge = &footprint.bridge;
    let address = format!("{}/24", footprint.gateway);
    run_ok("ip", &["link", "add", bridge, "type", "bridge"])?;
    run_ok("ip", &["addr", "add", &address, "dev", bridge])?;
    run_ok("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

/// A random lower-case hex id and the folder `$TMPDIR/imagemap-node-ID`, created.
fn create_node_dir() -> Result<(String, PathBuf)> {
    for _ in 0..16 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        hasher.write_u32(std::process::id());
        let id = format!("{:06x}", hasher.finish() & 0xff_ffff);
        let dir = std::env::temp_dir().join(format!("{NODE_PREFIX}{id}"));
        if Path::new("/sys/class/net").join(format!("{BRIDGE_PREFIX}{id}")).exists() {
            continue;
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free node id")
}

/// A third octet N such that 10.244.N.0/24 overlaps no route of this machine (another node's
/// bridge has one as soon as it exists).
fn free_subnet() -> Result<u8> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let taken: Vec<(u32, u32)> = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // /proc/net/route prints the in-memory (network order) value: little-endian here.
            Some((u32::from_be_bytes(destination.to_le_bytes()), u32::from_be_bytes(mask.to_le_bytes())))
        })
        .filter(|&(_, mask)| mask != 0) // the default route overlaps everything
        .collect();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % 254) as u32;
    for i in 0..254u32 {
        let octet = 1 + (start + i) % 254;
        let [a, b] = POD_NETWORK_PREFIX;
        let candidate = u32::from_be_bytes([a, b, octet as u8, 0]);
        let candidate_mask = 0xffff_ff00u32;
        let overlaps = taken.iter().any(|&(destination, mask)| {
            let common = mask & candidate_mask;
            destination & common == candidate & common
        });
        if !overlaps {
            return Ok(octet as u8);
        }
    }
    bail!("every 10.244.N.0/24 overlaps a route")
}

fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    let output =
        Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_subnet_is_found() {
        let octet = free_subnet().expect("a free /24");
        assert!((1..=254).contains(&octet));
    }
}
