//! `kubectl imagemap delete NAME...` or `delete -l SELECTOR`

use anyhow::{bail, Result};
use kube::api::{DeleteParams, ListParams};

use crate::cli::{DeleteArgs, Global};
use crate::client::Cluster;

/// Runs `delete`: deletes each map; reports every failure and fails if any did.
pub async fn run(global: &Global, args: &DeleteArgs, out: &mut dyn std::io::Write) -> Result<()> {
    let cluster = Cluster::connect(global).await?;
    let names = match &args.selector {
        Some(selector) => {
            let listed = cluster
                .maps()
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| cluster.explain_error(e, &format!("list imagemaps -l {selector}")))?;
            let names: Vec<String> = listed.items.into_iter().filter_map(|m| m.metadata.name).collect();
            if names.is_empty() {
                eprintln!(
                    "No ImageMaps found in {} namespace matching {selector}.",
                    crate::render::escape(&cluster.namespace)
                );
            }
            names
        }
        None => args.names.clone(),
    };
    let mut deleted = String::new();
    let mut failed = 0;
    for name in &names {
        match cluster.maps().delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted.push_str(&format!("imagemap.tilt.dev \"{name}\" deleted\n")),
            Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound" && args.ignore_not_found => {}
            Err(e) => {
                failed += 1;
                eprintln!("error: {:#}", cluster.explain_error(e, &format!("imagemap {name:?}")));
            }
        }
    }
    // What was deleted goes to `out` even when some failed, as kubectl does.
    super::write(out, &deleted)?;
    if failed > 0 {
        bail!("{failed} of {} ImageMaps could not be deleted", names.len());
    }
    Ok(())
}
