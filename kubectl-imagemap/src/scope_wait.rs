//! After `create`, `set-image` and `policy --apply`: wait until Pods of the namespace get the map.
//!
//! - A webhook whose controller scopes it to the namespaces that hold ImageMaps
//!   (`imagemap_core::scope`) widens the scope within about a second of a map's creation; Pods created
//!   before that are not swapped.
//! - In policy mode (MutatingAdmissionPolicies of ours exist) the controller recompiles the
//!   policy and the API server loads it; a server-side dry-run Pod shows when the map applies.

use std::time::Duration;

use imagemap_cluster::policy_sync;
use imagemap_core::maps::{CompiledMap, Origin};
use imagemap_core::policy::{Probe, CONTROLLER_MARKER, MANAGED_BY, MANAGED_BY_LABEL, SERVES_LABEL};
use imagemap_core::scope::{condition_includes, SCOPE_CONDITION};
use imagemap_core::types::ImageMap;
use k8s_openapi::api::admissionregistration::v1::{MutatingAdmissionPolicy, MutatingWebhookConfiguration};
use kube::api::ListParams;
use kube::Api;

use crate::client::Cluster;

/// How long to wait for the scope.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The scoped configurations that do not call the webhook for `namespace` yet, by name.
fn waiting_for(configs: &[MutatingWebhookConfiguration], namespace: &str) -> Vec<String> {
    configs
        .iter()
        .filter(|c| {
            c.webhooks.iter().flatten().any(|h| {
                h.match_conditions
                    .iter()
                    .flatten()
                    .any(|m| m.name == SCOPE_CONDITION && !condition_includes(&m.expression, namespace))
            })
        })
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

/// Waits (at most [`TIMEOUT`]) until every scoped webhook configuration includes the cluster's
/// namespace. Returns a warning for stderr when it does not, or when it cannot tell.
pub async fn wait(cluster: &Cluster) -> Option<String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let ns = &cluster.namespace;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let configs = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                return Some(format!(
                    "warning: could not check that the webhook serves namespace {ns} yet ({e}); \
                     Pods created in the next second may not be swapped"
                ))
            }
        };
        let waiting = waiting_for(&configs, ns);
        if waiting.is_empty() {
            return None;
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(format!(
                "warning: after {}s the webhook configuration {} does not call the webhook for namespace {ns}; \
                 Pods created there are not swapped until it does: is the webhook's controller running? \
                 (`kubectl imagemap doctor -n {ns}`)",
                TIMEOUT.as_secs(),
                waiting.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// In policy mode with a controller (its marker policy exists), waits (at most `timeout`) until a
/// dry-run Pod in the map's namespace that names its selector is swapped to its target. Returns
/// a warning for stderr when it is not; a hint when the namespace's policy was applied by
/// `kubectl imagemap policy --apply` and no controller keeps it; nothing when the map is not built
/// or no policy of ours is in use (webhook mode).
pub async fn wait_for_policy(cluster: &Cluster, map: &ImageMap, timeout: Duration) -> Option<String> {
    let policies: Api<MutatingAdmissionPolicy> = Api::all(cluster.client.clone());
    let ns = &cluster.namespace;
    // Not served (an older cluster) or not allowed to read: webhook mode as far as we can tell.
    if policies.get_opt(CONTROLLER_MARKER).await.ok()?.is_none() {
        let ours = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SERVES_LABEL}={ns}"));
        let applied = !policies.list_metadata(&ours).await.ok()?.items.is_empty();
        return applied.then(|| {
            format!(
                "note: namespace {ns} uses a policy applied by `kubectl imagemap policy` and no controller keeps it \
                 in step: run `kubectl imagemap policy -n {ns} --apply` for this change to reach new Pods"
            )
        });
    }
    wait_for_swap(cluster, map, timeout).await
}

/// Waits (at most `timeout`) until a dry-run Pod naming the map's selector comes back swapped to
/// its target, or won by another map; a warning when it does not.
pub async fn wait_for_swap(cluster: &Cluster, map: &ImageMap, timeout: Duration) -> Option<String> {
    let compiled = CompiledMap::compile(map, Origin::Cluster).ok()?;
    let target = compiled.target.as_ref().ok()?.familiar.clone();
    let selector = map.spec.selector.clone();
    if selector == target {
        return None;
    }
    let ns = &cluster.namespace;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match policy_sync::probe(&cluster.client, ns, &selector, &compiled.id, &target).await {
            Ok(outcome) if outcome != Probe::Waiting => return None,
            Ok(_) => {}
            Err(e) => {
                return Some(format!(
                    "warning: could not check with a dry-run Pod that the policy applies {selector} in namespace {ns} ({e}); \
                     Pods created in the next second may not be swapped"
                ))
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(format!(
                "warning: after {}s a dry-run Pod in namespace {ns} naming {selector} is not swapped to {target}: \
                 is the imagemap controller running in policy mode, and does the API server serve \
                 admissionregistration.k8s.io/v1 MutatingAdmissionPolicy (Kubernetes 1.36 or later)? \
                 A namespace or Pod labelled imagemap.tilt.dev/disabled is never swapped",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MatchCondition, MutatingWebhook};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn config(name: &str, expression: Option<&str>) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            webhooks: Some(vec![MutatingWebhook {
                match_conditions: expression
                    .map(|e| vec![MatchCondition { name: SCOPE_CONDITION.into(), expression: e.into() }]),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn only_scoped_configurations_without_the_namespace_are_waited_for() {
        let configs = [
            config("unscoped", None),
            config("everywhere-but-dev", Some("request.namespace in ['qa']")),
            config("with-dev", Some("request.namespace in ['dev', 'qa']")),
            config("none", Some("false")),
        ];
        assert_eq!(waiting_for(&configs, "dev"), ["everywhere-but-dev", "none"]);
        assert_eq!(waiting_for(&configs, "qa"), ["none"]);
    }
}
