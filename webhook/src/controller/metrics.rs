//! The controller's metrics, registered beside the webhook's (`imagemap_` prefix): whether
//! this replica leads, stale Pods per namespace, restarts, gate releases and policy applies.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
type NamespaceLabels = Vec<(&'static str, String)>;

/// The controller's metrics (zero in a process that runs no controller).
#[derive(Default)]
pub struct ControllerMetrics {
    leading: Gauge,
    stale_pods: Family<NamespaceLabels, Gauge>,
    restarts: Counter,
    gate_releases: Family<Labels, Counter>,
    policy_applies: Family<Labels, Counter>,
}

impl ControllerMetrics {
    /// Registers every controller metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics::default();
        registry.register("controller_leading", "1 while this replica holds the controller's Lease", m.leading.clone());
        registry.register(
            "stale_pods",
            "Running Pods the maps would change now (never swapped or an older build), by namespace",
            m.stale_pods.clone(),
        );
        registry.register(
            "controller_restarts",
            "Workloads restarted to run a map's current build",
            m.restarts.clone(),
        );
        registry.register(
            "controller_gate_releases",
            "Gated Pods released, by outcome (swapped, timeout, map_gone)",
            m.gate_releases.clone(),
        );
        registry.register(
            "controller_policy_applies",
            "Admission policy syncs, by result (success, failure)",
            m.policy_applies.clone(),
        );
        m
    }

    /// Whether this replica leads.
    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// Sets the stale Pods per namespace; namespaces not in `counts` drop to 0.
    pub fn set_stale_pods(&self, counts: &std::collections::BTreeMap<String, usize>) {
        self.stale_pods.clear();
        for (namespace, n) in counts {
            self.stale_pods.get_or_create(&vec![("namespace", namespace.clone())]).set(*n as i64);
        }
    }

    /// Counts a workload restart.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Counts a released gated Pod.
    pub fn gate_released(&self, outcome: &'static str) {
        self.gate_releases.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    /// Counts a policy sync.
    pub fn policy_applied(&self, ok: bool) {
        self.policy_applies.get_or_create(&vec![("result", if ok { "success" } else { "failure" })]).inc();
    }
}
