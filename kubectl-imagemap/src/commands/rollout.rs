//! `kubectl imagemap rollout NAME`: restart the workloads whose Pods the map swapped, and those
//! of Pods the map would change now (stale: created before its build, admitted while the webhook
//! was down, or an older build), as the controller's `--converge` does; recorded as an Event on
//! the map. Stale Pods without a restartable owner (bare Pods, Jobs) are listed, not touched.

use std::collections::BTreeSet;

use anyhow::Result;
use imagemap_cluster::workloads::{self, Owner};
use k8s_openapi::jiff::Timestamp;

use crate::cli::{Global, RolloutArgs};
use crate::client::Cluster;
use crate::render::escape;

/// Runs `rollout`.
pub async fn run(global: &Global, args: &RolloutArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &RolloutArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let ns = cluster.namespace.clone();
    let map = cluster
        .maps()
        .get(&args.name)
        .await
        .map_err(|e| cluster.explain_error(e, &format!("imagemap {:?}", args.name)))?;
    let id = format!("{ns}/{}", args.name);
    let mut owners: BTreeSet<_> =
        workloads::owners(&cluster.client, &ns, &id).await.map_err(|e| cluster.explain_error(e, "list pods"))?;
    let maps =
        cluster.maps().list(&Default::default()).await.map_err(|e| cluster.explain_error(e, "list imagemaps"))?;
    let stale = crate::stale::stale_pods(&cluster.client, &ns, &maps.items)
        .await
        .map_err(|e| cluster.explain_error(e, "list pods"))?;
    let mut out = String::new();
    for (pod, _) in stale.iter().filter(|(_, fields)| fields.iter().any(|f| f.image_map == id)) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match workloads::owner_of(&cluster.client, pod).await.map_err(|e| cluster.explain_error(e, "get owner"))? {
            Owner::Workload(w) => {
                owners.insert(w);
            }
            Owner::Unrestartable(owner) | Owner::Untrusted(owner) => out.push_str(&format!(
                "pod/{} is stale but owned by {}: recreate it to run the current build\n",
                escape(&name),
                escape(&owner)
            )),
        }
    }
    if owners.is_empty() {
        out.push_str(&format!(
            "no workload in namespace {ns} has Pods swapped by imagemap {:?}, or that it would change; nothing to restart\n",
            args.name
        ));
        return Ok(out);
    }
    let now = Timestamp::now().to_string();
    let image = crate::render::usability(&map).unwrap_or_else(|_| "<unbuilt>".into());
    for w in &owners {
        workloads::restart(&cluster.client, w, &now, None)
            .await
            .map_err(|e| cluster.explain_error(e, &w.to_string()))?;
        out.push_str(&format!("{}.apps/{} restarted\n", w.kind.as_str(), w.name));
        let msg = format!("restarted {w} (kubectl imagemap rollout): image is {image}");
        let _ = workloads::record_event(
            &cluster.client,
            workloads::image_map_ref(&ns, &args.name),
            "Normal",
            "Restarted",
            &msg,
            "kubectl-imagemap",
        )
        .await;
    }
    Ok(out)
}
