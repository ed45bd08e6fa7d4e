//! The registry a cluster advertises (KEP 1755): the ConfigMap `kube-public/local-registry-hosting`
//! that `make dev` publishes for its registry and `kubectl imagemap build` reads.

use anyhow::Result;
use serde_json::json;

use crate::{ControlPlane, Registry};

/// Where the README explains the dev registry.
pub const HELP_URL: &str = "https://github.com/imagemap/imagemap#the-inner-loop";

/// The `localRegistryHosting.v1` document for `registry` as this harness runs it: the developer's
/// machine pushes to `localhost:PORT` and the node's containerd (on the same machine) pulls from
/// the same address; Pods cannot reach it (it listens on 127.0.0.1 only), so no
/// `hostFromClusterNetwork`.
pub fn hosting_document(registry: &Registry, help: &str) -> String {
    let host = registry.address();
    format!("host: \"{host}\"\nhostFromContainerRuntime: \"{host}\"\nhelp: \"{help}\"\n")
}

/// Publishes (creates or replaces) `kube-public/local-registry-hosting` for `registry`.
pub fn publish(plane: &ControlPlane, registry: &Registry, help: &str) -> Result<()> {
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
        "data": {"localRegistryHosting.v1": hosting_document(registry, help)},
    });
    plane.kubectl_client().apply(&config_map.to_string())?;
    Ok(())
}
