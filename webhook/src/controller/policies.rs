//! Policy mode: keeps the MutatingAdmissionPolicies compiled from the maps in step, and tells
//! when a new build's policy is in effect (a restart waits for that).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client};

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
pub(super) async fn keep_policies(
    client: &Client,
    state: &AppState,
    owner: Option<&str>,
    last: &mut Option<Written>,
) -> anyhow::Result<()> {
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
    let hash = policy_sync::compiled_hash(&(&compiled.policies, &keep, &compiled.warnings));
    if let Some(w) = last.as_mut().filter(|w| w.hash == hash && fresh(w)) {
        w.maps_version = maps_version;
        return Ok(());
    }
    *last = None;
    let owner = match owner {
        Some(name) => Some(owner_reference(client, name).await?),
        None => None,
    };
    let prune = policy_sync::Prune::Controller { keep: &keep, owner: owner.as_ref() };
    let synced = policy_sync::sync(client, &compiled.policies, prune).await;
    let warned = match &synced {
        Ok(_) => Some(policy_sync::sync_warnings(client, &compiled.warnings, owner.as_ref()).await),
        Err(_) => None,
    };
    state.metrics.controller.policy_applied(synced.is_ok() && warned.as_ref().is_some_and(Result::is_ok));
    let mut synced = synced?;
    if let Some(warned) = warned {
        let warned = warned?;
        synced.applied.extend(warned.applied);
        synced.deleted.extend(warned.deleted);
        synced.unchanged.extend(warned.unchanged);
    }
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

/// An owner reference to the ClusterRole `name` (`--policy-owner`).
async fn owner_reference(client: &Client, name: &str) -> anyhow::Result<OwnerReference> {
    use anyhow::Context;
    let role = Api::<ClusterRole>::all(client.clone())
        .get_metadata(name)
        .await
        .with_context(|| format!("reading ClusterRole {name} (--policy-owner), the owner of the policies"))?;
    Ok(OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRole".into(),
        name: name.to_string(),
        uid: role.metadata.uid.with_context(|| format!("ClusterRole {name} has no uid"))?,
        ..Default::default()
    })
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
