//! The chart's certificates served for real by the webhook binary, and a release's life: install
//! (Pods swapped where served, left alone where not), upgrade (the CA kept), a new URL host (the
//! certificate reissued) and uninstall (nothing left).

use std::process::{Command, Stdio};

use base64::Engine as _;
use imagemap_e2e::helm::{
    chart_dir, create_built_map, create_labelled_namespace, fullname, get_json, helm_ok, is_gone, render,
    scoped_values, unique, values_file, ValuesFile, CHANGE_PATIENCE, TEST_LABEL,
};
use imagemap_e2e::kubectl::text;
use imagemap_e2e::local_webhook::{https_status, write_certificates, write_placeholder_certificates, LocalWebhook};
use imagemap_e2e::manifests::{one, the_webhook};
use imagemap_e2e::webhook::{container, dry_run_image, pod, pod_create_review, set_status, wait_for_image};
use imagemap_e2e::{shared, ControlPlane};
use serde_json::{json, Value};

use crate::OPT_OUT_LABEL;

/// The port in `webhook.url` where nothing calls it: the certificate the chart generates names
/// the URL's host only, so the webhook serving it may listen on any port.
const URL_PORT: u16 = 8443;

#[test]
fn the_generated_certificate_serves_the_service_names_and_the_url_host() {
    let plane = shared();
    let (release, ns) = ("certs", "imagemap-system");
    let name = fullname(release);
    let values = json!({
        "webhook": {"url": format!("https://127.0.0.1:{URL_PORT}/mutate")},
        "imagemapsFile": {"enabled": true, "maps": [
            {"metadata": {"name": "from-file"}, "spec": {"selector": "file-app"},
             "status": {"image": "registry.example/file-app:from-file"}}
        ]},
    });
    let objects = render(plane, release, ns, &values);
    let secret = one(&objects, "Secret");
    let dir = tempfile::Builder::new().prefix("imagemap-chart-certs-").tempdir().expect("a temporary folder");
    write_certificates(secret, dir.path());
    let maps = one(&objects, "ConfigMap")["data"]["imagemaps.yaml"].as_str().expect("maps").to_string();
    std::fs::write(dir.path().join("imagemaps.yaml"), maps).expect("write the maps file");
    assert_eq!(
        the_webhook(one(&objects, "MutatingWebhookConfiguration"))["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );

    // The webhook serves the chart's certificate and reads the chart's maps file; ready means
    // 127.0.0.1 (the URL's host) verified against the chart's CA.
    let maps_file = dir.path().join("imagemaps.yaml").display().to_string();
    let mut webhook = LocalWebhook::start(dir.path(), &["--no-cluster".into(), "--imagemaps-file".into(), maps_file]);
    webhook.wait_ready("127.0.0.1");
    let port = webhook.port();
    let ca = dir.path().join("ca.crt");
    for host in
        [name.clone(), format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")]
    {
        assert_eq!(https_status(&host, port, "/healthz", &ca), Ok(200), "TLS to {host}\n{}", webhook.log_tail());
    }
    // A name the certificate does not cover is refused: the checks above did verify.
    let other = format!("other.{ns}.svc");
    let refused = https_status(&other, port, "/healthz", &ca).expect_err("a name outside the certificate");
    assert!(refused.contains("certificate") || refused.contains("SSL"), "{refused}");

    // An AdmissionReview for a Pod naming the file's selector gets the swap.
    let review =
        pod_create_review("chart-file-maps", "dev", "admin", pod("dev", "web", &[container("web", "file-app")]));
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args(["--header", "Content-Type: application/json", "--data-binary", &review.to_string()])
        .arg(format!("https://127.0.0.1:{port}/mutate"))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "POST /mutate: {}", text(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("an AdmissionReview");
    assert_eq!(answer["response"]["uid"], "chart-file-maps");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .expect("base64 patch");
    assert!(text(&patch).contains("registry.example/file-app:from-file"), "{}", text(&patch));
    webhook.stop();
}

#[test]
fn an_installed_release_swaps_pods_keeps_its_ca_across_upgrades_and_uninstalls_cleanly() {
    let life = Life::install(shared());
    let served = life.swaps_pods_where_served();
    life.upgrade_keeps_the_certificate(&served);
    life.uninstall_leaves_nothing();
    life.pods_are_unchanged_after_uninstall(&served);
}

/// A release installed with `webhook.url` naming a locally started webhook, which serves the
/// certificate the chart generated.
struct Life<'a> {
    plane: &'a ControlPlane,
    chart: String,
    release: String,
    /// The chart's full name for the release.
    name: String,
    /// The release namespace, labelled for the release too.
    release_ns: String,
    /// [`TEST_LABEL`] for the release.
    labels: Value,
    values: ValuesFile,
    /// The chart-made Secret, as installed.
    secret: Value,
    webhook: LocalWebhook,
    // After `webhook`: the process is gone before its folder.
    _dir: tempfile::TempDir,
}

impl<'a> Life<'a> {
    /// Starts the webhook, installs the release with its URL, checks the configuration, and
    /// waits until the webhook serves the chart's certificate.
    fn install(plane: &'a ControlPlane) -> Life<'a> {
        let chart = chart_dir().display().to_string();
        let release = unique("life");
        let name = fullname(&release);
        let labels = json!({ TEST_LABEL: release });
        // The release namespace carries the label too: only its name keeps it unserved. Created
        // before the served namespace, so once the API server has seen the served one's labels it
        // has seen these (namespace events arrive in order).
        let release_ns = create_labelled_namespace(plane, "chart-rel", &labels);

        // The webhook first, so that the URL names the port it chose: with a certificate of the
        // test's own until the chart's exists; `--global-namespace` = the release namespace, so
        // that a map there is in the webhook's cache and applies everywhere it is called.
        let dir = tempfile::Builder::new().prefix("imagemap-chart-life-").tempdir().expect("a temporary folder");
        write_placeholder_certificates(dir.path());
        let kubeconfig = plane.kubeconfig_path().display().to_string();
        let mut webhook = LocalWebhook::start(
            dir.path(),
            &["--kubeconfig".into(), kubeconfig, "--global-namespace".into(), release_ns.clone()],
        );
        let url = format!("https://127.0.0.1:{}/mutate", webhook.port());
        let values = values_file(&scoped_values(&release, json!({"webhook": {"url": url}})));
        let notes = helm_ok(plane, &["install", &release, &chart, "--namespace", &release_ns, "-f", &values.path]);
        assert!(notes.contains("kubectl imagemap doctor"), "NOTES tell the admin to run doctor:\n{notes}");

        // The configuration points at the URL with the generated CA.
        let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
        assert_eq!(the_webhook(&config)["clientConfig"]["url"], url);
        let secret = get_json(plane, "secret", &format!("{name}-tls"), Some(&release_ns));
        assert_eq!(the_webhook(&config)["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);

        // The webhook serves the chart's certificate (reloaded from its folder): ready means
        // 127.0.0.1 verified against the chart's CA.
        write_certificates(&secret, dir.path());
        webhook.wait_ready("127.0.0.1");
        Life { plane, chart, release, name, release_ns, labels, values, secret, webhook, _dir: dir }
    }

    /// The webhook's log, for failures.
    fn log(&self) -> impl Fn() -> String + '_ {
        || self.webhook.log_tail()
    }

    /// Pods are swapped in a served namespace, and left alone when opted out or in the release
    /// namespace; returns the served namespace (its map `app` selects `chart-app`).
    fn swaps_pods_where_served(&self) -> String {
        let (plane, release_ns) = (self.plane, &self.release_ns);
        // A served namespace: a map with a status swaps Pods.
        let served = create_labelled_namespace(plane, "chart-served", &self.labels);
        create_built_map(plane, &served, "app", "chart-app", "registry.example/chart-app:v1");
        wait_for_image(plane, &served, "chart-app", "registry.example/chart-app:v1", CHANGE_PATIENCE, self.log());

        // A Pod with the opt-out label is left alone (same namespace, same map: the cache has it).
        let opted_out = dry_run_image(plane.kubectl_client(), &served, "chart-app", &json!({ OPT_OUT_LABEL: "true" }))
            .expect("dry run");
        assert_eq!(opted_out, "chart-app", "a Pod labelled {OPT_OUT_LABEL} is not served");

        // The release namespace is never served: its map applies globally (proven in the served
        // namespace), yet a Pod in the release namespace itself is left alone.
        create_built_map(plane, release_ns, "global", "chart-global", "registry.example/chart-global:v1");
        wait_for_image(plane, &served, "chart-global", "registry.example/chart-global:v1", CHANGE_PATIENCE, self.log());
        let in_release_ns =
            dry_run_image(plane.kubectl_client(), release_ns, "chart-global", &json!({})).expect("dry run");
        assert_eq!(in_release_ns, "chart-global", "the release namespace is excluded");

        // A namespace labelled with the opt-out label is not served; removing the label serves it again.
        plane.kubectl_ok(["label", "namespace", &served, &format!("{OPT_OUT_LABEL}=true")]);
        wait_for_image(plane, &served, "chart-app", "chart-app", CHANGE_PATIENCE, self.log());
        plane.kubectl_ok(["label", "namespace", &served, &format!("{OPT_OUT_LABEL}-")]);
        wait_for_image(plane, &served, "chart-app", "registry.example/chart-app:v1", CHANGE_PATIENCE, self.log());
        served
    }

    /// helm upgrade (a real change: 3 replicas) keeps the CA, the serving pair and the caBundle.
    fn upgrade_keeps_the_certificate(&self, served: &str) {
        let (plane, release, chart, name, release_ns) =
            (self.plane, &self.release, &self.chart, &self.name, &self.release_ns);
        let secret = &self.secret;
        helm_ok(
            plane,
            &["upgrade", release, chart, "--namespace", release_ns, "-f", &self.values.path, "--set", "replicaCount=3"],
        );
        let deployment = get_json(plane, "deployment", name, Some(release_ns));
        assert_eq!(deployment["spec"]["replicas"], 3, "the upgrade was applied");
        let upgraded = get_json(plane, "secret", &format!("{name}-tls"), Some(release_ns));
        for key in ["ca.crt", "tls.crt", "tls.key"] {
            assert_eq!(upgraded["data"][key], secret["data"][key], "{key} changed across helm upgrade");
        }
        let upgraded_config = get_json(plane, "mutatingwebhookconfiguration", name, None);
        assert_eq!(the_webhook(&upgraded_config)["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
        // ... and the API server still trusts the running webhook: a new build is swapped in.
        set_status(plane.kubectl_client(), served, "app", &json!({"image": "registry.example/chart-app:v2"}))
            .expect("set the ImageMap's status");
        wait_for_image(plane, served, "chart-app", "registry.example/chart-app:v2", CHANGE_PATIENCE, self.log());
    }

    /// helm uninstall removes the webhook configuration and everything else of the release.
    fn uninstall_leaves_nothing(&self) {
        let (plane, release, name, release_ns) = (self.plane, &self.release, &self.name, &self.release_ns);
        helm_ok(plane, &["uninstall", release, "--namespace", release_ns, "--wait", "--timeout", "60s"]);
        for (kind, namespace) in [
            ("mutatingwebhookconfiguration", None),
            ("clusterrole", None),
            ("clusterrolebinding", None),
            ("secret", Some(release_ns.as_str())),
        ] {
            let object = if kind == "secret" { format!("{name}-tls") } else { name.clone() };
            assert!(is_gone(plane, kind, &object, namespace), "{kind} {object} is left after helm uninstall");
        }
        let left = plane.kubectl_ok([
            "get",
            "deployments,services,serviceaccounts,poddisruptionbudgets,secrets,configmaps,roles,rolebindings",
            "--namespace",
            release_ns,
            "--selector",
            &format!("app.kubernetes.io/instance={release}"),
            "--output",
            "name",
        ]);
        assert_eq!(left.trim(), "", "objects left after helm uninstall");
        let left = plane.kubectl_ok([
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingadmissionpolicies,\
             validatingadmissionpolicybindings",
            "--selector",
            &format!("app.kubernetes.io/instance={release}"),
            "--output",
            "name",
        ]);
        assert_eq!(left.trim(), "", "cluster-wide objects left after helm uninstall");
    }

    /// Pods are created, unchanged, once the API server has dropped the configuration, and still
    /// with the webhook stopped.
    fn pods_are_unchanged_after_uninstall(self, served: &str) {
        let plane = self.plane;
        wait_for_image(plane, served, "chart-app", "chart-app", CHANGE_PATIENCE, self.log());
        let Life { webhook, _dir, .. } = self;
        webhook.stop();
        let after = pod(served, "after-uninstall", &[container("app", "chart-app")]);
        let created = plane
            .kubectl_client()
            .run_with_stdin(["create", "--output", "json", "-f", "-"], Some(&after.to_string()))
            .expect("kubectl runs");
        assert!(created.status.success(), "creating a Pod after uninstall: {}", text(&created.stderr));
        let created: Value = serde_json::from_slice(&created.stdout).expect("the created Pod");
        assert_eq!(created["spec"]["containers"][0]["image"], "chart-app");
    }
}

#[test]
fn a_new_url_host_reissues_the_generated_certificate_for_it() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    let release = unique("reissue");
    let name = fullname(&release);
    let ns = plane.create_namespace("chart-reissue");
    let by_ip = values_file(&scoped_values(
        &release,
        json!({"webhook": {"url": format!("https://127.0.0.1:{URL_PORT}/mutate")}}),
    ));
    helm_ok(plane, &["install", &release, &chart, "--namespace", &ns, "-f", &by_ip.path]);
    let first = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));

    let by_name = values_file(&scoped_values(
        &release,
        json!({"webhook": {"url": format!("https://localhost:{URL_PORT}/mutate")}}),
    ));
    helm_ok(plane, &["upgrade", &release, &chart, "--namespace", &ns, "-f", &by_name.path]);
    let second = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));
    assert_ne!(second["data"]["ca.crt"], first["data"]["ca.crt"], "a new certificate for the new host");
    let config = get_json(plane, "mutatingwebhookconfiguration", &name, None);
    assert_eq!(the_webhook(&config)["clientConfig"]["caBundle"], second["data"]["ca.crt"]);

    // The new pair serves `localhost` (a DNS SAN; ready means verified) to a client trusting the
    // new CA, and no longer 127.0.0.1.
    let dir = tempfile::Builder::new().prefix("imagemap-chart-reissue-").tempdir().expect("a temporary folder");
    write_certificates(&second, dir.path());
    let mut webhook = LocalWebhook::start(dir.path(), &["--no-cluster".into()]);
    webhook.wait_ready("localhost");
    let refused = https_status("127.0.0.1", webhook.port(), "/healthz", &dir.path().join("ca.crt"));
    assert!(refused.is_err(), "the reissued certificate still covers 127.0.0.1: {refused:?}\n{}", webhook.log_tail());
    webhook.stop();

    // A later upgrade with the same host keeps the reissued pair.
    helm_ok(plane, &["upgrade", &release, &chart, "--namespace", &ns, "-f", &by_name.path]);
    let third = get_json(plane, "secret", &format!("{name}-tls"), Some(&ns));
    assert_eq!(third["data"], second["data"]);
    helm_ok(plane, &["uninstall", &release, "--namespace", &ns]);
}
