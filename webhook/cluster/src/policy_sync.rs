//! Writing compiled policies ([`imagemap_core::policy`]) to the cluster: shared by the controller in
//! `--mode policy` and `kubectl imagemap policy --apply`. Objects are server-side applied only
//! when what was compiled changed (a hash annotation records it), and ours that are no longer
//! compiled are deleted.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use imagemap_core::policy::{
    controller_marker, probe_outcome, NamespacePolicy, Probe, UnbuiltWarning, CONTROLLER_MARKER, FIELD_MANAGER,
    MANAGED_BY, MANAGED_BY_LABEL, SERVES_LABEL,
};

/// Annotation holding a hash of what was compiled, so unchanged objects are not written.
pub const COMPILED_ANNOTATION: &str = "imagemap.tilt.dev/compiled";

/// Which of our existing objects may be deleted when not compiled any more.
#[derive(Debug, Clone, Copy)]
pub enum Prune<'a> {
    /// Every object we manage (the controller owns them all); the controller's marker
    /// ([`CONTROLLER_MARKER`]) is applied and kept.
    All,
    /// Like [`Prune::All`], for the controller: the names in `keep` are kept as they are
    /// (namespaces whose policy did not compile this time keep the one they have), and every
    /// object written (the marker too) is owned by `owner`, so that deleting the owner (the
    /// chart's ClusterRole, at `helm uninstall`) has the garbage collector delete them.
    Controller {
        /// Names kept as they are.
        keep: &'a BTreeSet<String>,
        /// The owner set on every object written.
        owner: Option<&'a OwnerReference>,
    },
    /// Only the one serving this namespace (`kubectl imagemap policy -n NS --apply`).
    Namespace(&'a str),
}

/// What a sync did, object names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Written (created or changed).
    pub applied: Vec<String>,
    /// Deleted.
    pub deleted: Vec<String>,
    /// Already as compiled.
    pub unchanged: Vec<String>,
}

impl Synced {
    /// True when nothing was written or deleted.
    pub fn is_noop(&self) -> bool {
        self.applied.is_empty() && self.deleted.is_empty()
    }
}

/// Brings the cluster's policies and bindings in step with `policies`.
pub async fn sync(client: &Client, policies: &[NamespacePolicy], prune: Prune<'_>) -> kube::Result<Synced> {
    let mut out = Synced::default();
    let selector = match prune {
        Prune::All | Prune::Controller { .. } => format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
        Prune::Namespace(ns) => format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SERVES_LABEL}={ns}"),
    };
    let policy_api: Api<MutatingAdmissionPolicy> = Api::all(client.clone());
    let binding_api: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    let mut wanted: BTreeSet<String> = policies.iter().filter_map(|p| p.policy.metadata.name.clone()).collect();
    let owner = match prune {
        Prune::Controller { owner, .. } => owner,
        _ => None,
    };
    let owned = |mut meta: ObjectMeta| {
        if let Some(owner) = owner {
            meta.owner_references = Some(vec![owner.clone()]);
        }
        meta
    };
    if let Prune::All | Prune::Controller { .. } = prune {
        let mut marker = controller_marker();
        marker.metadata = owned(marker.metadata);
        apply(&policy_api, marker, &mut out).await?;
        wanted.insert(CONTROLLER_MARKER.to_string());
    }
    if let Prune::Controller { keep, .. } = prune {
        wanted.extend(keep.iter().cloned());
    }
    // Policies before bindings, so a binding never names a policy that is not there yet.
    for p in policies {
        let (mut policy, mut binding) = (p.policy.clone(), p.binding.clone());
        policy.metadata = owned(policy.metadata);
        binding.metadata = owned(binding.metadata);
        apply(&policy_api, policy, &mut out).await?;
        apply(&binding_api, binding, &mut out).await?;
    }
    // Bindings before policies, for the same reason.
    prune_stale(&binding_api, &selector, &wanted, &mut out).await?;
    prune_stale(&policy_api, &selector, &wanted, &mut out).await?;
    Ok(out)
}

/// Brings the cluster's warning policies for unbuilt maps ([`UnbuiltWarning`]) in step with
/// `warnings`, each owned by `owner` when given; ours no longer compiled are deleted.
pub async fn sync_warnings(
    client: &Client,
    warnings: &[UnbuiltWarning],
    owner: Option<&OwnerReference>,
) -> kube::Result<Synced> {
    let mut out = Synced::default();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let policy_api: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let binding_api: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let wanted: BTreeSet<String> = warnings.iter().filter_map(|w| w.policy.metadata.name.clone()).collect();
    for w in warnings {
        let (mut policy, mut binding) = (w.policy.clone(), w.binding.clone());
        if let Some(owner) = owner {
            policy.metadata.owner_references = Some(vec![owner.clone()]);
            binding.metadata.owner_references = Some(vec![owner.clone()]);
        }
        apply(&policy_api, policy, &mut out).await?;
        apply(&binding_api, binding, &mut out).await?;
    }
    prune_stale(&binding_api, &selector, &wanted, &mut out).await?;
    prune_stale(&policy_api, &selector, &wanted, &mut out).await?;
    Ok(out)
}

/// Creates a server-side dry-run Pod in `namespace` whose container names `image` (a map's
/// selector) and says whether map `map_id`'s `target` is in effect there ([`probe_outcome`]).
pub async fn probe(client: &Client, namespace: &str, image: &str, map_id: &str, target: &str) -> kube::Result<Probe> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = Pod {
        metadata: ObjectMeta { generate_name: Some("imagemap-probe-".into()), ..Default::default() },
        spec: Some(PodSpec {
            containers: vec![Container { name: "probe".into(), image: Some(image.into()), ..Default::default() }],
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await?;
    Ok(probe_outcome(&created, map_id, target))
}

/// A hash of `object` as compiled (recorded on objects to skip unchanged writes).
pub fn compiled_hash<K: Serialize>(object: &K) -> String {
    let text = serde_json::to_string(object).unwrap_or_else(|_| unreachable!("k8s-openapi objects serialize"));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

async fn apply<K>(api: &Api<K>, mut object: K, out: &mut Synced) -> kube::Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let hash = compiled_hash(&object);
    let current = api.get_opt(&name).await?;
    if current.as_ref().and_then(|c| c.meta().annotations.as_ref()).and_then(|a| a.get(COMPILED_ANNOTATION))
        == Some(&hash)
    {
        out.unchanged.push(name);
        return Ok(());
    }
    object.meta_mut().annotations.get_or_insert_with(Default::default).insert(COMPILED_ANNOTATION.into(), hash);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
    out.applied.push(name);
    Ok(())
}

async fn prune_stale<K>(api: &Api<K>, selector: &str, wanted: &BTreeSet<String>, out: &mut Synced) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for existing in api.list_metadata(&ListParams::default().labels(selector)).await? {
        let Some(name) = existing.metadata.name else { continue };
        if !wanted.contains(&name) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => out.deleted.push(name),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
