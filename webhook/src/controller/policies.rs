//! Policy mode: keeps the MutatingAdmissionPolicies compiled from the maps in step, and tells
//! when a new build's policy is in effect (a restart waits for that).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::Client;

use crate::AppState;
use imagemap_cluster::policy_sync;
use imagemap_core::policy;
use imagemap_core::rebuild::Targets;

/// What [`keep_policies`] last wrote: the index version it compiled, the compiled hash, and when.
pub(super) struct Written {
    maps_version: u64,
    hash: String,
    at: Instant,
}

/// Keeps the compiled admission policies in step with the maps (`--mode policy`). A namespace
/// that cannot be compiled (too many maps) keeps the policy it has, with a log line that says
/// why; the others still update.
/// `last` is what was last written: the maps are compiled again only when the index changed, and
/// the same policies are written again only after [`POLICY_RESYNC`], which repairs hand edits
/// and deletions.
pub(super) async fn keep_policies(client: &Client, state: &AppState, last: &mut Option<Written>) -> anyhow::Result<()> {
    let fresh = |w: &Written| w.at.elapsed() < POLICY_RESYNC;
    let current = state.maps_version.load(Ordering::Acquire);
    if last.as_ref().is_some_and(|w| w.maps_version == current && fresh(w)) {
        return Ok(());
    }
    let (maps_version, compiled) = state.with_versioned_index(policy::compile_index);
    for error in &compiled.failed {
        tracing::warn!(error = %error, "a namespace's policy was not recompiled; it keeps the one it has");
    }
    let keep = compiled.failed_names();
    let hash = policy_sync::compiled_hash(&(&compiled.policies, &keep));
    if let Some(w) = last.as_mut().filter(|w| w.hash == hash && fresh(w)) {
        w.maps_version = maps_version;
        return Ok(());
    }
    *last = None;
    let synced = policy_sync::sync(client, &compiled.policies, policy_sync::Prune::AllExcept(&keep)).await;
    state.metrics.controller.policy_applied(synced.is_ok());
    let synced = synced?;
    if !synced.is_noop() {
        tracing::info!(
            applied = %synced.applied.join(","),
            deleted = %synced.deleted.join(","),
            unchanged = synced.unchanged.len(),
            "admission policies brought in step with the ImageMaps"
        );
    }
    *last = Some(Written { maps_version, hash, at: Instant::now() });
    Ok(())
}

/// True when every map of `wanted` (id -> target) is in effect in `namespace`, as a dry-run Pod
/// naming its selector shows: the webhook answers, or the policy with the new build is loaded.
/// A probe the API server refuses (no RBAC for it) counts as in effect, with a warning:
/// restarting beats never restarting.
pub(super) async fn swaps_in_effect(
    client: &Client,
    namespace: &str,
    wanted: &Targets,
    selectors: &BTreeMap<String, String>,
) -> bool {
    for (id, target) in wanted {
        let Some(selector) = selectors.get(id) else { continue };
        match policy_sync::probe(client, namespace, selector, id, target).await {
            Ok(policy::Probe::Waiting) => {
                tracing::debug!(map = %id, %namespace, "the policy with the new build is not in effect yet; restart deferred");
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(map = %id, %namespace, error = %e, "could not check the policy with a dry-run Pod; restarting anyway")
            }
        }
    }
    true
}

/// How often unchanged policies are written again anyway.
const POLICY_RESYNC: Duration = Duration::from_secs(30);

