//! `kubectl imagemap version`: the plugin's version and, with a cluster, the webhook's, read from
//! the `app.kubernetes.io/version` label of the Deployment behind the MutatingWebhookConfiguration
//! (the chart sets it to its appVersion). A cluster that cannot be reached or read is a note, not
//! an error; the two versions differing is a warning on standard error.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;

use crate::cli::{Global, VersionArgs};
use crate::client::Cluster;

/// This build's version: `IMAGEMAP_VERSION` at compile time (`make release VERSION=...` sets
/// it), else the workspace version.
pub const VERSION: &str = match option_env!("IMAGEMAP_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};

/// The label the chart puts on its Deployment, holding its appVersion.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// What the cluster says about the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Webhook {
    /// `--client`: not asked.
    Skipped,
    /// The Deployment serving the webhook, and its version label if it has one.
    Found {
        /// `NAMESPACE/NAME` of the Deployment.
        deployment: String,
        /// Its `app.kubernetes.io/version` label.
        version: Option<String>,
    },
    /// The cluster answered, but no webhook (or Deployment) was found: why.
    NotFound(String),
    /// No cluster, or no permission: why.
    Unavailable(String),
}

/// The text for standard output.
pub fn render(client: &str, webhook: &Webhook) -> String {
    let mut out = format!("Client Version: {client}\n");
    match webhook {
        Webhook::Skipped => {}
        Webhook::Found { deployment, version: Some(v) } => {
            out.push_str(&format!("Webhook Version: {v} (deployment {deployment})\n"));
        }
        Webhook::Found { deployment, version: None } => {
            out.push_str(&format!("Webhook Version: unknown (deployment {deployment} has no {VERSION_LABEL} label)\n"));
        }
        Webhook::NotFound(why) => out.push_str(&format!("Webhook Version: not installed ({why})\n")),
        Webhook::Unavailable(why) => out.push_str(&format!("Webhook Version: unknown ({why})\n")),
    }
    out
}

/// A warning when the webhook's version is known and differs from the plugin's.
pub fn skew_warning(client: &str, webhook: &Webhook) -> Option<String> {
    match webhook {
        Webhook::Found { version: Some(v), .. } if normalize(v) != normalize(client) => Some(format!(
            "warning: the plugin ({client}) and the webhook ({v}) differ: install the plugin of the webhook's release, \
             or upgrade the chart"
        )),
        _ => None,
    }
}

/// `v1.2.3` and `1.2.3` are the same version.
fn normalize(v: &str) -> &str {
    v.strip_prefix('v').unwrap_or(v)
}

/// Runs `version`: never fails because of the cluster.
pub async fn run(global: &Global, args: &VersionArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &VersionArgs) -> Result<String> {
    let webhook = if args.client {
        Webhook::Skipped
    } else {
        match tokio::time::timeout(Duration::from_secs(15), lookup(global, &args.webhook_config)).await {
            Ok(w) => w,
            Err(_) => Webhook::Unavailable("the cluster did not answer within 15s".into()),
        }
    };
    if let Some(w) = skew_warning(VERSION, &webhook) {
        eprintln!("{w}");
    }
    Ok(render(VERSION, &webhook))
}

/// A failed API call as a note: no permission, or no cluster.
fn unavailable(e: kube::Error, what: &str, server: &str) -> Webhook {
    match &e {
        kube::Error::Api(s) if s.code == 403 || s.code == 401 => {
            Webhook::Unavailable(format!("no permission to read {what}: {}", s.message))
        }
        kube::Error::Api(s) => Webhook::Unavailable(format!("cannot read {what}: {}", s.message)),
        _ => Webhook::Unavailable(format!("cannot reach the cluster at {server}: {e}")),
    }
}

/// Whether a webhook calls a Service (the chart's) rather than a URL.
fn service_of(hook: &MutatingWebhook) -> Option<(String, String)> {
    hook.client_config.service.as_ref().map(|s| (s.namespace.clone(), s.name.clone()))
}

/// The configuration named `name`, else (for the default name only) the one whose webhook names
/// contain "imagemap" and call a Service.
async fn lookup(global: &Global, name: &str) -> Webhook {
    let cluster = match Cluster::connect(global).await {
        Ok(c) => c,
        Err(e) => return Webhook::Unavailable(format!("no cluster: {e:#}")),
    };
    let server = cluster.server.clone();
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let named = match api.get_opt(name).await {
        Ok(c) => c,
        Err(e) => return unavailable(e, "MutatingWebhookConfigurations", &server),
    };
    let service = match named {
        Some(c) => match c.webhooks.iter().flatten().find_map(service_of) {
            Some(s) => s,
            None => return Webhook::NotFound(format!("MutatingWebhookConfiguration {name} calls no Service")),
        },
        None if name != crate::cli::DEFAULT_WEBHOOK_CONFIG => {
            return Webhook::NotFound(format!("no MutatingWebhookConfiguration {name}"));
        }
        None => {
            let configs = match api.list(&Default::default()).await {
                Ok(l) => l.items,
                Err(e) => return unavailable(e, "MutatingWebhookConfigurations", &server),
            };
            let found = configs
                .iter()
                .flat_map(|c| c.webhooks.iter().flatten())
                .filter(|h| h.name.contains("imagemap"))
                .find_map(service_of);
            match found {
                Some(s) => s,
                None => return Webhook::NotFound("no MutatingWebhookConfiguration with an imagemap webhook".into()),
            }
        }
    };
    deployment_behind(&cluster, &service.0, &service.1, &server).await
}

/// The Deployment in `namespace` whose Pod template the Service `name` selects.
async fn deployment_behind(cluster: &Cluster, namespace: &str, name: &str, server: &str) -> Webhook {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let selector: BTreeMap<String, String> = match services.get_opt(name).await {
        Ok(Some(s)) => s.spec.and_then(|s| s.selector).unwrap_or_default(),
        Ok(None) => return Webhook::NotFound(format!("the webhook's Service {namespace}/{name} does not exist")),
        Err(e) => return unavailable(e, &format!("Service {namespace}/{name}"), server),
    };
    if selector.is_empty() {
        return Webhook::NotFound(format!("the webhook's Service {namespace}/{name} has no selector"));
    }
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
    let list = match deployments.list(&Default::default()).await {
        Ok(l) => l.items,
        Err(e) => return unavailable(e, &format!("Deployments in {namespace}"), server),
    };
    let found = list.into_iter().find(|d| {
        let labels = d.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
        labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
    });
    match found {
        Some(d) => Webhook::Found {
            deployment: format!("{namespace}/{}", d.metadata.name.as_deref().unwrap_or("")),
            version: d.metadata.labels.as_ref().and_then(|l| l.get(VERSION_LABEL)).cloned(),
        },
        None => Webhook::NotFound(format!("no Deployment in {namespace} behind Service {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(v: Option<&str>) -> Webhook {
        Webhook::Found { deployment: "imagemap-system/imagemap".into(), version: v.map(String::from) }
    }

    #[test]
    fn client_only_prints_one_line() {
        assert_eq!(render("1.2.3", &Webhook::Skipped), "Client Version: 1.2.3\n");
    }

    #[test]
    fn found_webhook_prints_its_version_and_deployment() {
        assert_eq!(
            render("1.2.3", &found(Some("1.2.3"))),
            "Client Version: 1.2.3\nWebhook Version: 1.2.3 (deployment imagemap-system/imagemap)\n"
        );
        assert_eq!(skew_warning("1.2.3", &found(Some("1.2.3"))), None);
        assert_eq!(skew_warning("1.2.3", &found(Some("v1.2.3"))), None);
    }

    #[test]
    fn differing_versions_warn() {
        let w = skew_warning("1.2.3", &found(Some("1.3.0"))).expect("a warning");
        assert!(w.contains("(1.2.3)") && w.contains("(1.3.0)"), "{w}");
    }

    #[test]
    fn unknown_versions_do_not_warn() {
        for w in
            [found(None), Webhook::Skipped, Webhook::NotFound("x".into()), Webhook::Unavailable("no cluster: x".into())]
        {
            assert_eq!(skew_warning("1.2.3", &w), None, "{w:?}");
        }
    }

    #[test]
    fn missing_label_and_missing_cluster_are_notes() {
        assert!(render("1", &found(None)).ends_with(
            "Webhook Version: unknown (deployment imagemap-system/imagemap has no app.kubernetes.io/version label)\n"
        ));
        assert_eq!(
            render("1", &Webhook::Unavailable("no cluster: no kubeconfig".into())),
            "Client Version: 1\nWebhook Version: unknown (no cluster: no kubeconfig)\n"
        );
        assert_eq!(
            render("1", &Webhook::NotFound("no MutatingWebhookConfiguration imagemap".into())),
            "Client Version: 1\nWebhook Version: not installed (no MutatingWebhookConfiguration imagemap)\n"
        );
    }

    #[test]
    fn version_is_never_empty() {
        assert!(!VERSION.is_empty());
    }
}
