//! `kubectl imagemap policy`: the namespace's ImageMaps compiled into a MutatingAdmissionPolicy
//! and its binding (`imagemap_core::policy`), printed or applied, so the API server swaps images itself
//! with no webhook and no controller. The same objects the controller keeps in `--mode policy`.

use anyhow::{anyhow, Context, Result};
use imagemap_cluster::policy_sync::{self, Prune};
use imagemap_core::policy::{self, NamespacePolicy, PolicyOptions, SERVES_GLOBAL};
use imagemap_core::types::ImageMap;
use kube::api::ListParams;
use kube::Api;

use crate::cli::{Global, PolicyArgs, PolicyOutput};
use crate::client::Cluster;

const POLICY_KIND: &str = "mutatingadmissionpolicy.admissionregistration.k8s.io";
const BINDING_KIND: &str = "mutatingadmissionpolicybinding.admissionregistration.k8s.io";

/// Runs `policy`.
pub async fn run(global: &Global, args: &PolicyArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &PolicyArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let ns = cluster.namespace.clone();
    let maps = list_maps(&cluster, args.global_namespace.as_deref()).await?;
    let options = PolicyOptions { global_namespace: args.global_namespace.clone() };
    let compiled = policy::compile(&maps, &options).map_err(|e| anyhow!("cannot compile a policy: {e}"))?;
    let serving = serving(compiled, &ns, args.global_namespace.as_deref());
    if !args.apply {
        return match &serving {
            Some(p) => render(p, args.output),
            None => {
                eprintln!("no built ImageMap applies in namespace {ns:?}: no policy to print");
                Ok(String::new())
            }
        };
    }
    let label = match &serving {
        Some(NamespacePolicy { namespace: None, .. }) => SERVES_GLOBAL,
        _ => ns.as_str(),
    };
    let synced = policy_sync::sync(&cluster.client, serving.as_slice(), Prune::Namespace(label))
        .await
        .map_err(|e| apply_error(e, &ns))?;
    let mut out = String::new();
    for name in &synced.applied {
        out.push_str(&format!("{POLICY_KIND}/{name} serverside-applied\n{BINDING_KIND}/{name} serverside-applied\n"));
    }
    for name in synced.unchanged.iter().step_by(2) {
        out.push_str(&format!("{POLICY_KIND}/{name} unchanged\n"));
    }
    for name in synced.deleted.iter().step_by(2) {
        out.push_str(&format!("{POLICY_KIND}/{name} deleted\n"));
    }
    if serving.is_none() {
        eprintln!("no built ImageMap applies in namespace {ns:?}: no policy to apply");
    }
    // The API server loads a new policy within a moment; wait until Pods get it.
    if let Some(p) = &serving {
        let winner = maps.iter().find(|m| p.maps.iter().any(|id| *id == map_id(m)));
        if let Some(map) = winner {
            if let Some(warning) = crate::scope_wait::wait_for_swap(&cluster, map, args.timeout).await {
                eprintln!("{warning}");
            }
        }
    }
    Ok(out)
}

fn map_id(m: &ImageMap) -> String {
    format!("{}/{}", m.metadata.namespace.as_deref().unwrap_or(""), m.metadata.name.as_deref().unwrap_or(""))
}

/// The maps the policy needs: the namespace's, or every namespace's with a global namespace
/// (its policy must leave out the namespaces that have their own).
async fn list_maps(cluster: &Cluster, global_namespace: Option<&str>) -> Result<Vec<ImageMap>> {
    let api: Api<ImageMap> = match global_namespace {
        Some(_) => Api::all(cluster.client.clone()),
        None => cluster.maps(),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| cluster.explain_error(e, "list imagemaps"))?;
    Ok(list.items)
}

/// The compiled policy that serves `ns`: its own, else the global one (unless `ns` has maps that
/// are all unbuilt: then none).
fn serving(compiled: Vec<NamespacePolicy>, ns: &str, global_namespace: Option<&str>) -> Option<NamespacePolicy> {
    let mut global = None;
    for p in compiled {
        match p.namespace.as_deref() {
            Some(n) if n == ns => return Some(p),
            None => global = Some(p),
            _ => {}
        }
    }
    global.filter(|_| global_namespace.is_some())
}

fn render(p: &NamespacePolicy, output: PolicyOutput) -> Result<String> {
    let objects = [
        serde_json::to_value(&p.policy).context("encoding the policy")?,
        serde_json::to_value(&p.binding).context("encoding the binding")?,
    ];
    Ok(match output {
        PolicyOutput::Yaml => {
            let docs: Result<Vec<String>> =
                objects.iter().map(|o| imagemap_core::yaml::to_string(o).context("writing YAML")).collect();
            docs?.join("---\n")
        }
        PolicyOutput::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            let mut text = serde_json::to_string_pretty(&list).context("writing JSON")?;
            text.push('\n');
            text
        }
    })
}

fn apply_error(e: kube::Error, ns: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "forbidden: {}: applying a policy needs create/patch/delete of mutatingadmissionpolicies and \
             mutatingadmissionpolicybindings (cluster-scoped); ask a cluster admin, or print it with \
             `kubectl imagemap policy -n {ns}` for them to apply",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 => anyhow!(
            "the API server does not serve admissionregistration.k8s.io/v1 MutatingAdmissionPolicy ({}): \
             policy mode needs Kubernetes 1.36 or later; use the webhook instead",
            s.message
        ),
        _ => anyhow!("applying the policy: {e}"),
    }
}
