//! Stale Pods as the plugin shows them (`get`'s STALE column, `describe`, `rollout`): the Pods
//! of a namespace that its maps would change now ([`imagemap_core::stale`]), judged with every
//! map of the namespace so that precedence is the webhook's.

use std::collections::BTreeMap;

use imagemap_cluster::workloads;
use imagemap_core::maps::MapIndex;
use imagemap_core::policy::DISABLED_LABEL;
use imagemap_core::stale::StaleField;
use imagemap_core::types::ImageMap;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;

/// The stale Pods of `namespace` under `maps` (the namespace's maps), with their fields.
pub async fn stale_pods(
    client: &Client,
    namespace: &str,
    maps: &[ImageMap],
) -> kube::Result<Vec<(Pod, Vec<StaleField>)>> {
    let mut index = MapIndex::new(None);
    for map in maps.iter().filter(|m| m.metadata.namespace.as_deref() == Some(namespace)) {
        // An invalid selector is skipped here as the webhook skips it.
        let _ = index.upsert(map);
    }
    workloads::stale_pods(client, namespace, &index, DISABLED_LABEL).await
}

/// How many Pods each map (`namespace/name`) would change now.
pub fn counts(stale: &[(Pod, Vec<StaleField>)]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for (_, fields) in stale {
        let mut maps: Vec<&str> = fields.iter().map(|f| f.image_map.as_str()).collect();
        maps.sort_unstable();
        maps.dedup();
        for map in maps {
            *out.entry(map.to_string()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_core::stale::StaleReason;

    fn field(map: &str) -> StaleField {
        StaleField {
            field: "spec.containers{a}.image".into(),
            current: "app".into(),
            wanted: "reg.io/app:1".into(),
            image_map: map.into(),
            reason: StaleReason::NeverSwapped,
        }
    }

    #[test]
    fn each_pod_counts_once_per_map() {
        let stale = vec![
            (Pod::default(), vec![field("dev/a"), field("dev/a"), field("dev/b")]),
            (Pod::default(), vec![field("dev/a")]),
        ];
        assert_eq!(counts(&stale), BTreeMap::from([("dev/a".to_string(), 2), ("dev/b".to_string(), 1)]));
    }
}
