//! `kubectl imagemap rollout NAME`: restart the workloads whose Pods the map swapped, as the
//! webhook's `--restart-on-rebuild` does after a new build; recorded as an Event on the map.

use anyhow::Result;
use imagemap_cluster::workloads;
use k8s_openapi::jiff::Timestamp;

use crate::cli::{Global, RolloutArgs};
use crate::client::Cluster;

/// Runs `rollout`.
pub async fn run(global: &Global, args: &RolloutArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let ns = cluster.namespace.clone();
    let map = cluster
        .maps()
        .get(&args.name)
        .await
        .map_err(|e| cluster.explain_error(e, &format!("imagemap {:?}", args.name)))?;
    let id = format!("{ns}/{}", args.name);
    let owners =
        workloads::owners(&cluster.client, &ns, &id).await.map_err(|e| cluster.explain_error(e, "list pods"))?;
    if owners.is_empty() {
        return Ok(format!(
            "no workload in namespace {ns} has Pods swapped by imagemap {:?}; nothing to restart\n",
            args.name
        ));
    }
    let now = Timestamp::now().to_string();
    let image = crate::render::usability(&map).unwrap_or_else(|_| "<unbuilt>".into());
    let mut out = String::new();
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
