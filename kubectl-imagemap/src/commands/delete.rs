//! `kubectl imagemap delete NAME...`

use anyhow::{bail, Result};
use kube::api::DeleteParams;

use crate::cli::{DeleteArgs, Global};
use crate::client::Cluster;

/// Runs `delete`: deletes each map; reports every failure and fails if any did.
pub async fn run(global: &Global, args: &DeleteArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let mut out = String::new();
    let mut failed = 0;
    for name in &args.names {
        match cluster.maps().delete(name, &DeleteParams::default()).await {
            Ok(_) => out.push_str(&format!("imagemap.tilt.dev \"{name}\" deleted\n")),
            Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound" && args.ignore_not_found => {}
            Err(e) => {
                failed += 1;
                eprintln!("error: {:#}", cluster.explain_error(e, &format!("imagemap {name:?}")));
            }
        }
    }
    print!("{out}");
    if failed > 0 {
        bail!("{failed} of {} ImageMaps could not be deleted", args.names.len());
    }
    Ok(String::new())
}
