//! Test harness: a real Kubernetes control plane for end-to-end tests.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver and optionally kube-controller-manager
//! (built by `tests/controlplane/build.sh`) on free loopback ports with freshly minted
//! certificates, installs the ImageMap CRD when the chart has it, and tears everything down on
//! drop, or through a watchdog when the test process exits. [`shared`] gives every test of a
//! binary one plane; tests isolate themselves with [`ControlPlane::create_namespace`].
//!
//! ```no_run
//! let plane = imagemap_e2e::shared();
//! let ns = plane.create_namespace("my-test");
//! plane.kubectl_ok(["get", "pods", "--namespace", &ns]);
//! ```

pub mod binaries;
pub mod controlplane;
pub mod helm;
pub mod kubeconfig;
pub mod kubectl;
pub mod launch;
pub mod local_webhook;
pub mod manifests;
pub mod names;
pub mod net;
pub mod node;
pub mod oci;
pub mod pki;
pub mod plugin;
pub mod pods;
pub mod process;
pub mod registry;
pub mod registry_hosting;
pub mod wait;
pub mod webhook;

pub use controlplane::{shared, ControlPlane, ControlPlaneOptions, StartupTimings};
pub use kubectl::Kubectl;
pub use node::{shared_cluster, Cluster, Footprint, Node, NodeNetwork, NodeOptions};
pub use registry::Registry;
pub use wait::poll;
pub use webhook::{
    register, shared_webhook, unregister, workspace_binary, Registration, ServedWebhook, Webhook, WebhookOptions,
};
