//! `kubectl imagemap registry [set]`: the registry the cluster advertises in
//! `kube-public/local-registry-hosting` (KEP 1755). The calls to the registry itself are in
//! `distribution`.

use anyhow::{anyhow, Result};
use imagemap_core::registry::{LocalRegistryHosting, HOSTING_CONFIG_MAP, HOSTING_KEY, HOSTING_NAMESPACE};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

use crate::cli::{Global, RegistryAction, RegistryArgs, RegistrySetArgs};
use crate::client::Cluster;

/// The field manager of `registry set`.
const FIELD_MANAGER: &str = "kubectl-imagemap";

/// How to advertise a registry, for messages.
pub const SET_HINT: &str =
    "kubectl imagemap registry set --host HOST[:PORT] [--from-runtime HOST] [--from-cluster-network HOST]";

/// What the cluster advertises: `None` when the ConfigMap does not exist; an error (naming the
/// fix) when it cannot be read or is malformed.
pub async fn advertised(cluster: &Cluster) -> Result<Option<LocalRegistryHosting>> {
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), HOSTING_NAMESPACE);
    let what = format!("configmap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP}");
    let Some(cm) = api.get_opt(HOSTING_CONFIG_MAP).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 403 => {
            anyhow!("forbidden: cannot read {what}: {}: ask for RBAC access to read it, or pass --registry", s.message)
        }
        e => crate::client::friendly(e, &what, HOSTING_NAMESPACE, &cluster.server),
    })?
    else {
        return Ok(None);
    };
    let data = cm.data.unwrap_or_default();
    Ok(Some(LocalRegistryHosting::from_config_map_data(data.iter())?))
}

/// [`advertised`] for commands that work without it: problems become a warning on stderr.
pub async fn advertised_or_warn(cluster: &Cluster) -> Option<LocalRegistryHosting> {
    match advertised(cluster).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("warning: ignoring the advertised registry: {e:#}");
            None
        }
    }
}

/// The text `registry` prints.
pub fn render(hosting: Option<&LocalRegistryHosting>) -> String {
    let Some(h) = hosting else {
        return format!(
            "No registry is advertised: ConfigMap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP} does not exist.\n\
             Advertise one with: {SET_HINT}\n\
             Meanwhile `kubectl imagemap build` needs --registry HOST.\n"
        );
    };
    let or_none = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.to_string() };
    let runtime = if h.host_from_container_runtime.is_empty() {
        format!("{} (same as host)", h.host)
    } else {
        h.host_from_container_runtime.clone()
    };
    format!(
        "Registry advertised in configmap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP}:\n\
         \x20 host:                      {}   (your machine pushes here; imageFromLocal)\n\
         \x20 hostFromContainerRuntime:  {}   (the node pulls from here; image, imageFromCluster)\n\
         \x20 hostFromClusterNetwork:    {}   (Pods reach it here)\n\
         \x20 help:                      {}\n",
        h.host,
        runtime,
        or_none(&h.host_from_cluster_network),
        or_none(&h.help),
    )
}

/// The advertisement `registry set` writes, checked.
pub fn hosting_from_flags(args: &RegistrySetArgs) -> Result<LocalRegistryHosting> {
    let hosting = LocalRegistryHosting {
        host: args.host.clone(),
        host_from_container_runtime: args.from_runtime.clone().unwrap_or_default(),
        host_from_cluster_network: args.from_cluster_network.clone().unwrap_or_default(),
        help: args.help_url.clone().unwrap_or_default(),
    };
    imagemap_core::registry::validate_host("--host", &hosting.host)?;
    for (flag, value) in [
        ("--from-runtime", &hosting.host_from_container_runtime),
        ("--from-cluster-network", &hosting.host_from_cluster_network),
    ] {
        if !value.is_empty() {
            imagemap_core::registry::validate_host(flag, value)?;
        }
    }
    Ok(hosting)
}

/// Runs `registry` and `registry set`.
pub async fn run(global: &Global, args: &RegistryArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &RegistryArgs) -> Result<String> {
    match &args.action {
        None => {
            let cluster = Cluster::connect(global).await?;
            Ok(render(advertised(&cluster).await?.as_ref()))
        }
        Some(RegistryAction::Set(set)) => {
            let hosting = hosting_from_flags(set)?;
            let cluster = Cluster::connect(global).await?;
            let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), HOSTING_NAMESPACE);
            let cm = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": HOSTING_CONFIG_MAP, "namespace": HOSTING_NAMESPACE},
                "data": {HOSTING_KEY: hosting.to_yaml()},
            });
            let what = format!("configmap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP}");
            api.patch(HOSTING_CONFIG_MAP, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm))
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 403 => anyhow!(
                        "forbidden: cannot write {what}: {}: ask a cluster admin to run this command",
                        s.message
                    ),
                    e => crate::client::friendly(e, &what, HOSTING_NAMESPACE, &cluster.server),
                })?;
            Ok(format!("{what} advertised\n{}", render(Some(&hosting))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::distribution::tests::hosting;

    #[test]
    fn shows_the_advertisement_or_how_to_set_one() {
        let text = render(Some(&hosting()));
        assert!(text.contains("host:                      localhost:5001"), "{text}");
        assert!(text.contains("hostFromContainerRuntime:  kind-registry:5000"), "{text}");
        assert!(text.contains("hostFromClusterNetwork:    <none>"), "{text}");
        let text = render(None);
        assert!(text.starts_with("No registry is advertised"), "{text}");
        assert!(text.contains("kubectl imagemap registry set --host"), "{text}");
    }

    #[test]
    fn set_refuses_bad_hosts_naming_the_flag() {
        let parse = |args: &[&str]| match crate::cli::Cli::parse_from(
            ["kubectl-imagemap", "registry", "set"].iter().chain(args),
        )
        .command
        {
            crate::cli::Command::Registry(RegistryArgs { action: Some(RegistryAction::Set(s)) }) => s,
            _ => panic!("not registry set"),
        };
        let h = hosting_from_flags(&parse(&["--host", "localhost:5000", "--help-url", "https://x/"])).expect("valid");
        assert_eq!(h.runtime_host(), "localhost:5000");
        assert_eq!(h.help, "https://x/");
        let e = hosting_from_flags(&parse(&["--host", "team"])).expect_err("not a registry");
        assert!(e.to_string().starts_with("--host \"team\" is not a registry host"), "{e}");
        let e = hosting_from_flags(&parse(&["--host", "localhost:5000", "--from-runtime", "x"])).expect_err("bad");
        assert!(e.to_string().starts_with("--from-runtime \"x\""), "{e}");
    }
}
