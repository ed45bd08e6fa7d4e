//! `--gate-unbuilt`: releases gated Pods once their maps are built, or unchanged after
//! `--gate-timeout`.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use super::{publish, Options};
use crate::AppState;
use imagemap_core::gate::{release, Release, GATE, GATED_AT_ANNOTATION};

pub(super) async fn release_gated(
    client: &Client,
    state: &AppState,
    opts: &Options,
    gated: &Store<Pod>,
    recorder: &Recorder,
) {
    let now = Timestamp::now();
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
        let decision =
            state.with_index(|idx| release(&json, idx, &namespace, waited, opts.gate_timeout.as_secs() as i64));
        let (patch, event) = match decision {
            Release::Wait(_) => continue,
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
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch.into_json_patch())).await {
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
