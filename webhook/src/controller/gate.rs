//! `--gate-unbuilt`: releases gated Pods once their maps are built, or unchanged after
//! `--gate-timeout`.
//!
//! The map cache decides which Pods may go; before one goes (other than by timeout), the maps of
//! its namespace are read again from the API server and the decision is taken on them. A watch
//! may deliver a Pod before the map it waits for (two streams, no order between them), and a
//! Pod let go early runs its unbuilt image.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use super::{publish, Options};
use crate::AppState;
use imagemap_core::gate::{release, Release, GATE, GATED_AT_ANNOTATION};
use imagemap_core::maps::MapIndex;
use imagemap_core::patch::Patch;
use imagemap_core::types::ImageMap;

/// One round: every Pod that still carries our gate is released when its maps are built or gone
/// (confirmed on maps read from the API server) or when it has waited `--gate-timeout`.
pub(super) async fn release_gated(
    client: &Client,
    state: &AppState,
    opts: &Options,
    gated: &Store<Pod>,
    recorder: &Recorder,
) {
    let now = Timestamp::now();
    // The maps read from the API server this round, by namespace (one read per namespace).
    let mut fresh: HashMap<String, MapIndex> = HashMap::new();
    for pod in gated.state() {
        // The label is only a hint anyone can write: a Pod is patched only while it still carries
        // our scheduling gate.
        if !pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.name == GATE))
        {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let gated_at = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GATED_AT_ANNOTATION))
            .and_then(|t| t.parse::<Timestamp>().ok())
            // Without our annotation (removed or edited by someone), the Pod's age counts.
            .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        let waited = now.as_second() - gated_at.as_second();
        let json = match serde_json::to_value(&*pod) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not read a gated Pod");
                continue;
            }
        };
        let timeout = opts.gate_timeout.as_secs() as i64;
        let mut decision = state.with_index(|idx| release(&json, idx, &namespace, waited, timeout));
        if matches!(decision, Release::Swap { .. }) {
            if !fresh.contains_key(&namespace) {
                match read_maps(client, state, &namespace).await {
                    Ok(index) => fresh.insert(namespace.clone(), index),
                    Err(e) => {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not read the ImageMaps to confirm a release; the Pod stays gated this round");
                        continue;
                    }
                };
            }
            decision = release(&json, &fresh[&namespace], &namespace, waited, timeout);
            if let Release::Wait(maps) = &decision {
                tracing::debug!(pod = %format!("{namespace}/{name}"), waiting_for = %maps.join(", "), "the ImageMap cache is behind the API server; the Pod stays gated");
            }
        }
        let Some((patch, event)) = action(decision, waited) else { continue };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.patch(&name, &PatchParams::default(), &kube::api::Patch::<()>::Json(patch.into_json_patch())).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), reason = event.1, message = %event.2, "released gated Pod");
                state.metrics.controller.gate_released(match event.1 {
                    "ImageMapSwapped" => "swapped",
                    "ImageMapGateTimeout" => "timeout",
                    _ => "map_gone",
                });
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                };
                publish(recorder, &reference, event.0, event.1, event.2).await;
            }
            // Released meanwhile (the watch has not told yet) or deleted: the test op or the
            // lookup fails, and there is nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {
                tracing::debug!(pod = %format!("{namespace}/{name}"), "gated Pod already released or gone")
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not release gated Pod; retrying")
            }
        }
    }
}

/// The patch and the Event (type, reason, note) of a decision; none while the Pod waits.
fn action(decision: Release, waited: i64) -> Option<(Patch, (EventType, &'static str, String))> {
    Some(match decision {
        Release::Wait(_) => return None,
        Release::Swap { patch, swapped } if swapped.is_empty() => (
            patch,
            (
                EventType::Normal,
                "ImageMapReleased",
                "no ImageMap waits any more (deleted?); scheduling gate removed, images unchanged".to_string(),
            ),
        ),
        Release::Swap { patch, swapped } => (
            patch,
            (
                EventType::Normal,
                "ImageMapSwapped",
                format!("built image ready: {}; scheduling gate removed", swapped.join(", ")),
            ),
        ),
        Release::TimedOut { patch, waiting_for } => (
            patch,
            (
                EventType::Warning,
                "ImageMapGateTimeout",
                format!(
                    "ImageMap {} still has no built image after {waited}s; released with the original images",
                    waiting_for.join(", ")
                ),
            ),
        ),
    })
}

/// The ImageMaps that apply in `namespace` (its own and the global namespace's), read from the
/// API server now rather than from the cache, compiled under the cache's guards.
async fn read_maps(client: &Client, state: &AppState, namespace: &str) -> kube::Result<MapIndex> {
    let mut index = state.with_index(MapIndex::empty_like);
    let mut namespaces = vec![namespace.to_string()];
    namespaces.extend(index.global_namespace().filter(|g| *g != namespace).map(str::to_string));
    for ns in namespaces {
        // No resourceVersion: a consistent read, as new as the API server's storage.
        for map in Api::<ImageMap>::namespaced(client.clone(), &ns).list(&ListParams::default()).await? {
            if let Err(e) = index.upsert(&map) {
                tracing::debug!(error = %e, "skipping ImageMap with an invalid selector");
            }
        }
    }
    Ok(index)
}
