//! After `create` and `set-image`: wait until the webhook is called for Pods of the namespace.
//! A webhook whose controller scopes it to the namespaces that hold ImageMaps (`imagemap::scope`)
//! widens the scope within about a second of a map's creation; Pods created before that are not
//! swapped.

use std::time::Duration;

use imagemap::scope::{condition_includes, SCOPE_CONDITION};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
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
