//! Connecting to the cluster the way kubectl does, and errors that name the fix.

use anyhow::{anyhow, Context, Result};
use imagemap_core::types::ImageMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::cli::Global;

/// A client plus the namespace commands act in.
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// The API server URL, for messages.
    pub server: String,
}

impl Cluster {
    /// Connects with `--kubeconfig`/`--context`/`-n`, else `$KUBECONFIG` or `~/.kube/config`.
    pub async fn connect(global: &Global) -> Result<Cluster> {
        let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
        let config = match &global.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}: pass a valid --kubeconfig", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| anyhow!("no usable kubeconfig ({e}): set KUBECONFIG or pass --kubeconfig/--context"))?;
        let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = crate::transport::client(config)?;
        Ok(Cluster { client, namespace, server })
    }

    /// ImageMaps in the current namespace.
    pub fn maps(&self) -> Api<ImageMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// ImageMaps in `namespace`.
    pub fn maps_in(&self, namespace: &str) -> Api<ImageMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Turns a kube error into a message that says what to do.
    pub fn explain_error(&self, e: kube::Error, what: &str) -> anyhow::Error {
        friendly(e, what, &self.namespace, &self.server)
    }
}

/// A message for a failed API call on `what` (e.g. `imagemap "app"`).
pub fn friendly(e: kube::Error, what: &str, namespace: &str, server: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(status) if status.code == 404 && status.reason != "NotFound" => crd_missing(),
        kube::Error::Api(status) if status.code == 404 && status.message.contains("the server could not find the requested resource") => {
            crd_missing()
        }
        kube::Error::Api(status) if status.code == 404 && what.starts_with("imagemap \"") => {
            anyhow!("{what} not found in namespace {namespace:?}: list them with `kubectl imagemap list -n {namespace}`")
        }
        kube::Error::Api(status) if status.code == 404 => anyhow!("{what} not found in namespace {namespace:?}"),
        kube::Error::Api(status) if status.code == 403 => {
            anyhow!("forbidden: {}: ask for RBAC access to imagemaps.tilt.dev in {namespace:?}", status.message)
        }
        kube::Error::Api(status) => anyhow!("{what}: {} ({})", status.message, status.reason),
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
            "cannot reach the API server at {server}: {e}; check that the cluster is running and --kubeconfig/--context point at it"
        ),
        _ => anyhow!("{what}: {e}"),
    }
}

/// The error for a cluster without the ImageMap CRD.
pub fn crd_missing() -> anyhow::Error {
    anyhow!(
        "the ImageMap CRD (imagemaps.tilt.dev) is not installed in this cluster: install it with \
         `helm install imagemap charts/imagemap` or `kubectl apply -f charts/imagemap/crds/`"
    )
}
