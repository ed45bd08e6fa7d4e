//! The configuration files a node's components read: containerd's (and the registry's
//! `hosts.toml`), the CNI network's and the kubelet's, all in the node's folder.

use anyhow::Result;
use serde_json::json;

use super::Node;
use crate::controlplane::ControlPlane;
use crate::registry::Registry;

impl Node {
    pub(super) fn write_containerd_config(&self, registry: &Registry) -> Result<()> {
        let dir = &self.footprint.dir;
        let d = dir.display();
        let bin = self.bin_dir.display();
        // Shim sockets: containerd refuses a socket_dir longer than 42 bytes; the default then is
        // /run/containerd/s (sockets named by a hash of this node's address).
        let socket_dir = dir.join("s");
        let socket_dir_line = if socket_dir.as_os_str().len() <= 42 {
            format!("[plugins.'io.containerd.shim.v1.manager']\n  socket_dir = '{}'\n", socket_dir.display())
        } else {
            String::new()
        };
        let config = format!(
            r#"# containerd for imagemap-e2e node {name}: everything under {d}.
version = 3
root = '{d}/containerd/root'
state = '{d}/containerd/state'
temp = '{d}/containerd/tmp'
# No NRI socket in /var/run/nri; no snapshotters or tracing that are not used.
disabled_plugins = [
  'io.containerd.nri.v1.nri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
]

[grpc]
  address = '{d}/containerd.sock'

[ttrpc]
  address = '{d}/containerd.sock.ttrpc'

{socket_dir_line}
[plugins.'io.containerd.internal.v1.opt']
  path = '{d}/containerd/opt'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # Nothing is pulled from the internet: the sandbox image is in the local registry.
    sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    # hosts.toml per registry: the local one over plain HTTP.
    config_path = '{d}/certs.d'

[plugins.'io.containerd.cri.v1.runtime']
  # This machine refuses to lower oom_score_adj: without this every sandbox fails.
  restrict_oom_score_adj = true
  # Network namespaces under the state folder, not /var/run/netns.
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{bin}/runc'
        Root = '{d}/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{bin}/cni']
    conf_dir = '{d}/cni/net.d'
    # containerd brings `lo` up itself: the loopback plugin would leave a result per sandbox in
    # /var/lib/cni/results, named by sandbox, which a killed node never deletes.
    use_internal_loopback = true
"#,
            name = self.footprint.node_name,
            pause = self.pause_image,
        );
        std::fs::write(dir.join("containerd.toml"), config)?;
        let host = registry.address();
        let hosts_dir = dir.join("certs.d").join(&host);
        std::fs::create_dir_all(&hosts_dir)?;
        std::fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = 'http://{host}'\n\n[host.'http://{host}']\n  capabilities = ['pull', 'resolve']\n  skip_verify = true\n"
            ),
        )?;
        Ok(())
    }

    pub(super) fn write_cni_config(&self) -> Result<()> {
        let dir = self.footprint.dir.join("cni/net.d");
        std::fs::create_dir_all(&dir)?;
        let config = json!({
            "cniVersion": "1.0.0",
            "name": self.footprint.cni_network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.footprint.bridge,
                // The bridge and its address exist already (created at start).
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.footprint.subnet, "gateway": self.footprint.gateway.to_string() }]],
                    "dataDir": self.footprint.dir.join("cni/ipam"),
                    // No default route: Pods reach the host and each other, nothing else.
                },
            }],
        });
        std::fs::write(dir.join("10-imagemap.conflist"), serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    pub(super) fn write_kubelet_config(&self, plane: &ControlPlane) -> Result<()> {
        let dir = &self.footprint.dir;
        std::fs::write(dir.join("resolv.conf"), "# no DNS for Pods of an imagemap-e2e node\n")?;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // cgroups v1 (hybrid: a v2 hierarchy beside) on the dev machine and CI.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.footprint.cgroup),
            "cgroupsPerQOS": true,
            "containerRuntimeEndpoint": format!("unix://{}", dir.join("containerd.sock").display()),
            // Serving (logs, exec) on the bridge address only; the apiserver authenticates with a
            // client certificate from the plane's client CA.
            "address": self.footprint.gateway.to_string(),
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": plane.pki().client_ca.cert_path },
            },
            "authorization": { "mode": "AlwaysAllow" },
            "rotateCertificates": false,
            "serverTLSBootstrap": false,
            "podLogsDir": dir.join("pod-logs"),
            "volumePluginDir": dir.join("volume-plugins"),
            "resolvConf": dir.join("resolv.conf"),
            "clusterDomain": "cluster.local",
            "failSwapOn": false,
            // Never evict for disk: the machine's disk is shared with builds.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
                "imagefs.inodesFree": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "protectKernelDefaults": false,
            // The default -999 is refused here (this machine does not let a process lower its
            // oom_score_adj); 0 leaves it as it is.
            "oomScoreAdj": 0,
            "maxPods": 110,
        });
        std::fs::write(dir.join("kubelet.yaml"), serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }
}
