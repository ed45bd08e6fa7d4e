//! `kubectl imagemap doctor`: checks an installation end to end, one pass/fail line per check,
//! each failure with its fix; a final server-side dry-run proves the API server reaches the
//! webhook and the swap happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use imagemap_core::types::{ImageMap, ImageMapSpec};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{DoctorArgs, Global};
use crate::client::Cluster;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Pass(String),
    /// Works, but worth knowing.
    Warn(String),
    /// Broken, with the fix.
    Fail(String, String),
}

/// Renders a check line (and its fix) as the report shows it.
pub fn line(name: &str, v: &Verdict) -> String {
    match v {
        Verdict::Pass(d) => format!("[PASS] {name}: {d}\n"),
        Verdict::Warn(d) => format!("[WARN] {name}: {d}\n"),
        Verdict::Fail(d, fix) => format!("[FAIL] {name}: {d}\n       fix: {fix}\n"),
    }
}

/// Whether a label selector selects `labels` (matchLabels and matchExpressions).
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The checks' lines, written as each check ends (a slow one shows where it is).
struct Report<'o> {
    failed: usize,
    out: &'o mut dyn std::io::Write,
}

impl Report<'_> {
    fn add(&mut self, name: &str, v: Verdict) {
        if matches!(v, Verdict::Fail(..)) {
            self.failed += 1;
        }
        // A line that cannot be written (closed pipe) is no reason to stop the checks.
        let _ = super::write(self.out, &line(name, &v));
    }
}

/// Runs `doctor`.
pub async fn run(global: &Global, args: &DoctorArgs, out: &mut dyn std::io::Write) -> Result<()> {
    let mut r = Report { failed: 0, out };
    let cluster = match Cluster::connect(global).await {
        Ok(c) => c,
        Err(e) => {
            r.add("kubeconfig", Verdict::Fail(format!("{e:#}"), "point --kubeconfig/--context at the cluster".into()));
            bail!("1 check failed");
        }
    };
    match cluster.client.apiserver_version().await {
        Ok(v) => {
            r.add("API server", Verdict::Pass(format!("{} reachable, Kubernetes {}", cluster.server, v.git_version)))
        }
        Err(e) => {
            r.add(
                "API server",
                Verdict::Fail(
                    format!("cannot reach {}: {e}", cluster.server),
                    "check that the cluster runs and --kubeconfig/--context point at it".into(),
                ),
            );
            bail!("1 check failed");
        }
    }
    check_crd(&cluster, &mut r).await;
    let hook = find_webhook(&cluster, args, &mut r).await;
    if let Some((config, hook)) = &hook {
        check_endpoint(&cluster, hook, &mut r).await;
        check_policy(&cluster, config, hook, &mut r).await;
        let maps_here =
            cluster.maps().list(&kube::api::ListParams::default().limit(1)).await.map(|l| !l.items.is_empty());
        r.add("scope", scope_verdict(hook, &cluster.namespace, maps_here.ok()));
        if !args.no_dry_run {
            check_dry_run(&cluster, &mut r).await;
        }
    }
    if !args.no_registry {
        check_registry(&cluster, &mut r).await;
    }
    if r.failed > 0 {
        bail!("{} check(s) failed", r.failed);
    }
    super::write(r.out, "all checks passed\n")
}

/// The advertised registry (kube-public/local-registry-hosting): none is fine (a WARN: builds
/// need --registry); a malformed one fails; a well-formed one must answer the registry API.
async fn check_registry(cluster: &Cluster, r: &mut Report<'_>) {
    match super::registry::advertised(cluster).await {
        Ok(None) => r.add(
            "registry",
            Verdict::Warn(format!(
                "the cluster advertises no registry; `kubectl imagemap build` needs --registry, or run `{}`",
                super::registry::SET_HINT
            )),
        ),
        // Malformed: builds cannot use it.
        Err(e) if e.downcast_ref::<imagemap_core::registry::RegistryError>().is_some() => r.add(
            "registry",
            Verdict::Fail(format!("{e:#}"), format!("rewrite the advertisement: `{}`", super::registry::SET_HINT)),
        ),
        // Unreadable (RBAC): only builds that rely on it are affected.
        Err(e) => r.add("registry", Verdict::Warn(format!("cannot read the advertised registry: {e:#}"))),
        Ok(Some(hosting)) => r.add(
            "registry",
            registry_verdict(&hosting, crate::distribution::ping(&hosting.host, Some(&hosting)).await),
        ),
    }
}

fn registry_verdict(
    hosting: &imagemap_core::registry::LocalRegistryHosting,
    ping: std::result::Result<String, String>,
) -> Verdict {
    match ping {
        Ok(answer) => Verdict::Pass(format!(
            "advertised host {} (the node pulls from {}): {answer}",
            hosting.host,
            hosting.runtime_host()
        )),
        Err(e) => Verdict::Fail(
            format!("advertised host {}: {e}", hosting.host),
            "start the registry, or advertise the one you use: `kubectl imagemap registry set --host HOST`".into(),
        ),
    }
}

async fn check_crd(cluster: &Cluster, r: &mut Report<'_>) {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let fix = "install it: `helm install imagemap charts/imagemap` or `kubectl apply -f charts/imagemap/crds/`";
    match crds.get_opt("imagemaps.tilt.dev").await {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                r.add("CRD", Verdict::Pass("imagemaps.tilt.dev installed and established".into()));
            } else {
                r.add(
                    "CRD",
                    Verdict::Fail(
                        "imagemaps.tilt.dev exists but is not established".into(),
                        "check `kubectl describe crd imagemaps.tilt.dev`".into(),
                    ),
                );
            }
        }
        Ok(None) => r.add("CRD", Verdict::Fail("imagemaps.tilt.dev is not installed".into(), fix.into())),
        Err(e) => r.add(
            "CRD",
            Verdict::Fail(
                format!("cannot read CRDs: {e}"),
                "run doctor with rights to read customresourcedefinitions".into(),
            ),
        ),
    }
}

async fn find_webhook(
    cluster: &Cluster,
    args: &DoctorArgs,
    r: &mut Report<'_>,
) -> Option<(MutatingWebhookConfiguration, MutatingWebhook)> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let fix = "install the chart (`helm install imagemap charts/imagemap`) or register the webhook (see README)";
    let configs = match api.list(&Default::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            r.add(
                "webhook configuration",
                Verdict::Fail(
                    format!("cannot list MutatingWebhookConfigurations: {e}"),
                    "run doctor with rights to read them".into(),
                ),
            );
            return None;
        }
    };
    let found = configs.into_iter().find_map(|c| {
        let name = c.metadata.name.clone().unwrap_or_default();
        let wanted = match &args.webhook_config {
            Some(w) => *w == name,
            None => true,
        };
        let hook =
            c.webhooks.iter().flatten().find(|h| args.webhook_config.is_some() || h.name.contains("imagemap")).cloned();
        if wanted {
            hook.map(|h| (c, h))
        } else {
            None
        }
    });
    match &found {
        Some((c, h)) => r.add(
            "webhook configuration",
            Verdict::Pass(format!("{} (webhook {})", c.metadata.name.as_deref().unwrap_or(""), h.name)),
        ),
        None => r.add(
            "webhook configuration",
            Verdict::Fail("no MutatingWebhookConfiguration with an imagemap webhook".into(), fix.into()),
        ),
    }
    found
}

async fn check_endpoint(cluster: &Cluster, hook: &MutatingWebhook, r: &mut Report<'_>) {
    let ca = hook.client_config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
    if let Some(url) = &hook.client_config.url {
        match probe_url(url, &ca).await {
            Ok(days) => {
                let v = if days < 14 {
                    Verdict::Warn(format!(
                        "caBundle verifies the serving certificate of {url}, which expires in {days} days"
                    ))
                } else {
                    Verdict::Pass(format!(
                        "caBundle verifies the serving certificate of {url}; it expires in {days} days"
                    ))
                };
                r.add("certificate", v);
                r.add("endpoint", Verdict::Pass(format!("{url} answers /healthz")));
            }
            Err(ProbeError::Tls(e)) => {
                r.add("certificate", Verdict::Fail(format!("caBundle does not verify the serving certificate of {url}: {e}"), "set caBundle to the CA that signed the webhook's certificate (helm upgrade, or re-register the webhook)".into()));
            }
            Err(ProbeError::Down(e)) => {
                r.add(
                    "endpoint",
                    Verdict::Fail(
                        format!("{url} does not answer: {e}"),
                        "start the webhook (check its logs) or fix clientConfig.url".into(),
                    ),
                );
            }
        }
    } else if let Some(svc) = &hook.client_config.service {
        let port = svc.port.unwrap_or(443);
        let ns = &svc.namespace;
        let path = format!("/api/v1/namespaces/{ns}/services/https:{}:{port}/proxy/healthz", svc.name);
        let reply = match http_get(&path) {
            Ok(req) => cluster.client.request_text(req).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the proxy path {path:?} is not a valid request path: {e}")),
        };
        match reply {
            Ok(body) => r.add(
                "endpoint",
                Verdict::Pass(format!("service {ns}/{} answers /healthz ({})", svc.name, body.trim())),
            ),
            Err(e) => r.add(
                "endpoint",
                Verdict::Fail(
                    format!("service {ns}/{} does not answer through the API server: {e}", svc.name),
                    format!("check `kubectl -n {ns} get pods,endpoints` and the webhook's logs"),
                ),
            ),
        }
        if ca.is_empty() {
            r.add(
                "certificate",
                Verdict::Fail(
                    "the webhook has no caBundle".into(),
                    "set caBundle (the chart does this) or install cert-manager's CA injector".into(),
                ),
            );
        } else {
            r.add(
                "certificate",
                Verdict::Warn(
                    "caBundle present; the serving certificate is verified by the dry-run check below".into(),
                ),
            );
        }
    }
}

fn http_get(path: &str) -> Result<http::Request<Vec<u8>>, http::Error> {
    http::Request::get(path).body(Vec::new())
}

async fn check_policy(
    cluster: &Cluster,
    config: &MutatingWebhookConfiguration,
    hook: &MutatingWebhook,
    r: &mut Report<'_>,
) {
    let _ = config;
    match hook.failure_policy.as_deref() {
        Some("Fail") => {
            r.add("failurePolicy", Verdict::Warn("Fail: Pods cannot be created while the webhook is down".into()))
        }
        _ => r.add("failurePolicy", Verdict::Pass("Ignore: Pods still create when the webhook is down".into())),
    }
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let labels_of = |ns: &str| {
        let mut l = BTreeMap::new();
        l.insert("kubernetes.io/metadata.name".to_string(), ns.to_string());
        l
    };
    let system = ["kube-system", "kube-public", "kube-node-lease"];
    let served_system: Vec<&str> =
        system.iter().copied().filter(|ns| selects(hook.namespace_selector.as_ref(), &labels_of(ns))).collect();
    if served_system.is_empty() {
        r.add(
            "namespace exclusions",
            Verdict::Pass("kube-system, kube-public and kube-node-lease are excluded".into()),
        );
    } else {
        r.add("namespace exclusions", Verdict::Warn(format!("the webhook also serves {}", served_system.join(", "))));
    }
    let ns = &cluster.namespace;
    let labels = match namespaces.get_opt(ns).await {
        Ok(Some(n)) => n.metadata.labels.unwrap_or_default(),
        _ => labels_of(ns),
    };
    if selects(hook.namespace_selector.as_ref(), &labels) {
        r.add("namespace", Verdict::Pass(format!("{ns} is served by the webhook")));
    } else {
        r.add(
            "namespace",
            Verdict::Fail(
                format!("{ns} is not served: its labels do not match the webhook's namespaceSelector"),
                format!("remove the opt-out label from namespace {ns} (see `kubectl get ns {ns} --show-labels`)"),
            ),
        );
    }
}

/// Whether the webhook's scope (the `imagemap-scope` match condition its controller keeps)
/// includes `namespace`; `maps_here` says whether the namespace holds ImageMaps (unknown: `None`).
fn scope_verdict(hook: &MutatingWebhook, namespace: &str, maps_here: Option<bool>) -> Verdict {
    let condition = hook.match_conditions.iter().flatten().find(|c| c.name == imagemap_core::scope::SCOPE_CONDITION);
    let Some(condition) = condition else {
        return Verdict::Pass("not scoped: every namespace the selector allows calls the webhook".into());
    };
    if imagemap_core::scope::condition_includes(&condition.expression, namespace) {
        return Verdict::Pass(format!("{namespace} holds ImageMaps and is in the webhook's scope"));
    }
    match maps_here {
        Some(true) => Verdict::Fail(
            format!("{namespace} holds ImageMaps but the webhook's scope ({}) leaves it out", condition.expression),
            "check that the webhook's controller runs and leads (its logs, the Lease) and that its \
             --webhook-configuration names this configuration"
                .into(),
        ),
        Some(false) => Verdict::Pass(format!(
            "{namespace} holds no ImageMap, so its Pods do not call the webhook (the scope widens when one is created)"
        )),
        None => Verdict::Warn(format!("{namespace} is outside the webhook's scope; could not list its ImageMaps")),
    }
}

async fn check_dry_run(cluster: &Cluster, r: &mut Report<'_>) {
    let name = format!("imagemap-doctor-{}", std::process::id());
    let selector = format!("imagemap-doctor/probe-{}", std::process::id());
    let target = format!("imagemap-doctor/probe-{}:swapped", std::process::id());
    let maps = cluster.maps();
    let map = ImageMap::new(&name, ImageMapSpec { selector: selector.clone(), ..Default::default() });
    if let Err(e) = maps.create(&PostParams::default(), &map).await {
        r.add(
            "dry-run swap",
            Verdict::Fail(
                format!("cannot create a temporary ImageMap: {e}"),
                "run doctor with rights to create ImageMaps, or pass --no-dry-run".into(),
            ),
        );
        return;
    }
    let patch = json!({"status": {"image": target}});
    let mut verdict = Verdict::Fail(
        "a server-side dry-run Pod was not swapped within 20s".into(),
        "check the webhook's logs and that the API server can reach it (clientConfig)".into(),
    );
    if maps.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let pod: Pod = serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{name}-probe")},
                "spec": {"containers": [{"name": "probe", "image": selector}]}}),
            )
            .unwrap_or_default();
            match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
                Ok(p) => {
                    let image =
                        p.spec.and_then(|s| s.containers.first().and_then(|c| c.image.clone())).unwrap_or_default();
                    if image == target {
                        verdict = Verdict::Pass("a server-side dry-run Pod create was swapped by the webhook".into());
                        break;
                    }
                }
                Err(e) => {
                    verdict = Verdict::Fail(
                        format!("dry-run Pod create failed: {e}"),
                        "check the webhook configuration's failurePolicy and the webhook's logs".into(),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let _ = maps.delete(&name, &DeleteParams::default()).await;
    r.add("dry-run swap", verdict);
}

enum ProbeError {
    Tls(String),
    Down(String),
}

/// The certificates of a caBundle; a PEM block that does not decode is an error, not skipped.
fn ca_certificates(ca_pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("caBundle holds a broken PEM block: {}", imagemap_cluster::pem::describe_error(&e)))?;
    if certs.is_empty() {
        return Err("caBundle holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Connects to `url` trusting only `ca_pem`; returns days until the leaf certificate expires
/// after checking that `/healthz` answers.
async fn probe_url(url: &str, ca_pem: &[u8]) -> std::result::Result<i64, ProbeError> {
    let parsed: http::Uri = url.parse().map_err(|e| ProbeError::Down(format!("invalid URL: {e}")))?;
    let host = parsed.host().unwrap_or("").trim_matches(['[', ']']).to_string();
    let port = parsed.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca_certificates(ca_pem).map_err(ProbeError::Tls)? {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ProbeError::Tls("caBundle holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| ProbeError::Down(e.to_string()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| ProbeError::Down("connection timed out".into()))?
        .map_err(|e| ProbeError::Down(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| ProbeError::Down("TLS handshake timed out".into()))?
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let days = x509_parser::parse_x509_certificate(&leaf)
        .map(|(_, cert)| (cert.validity().not_after.timestamp() - Timestamp::now().as_second()) / 86_400)
        .unwrap_or(0);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|e| ProbeError::Down(e.to_string()))?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
    if !reply.starts_with(b"HTTP/1.1 200") {
        return Err(ProbeError::Down(format!(
            "/healthz answered {:?}",
            String::from_utf8_lossy(&reply).lines().next().unwrap_or("")
        )));
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors_evaluate_like_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "a")]).into_iter().collect()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["kube-system".into()]),
                },
                LabelSelectorRequirement {
                    key: "imagemap.tilt.dev/opt-out".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(selects(Some(&sel), &labels(&[("team", "a"), ("kubernetes.io/metadata.name", "dev")])));
        assert!(!selects(Some(&sel), &labels(&[("team", "a"), ("kubernetes.io/metadata.name", "kube-system")])));
        assert!(!selects(Some(&sel), &labels(&[("team", "a"), ("imagemap.tilt.dev/opt-out", "true")])));
        assert!(!selects(Some(&sel), &labels(&[("team", "b")])));
        assert!(selects(None, &labels(&[])));
    }

    #[test]
    fn ca_bundle_blocks_that_do_not_decode_are_reported() {
        let good = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        assert_eq!(ca_certificates(good.as_bytes()).expect("decodes").len(), 1);
        let broken = format!("{good}-----BEGIN CERTIFICATE-----\nA!EC\n-----END CERTIFICATE-----\n");
        let e = ca_certificates(broken.as_bytes()).expect_err("bad base64");
        assert!(e.starts_with("caBundle holds a broken PEM block: the block is not valid base64"), "{e}");
        let cut = format!("{good}-----BEGIN CERTIFICATE-----\nAAEC\n");
        let e = ca_certificates(cut.as_bytes()).expect_err("no END line");
        assert_eq!(e, "caBundle holds a broken PEM block: the CERTIFICATE block has no END line");
        assert_eq!(ca_certificates(b"not PEM").expect_err("empty"), "caBundle holds no PEM certificate");
    }

    #[test]
    fn the_registry_check_fails_when_the_advertised_host_does_not_answer() {
        let hosting =
            imagemap_core::registry::LocalRegistryHosting { host: "localhost:5000".into(), ..Default::default() };
        let v = registry_verdict(&hosting, Ok("http://localhost:5000/v2/ answers as a registry".into()));
        assert_eq!(
            v,
            Verdict::Pass(
                "advertised host localhost:5000 (the node pulls from localhost:5000): http://localhost:5000/v2/ answers as a registry"
                    .into()
            )
        );
        let v = registry_verdict(&hosting, Err("http://localhost:5000/v2/ does not answer: refused".into()));
        assert!(
            matches!(&v, Verdict::Fail(d, fix) if d.contains("does not answer") && fix.contains("registry set")),
            "{v:?}"
        );
    }

    #[test]
    fn failures_print_their_fix() {
        assert_eq!(
            line("CRD", &Verdict::Fail("missing".into(), "install it".into())),
            "[FAIL] CRD: missing\n       fix: install it\n"
        );
        assert_eq!(line("CRD", &Verdict::Pass("ok".into())), "[PASS] CRD: ok\n");
    }

    #[test]
    fn the_scope_check_fails_only_for_a_namespace_with_maps_left_out() {
        use k8s_openapi::api::admissionregistration::v1::MatchCondition;
        let scoped = |expression: &str| MutatingWebhook {
            match_conditions: Some(vec![MatchCondition {
                name: imagemap_core::scope::SCOPE_CONDITION.into(),
                expression: expression.into(),
            }]),
            ..Default::default()
        };
        assert!(matches!(scope_verdict(&MutatingWebhook::default(), "dev", Some(true)), Verdict::Pass(_)));
        assert!(matches!(scope_verdict(&scoped("request.namespace in ['dev']"), "dev", Some(true)), Verdict::Pass(_)));
        assert!(matches!(scope_verdict(&scoped("request.namespace in ['qa']"), "dev", Some(true)), Verdict::Fail(..)));
        assert!(matches!(scope_verdict(&scoped("false"), "dev", Some(false)), Verdict::Pass(_)));
        assert!(matches!(scope_verdict(&scoped("false"), "dev", None), Verdict::Warn(_)));
    }
}
