//! `--restart-on-rebuild`: restarts the workloads whose Pods run an older build of a map.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{EventType, Recorder};
use kube::Client;

use super::policies::policy_in_effect;
use super::publish;
use crate::AppState;
use imagemap_cluster::workloads;
use imagemap_core::rebuild::{self, Targets};

/// Restarts, once per new target, every workload whose Pods carry an image other than their map's
/// current target (see [`imagemap_core::rebuild`]): nothing is remembered between rounds.
/// In policy mode (`policies`), a workload is restarted for a new build only once a dry-run Pod
/// in its namespace shows the compiled policy with that build in effect: the API server loads a
/// new policy a moment after it is written, and Pods created before that would keep the old image.
pub(super) async fn restart_outdated(client: &Client, state: &AppState, recorder: &Recorder, policies: bool) -> kube::Result<()> {
    // Cluster maps with a target now, and where their Pods can be: the maps' own namespaces, or
    // every namespace when the global namespace has maps.
    let (targets, selectors, namespaces, everywhere) = state.with_index(|idx| {
        let mut targets = Targets::new();
        let mut selectors = BTreeMap::new();
        let mut namespaces = BTreeSet::new();
        let mut everywhere = false;
        for map in idx.cluster_maps() {
            if let Ok(target) = &map.target {
                targets.insert(map.id.clone(), target.familiar.clone());
                selectors.insert(map.id.clone(), map.selector.full());
                namespaces.insert(map.namespace.clone());
                everywhere |= idx.global_namespace() == Some(map.namespace.as_str());
            }
        }
        (targets, selectors, namespaces, everywhere)
    });
    if targets.is_empty() {
        return Ok(());
    }
    let mut pods = Vec::new();
    if everywhere {
        pods = workloads::swapped_pods(client, None).await?;
    } else {
        for namespace in &namespaces {
            pods.extend(workloads::swapped_pods(client, Some(namespace)).await?);
        }
    }
    let outdated = rebuild::outdated(pods.iter().map(|(w, r)| (w, r.as_slice())), &targets);
    for (workload, wanted) in outdated {
        let what = format!("{}/{workload}", workload.namespace);
        let recorded = match workloads::restarted_for(client, &workload).await {
            Ok(text) => rebuild::parse_record(text.as_deref()).unwrap_or_else(|e| {
                tracing::warn!(workload = %what, error = %e, "rewriting the record of restarts");
                Targets::new()
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => {
                tracing::warn!(workload = %what, error = %e, "could not read a workload to restart");
                continue;
            }
        };
        let Some(record) = rebuild::restart_record(&recorded, &wanted) else { continue };
        if policies && !policy_in_effect(client, &workload.namespace, &wanted, &selectors).await {
            continue; // the next round looks again
        }
        let now = Timestamp::now().to_string();
        match workloads::restart(client, &workload, &now, Some(&record)).await {
            Ok(()) => {
                for (id, target) in &wanted {
                    tracing::info!(map = %id, workload = %what, image = %target, "restarted after rebuild");
                    let Some((map_ns, map_name)) = id.split_once('/') else { continue };
                    let note = format!("restarted {what}: image is now {target}");
                    let map = workloads::image_map_ref(map_ns, map_name);
                    publish(recorder, &map, EventType::Normal, "Restarted", note).await;
                }
            }
            Err(e) => tracing::warn!(workload = %what, error = %e, "could not restart; retrying"),
        }
    }
    Ok(())
}
