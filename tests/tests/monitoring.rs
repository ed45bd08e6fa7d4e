//! The chart's monitoring: the PrometheusRule (`metrics.prometheusRule`) and the Grafana
//! dashboard (`metrics.dashboard`), rendered with `helm template`. The rules pass `promtool check
//! rules`; each alert fires on synthetic series and clears again under `promtool test rules`
//! (promtool built at a pinned version by `tests/controlplane/build.sh`); every `imagemap_*`
//! metric the rules and the dashboard query is one that a running admission server or controller
//! exports (scraped over HTTPS). Also the chart's other operational checks: the `helm test`
//! hooks and the check they run (`imagemap-webhook check`, here against a webhook registered
//! with the control plane; `in_cluster.rs` runs `helm test` itself), and the Kubernetes versions
//! the chart needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use imagemap_e2e::binaries::{bin_dir, workspace_root};
use imagemap_e2e::poll;
use imagemap_e2e::webhook::{shared_webhook, workspace_binary, Webhook, WebhookOptions};
use serde_json::{json, Value};

const RELEASE: &str = "mon";
const NAMESPACE: &str = "monitoring";
const FULLNAME: &str = "mon-imagemap";
const WEBHOOK_NAME: &str = "pods.imagemap.tilt.dev";
const RUNBOOK: &str = "https://github.com/imagemap/imagemap/blob/main/docs/runbook.md";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tool(name: &str) -> PathBuf {
    let dir = bin_dir().unwrap_or_else(|e| panic!("the control-plane binaries: {e:#}"));
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run tests/controlplane/build.sh", path.display());
    path
}

/// `helm4 template` of the chart with `--set` values and extra flags; any outcome.
fn helm_template(args: &[&str]) -> Output {
    let home = tempfile::Builder::new().prefix("imagemap-monitoring-helm-").tempdir().expect("a temporary folder");
    let chart = workspace_root().join("charts/imagemap");
    Command::new(tool("helm4"))
        .args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE])
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("helm4 runs")
}

/// The objects `helm template` renders with `sets` (`key=value`).
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = Vec::new();
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm_template(&args);
    assert!(out.status.success(), "helm template {sets:?} failed:\n{}", text(&out.stderr));
    text(&out.stdout)
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The rule groups of the rendered PrometheusRule, as a promtool rule file (`{groups: ...}`).
fn rule_file(sets: &[&str]) -> Value {
    let objects = render(sets);
    let rule = find(&objects, "PrometheusRule", FULLNAME);
    json!({"groups": rule["spec"]["groups"]})
}

/// Every alert rule of a rule file.
fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn alert_names(rules: &Value) -> BTreeSet<String> {
    alerts(rules).iter().filter_map(|r| r["alert"].as_str().map(String::from)).collect()
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new(tool("promtool")).args(args).current_dir(dir).stdin(Stdio::null()).output().expect("promtool runs")
}

const WEBHOOK_MODE: &[&str] = &[
    "metrics.prometheusRule.enabled=true",
    "controller.restartOnRebuild=true",
    "metrics.prometheusRule.alertLabels.team=platform",
];
const POLICY_MODE: &[&str] = &["metrics.prometheusRule.enabled=true", "mode=policy"];

#[test]
fn the_alert_rules_pass_promtool_check_and_link_their_runbook_section() {
    let runbook = std::fs::read_to_string(workspace_root().join("docs/runbook.md")).expect("docs/runbook.md");
    let dir = tempfile::Builder::new().prefix("imagemap-rules-").tempdir().expect("a temporary folder");
    let every = [
        "ImagemapWebhookDown",
        "ImagemapWebhookFailingOpen",
        "ImagemapWebhookRejections",
        "ImagemapWebhookLatencyNearTimeout",
        "ImagemapReviewsSlow",
        "ImagemapReviewsRefusedBusy",
        "ImagemapTLSReloadFailing",
        "ImagemapCacheStale",
        "ImagemapNoControllerLeading",
        "ImagemapStalePods",
    ];
    let policy = ["ImagemapTLSReloadFailing", "ImagemapCacheStale", "ImagemapNoControllerLeading"];
    let no_controller = &["metrics.prometheusRule.enabled=true", "controller.scopeWebhook=false"][..];
    for (sets, expected) in
        [(WEBHOOK_MODE, every.to_vec()), (POLICY_MODE, policy.to_vec()), (no_controller, every[..8].to_vec())]
    {
        let rules = rule_file(sets);
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(alert_names(&rules), expected, "the alerts rendered with {sets:?}");
        let file = dir.path().join("rules.json");
        std::fs::write(&file, rules.to_string()).expect("write the rule file");
        let out = promtool(dir.path(), &["check", "rules", "rules.json"]);
        assert!(out.status.success(), "promtool check rules {sets:?}:\n{}{}", text(&out.stdout), text(&out.stderr));
        for rule in alerts(&rules) {
            let name = rule["alert"].as_str().expect("an alert name");
            let anchor = name.to_lowercase();
            assert_eq!(rule["annotations"]["runbook_url"], format!("{RUNBOOK}#{anchor}"), "{name}");
            assert!(runbook.contains(&format!("\n## {name}\n")), "docs/runbook.md has no section {name}");
            for key in ["summary", "description"] {
                assert!(rule["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{name} has a {key}");
            }
            assert!(["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")), "{rule}");
        }
    }
    // The base URL is a value; the release's namespace and jobs select the series.
    let custom = rule_file(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.runbookBaseUrl=https://wiki.example.com/imagemap",
    ]);
    let down = alerts(&custom).into_iter().find(|r| r["alert"] == "ImagemapWebhookDown").expect("the down alert");
    assert_eq!(down["annotations"]["runbook_url"], "https://wiki.example.com/imagemap#imagemapwebhookdown");
    assert!(down["expr"]
        .as_str()
        .is_some_and(|e| e.contains(&format!("job=\"{FULLNAME}-metrics\",namespace=\"{NAMESPACE}\""))));
    let chosen =
        rule_file(&["metrics.prometheusRule.enabled=true", "metrics.prometheusRule.webhookSelector=job=\"imagemap\""]);
    let down = alerts(&chosen).into_iter().find(|r| r["alert"] == "ImagemapWebhookDown").expect("the down alert");
    assert_eq!(down["expr"], "(sum(up{job=\"imagemap\"}) or vector(0)) < 1");
}

/// Label matchers of a series of the admission servers' (`webhook`) or the controller's job.
fn job(controller: bool, policy: bool) -> String {
    let job =
        if controller && !policy { format!("{FULLNAME}-controller-metrics") } else { format!("{FULLNAME}-metrics") };
    format!("job=\"{job}\",namespace=\"{NAMESPACE}\",instance=\"10.0.0.1:8443\"")
}

/// The buckets of a histogram whose observations are all fast, then all slow (from minute 11
/// to 31: only the buckets at or above `slow_from` grow), then fast again.
fn histogram(name: &str, labels: &str, bounds: &[&str], slow_from: &str) -> Vec<(String, String)> {
    let mut slow = false;
    bounds
        .iter()
        .map(|le| {
            slow |= *le == slow_from;
            let values = if slow { "0+10x61" } else { "0+10x10 100x20 100+10x30" };
            (format!("{name}{{{labels},le=\"{le}\"}}"), values.to_string())
        })
        .collect()
}

/// Series (name with labels, promtool values; one sample a minute) under which `alert` is quiet
/// at minute 5, firing at `fire` and quiet again at minute 55, and `fire`.
fn scenario(alert: &str, policy: bool) -> (Vec<(String, String)>, u32) {
    let hook = job(false, policy);
    let controller = job(true, policy);
    let api = format!("name=\"{WEBHOOK_NAME}\",type=\"admit\",operation=\"CREATE\"");
    let s = |series: String, values: &str| (series, values.to_string());
    // Up, then down (or broken) from minute 11 to 31, then up again.
    let dip = "1x10 0x20 1x30";
    let spike = "0x10 1x20 0x30";
    // A counter that grows from minute 11 to 31 only.
    let burst = "0x10 1+1x20 21x30";
    match alert {
        "ImagemapWebhookDown" => (vec![s(format!("up{{{hook}}}"), dip)], 25),
        "ImagemapWebhookFailingOpen" => {
            (vec![s(format!("apiserver_admission_webhook_fail_open_count{{name=\"{WEBHOOK_NAME}\",type=\"admit\"}}"), burst)], 25)
        }
        "ImagemapWebhookRejections" => (
            vec![
                s(format!("apiserver_admission_webhook_request_total{{{api},code=\"200\",rejected=\"false\"}}"), "0+10x61"),
                s(
                    format!(
                        "apiserver_admission_webhook_rejection_count{{{api},error_type=\"calling_webhook_error\",rejection_code=\"500\"}}"
                    ),
                    burst,
                ),
            ],
            25,
        ),
        "ImagemapWebhookLatencyNearTimeout" => (
            histogram(
                "apiserver_admission_webhook_admission_duration_seconds_bucket",
                &format!("{api},rejected=\"false\""),
                &["0.005", "0.025", "0.1", "0.5", "1", "2.5", "10", "25", "+Inf"],
                "10",
            ),
            25,
        ),
        "ImagemapReviewsSlow" => (
            histogram(
                "imagemap_review_duration_seconds_bucket",
                &hook,
                &["0.0001", "0.00025", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.05", "0.25", "1.0", "+Inf"],
                "+Inf",
            ),
            25,
        ),
        "ImagemapReviewsRefusedBusy" => (
            vec![
                s(format!("imagemap_refused_requests_total{{{hook},reason=\"busy\"}}"), burst),
                // Other refusals are not this alert.
                s(format!("imagemap_refused_requests_total{{{hook},reason=\"malformed\"}}"), "0+1x61"),
            ],
            25,
        ),
        "ImagemapTLSReloadFailing" => {
            let mut series = vec![s(format!("imagemap_tls_reload_broken{{{controller}}}"), spike)];
            if !policy {
                series.push(s(format!("imagemap_tls_reload_broken{{{hook}}}"), "0x61"));
            }
            (series, 28)
        }
        "ImagemapCacheStale" => {
            let mut series = vec![s(format!("imagemap_cache_age_seconds{{{controller}}}"), "0x10 60+60x20 0x30")];
            if !policy {
                series.push(s(format!("imagemap_cache_age_seconds{{{hook}}}"), "0x61"));
            }
            (series, 28)
        }
        "ImagemapNoControllerLeading" => {
            let mut series = vec![s(format!("imagemap_controller_leading{{{controller}}}"), dip)];
            if !policy {
                // The admission servers export the gauge too, always 0: not a controller.
                series.push(s(format!("imagemap_controller_leading{{{hook}}}"), "0x61"));
            }
            (series, 25)
        }
        "ImagemapStalePods" => {
            (vec![s(format!("imagemap_stale_pods{{{controller},exported_namespace=\"app\"}}"), "0x10 3x20 0x30")], 30)
        }
        other => panic!("no synthetic series for alert {other}: add a scenario"),
    }
}

/// Writes one promtool unit test per alert of `rules` and runs `promtool test rules` on each.
fn every_alert_fires_and_clears(rules: &Value, policy: bool) -> Vec<String> {
    let dir = tempfile::Builder::new().prefix("imagemap-rule-tests-").tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("rules.json"), rules.to_string()).expect("write the rule file");
    let mut tested = Vec::new();
    for rule in alerts(rules) {
        let name = rule["alert"].as_str().expect("an alert name").to_string();
        let (series, fire) = scenario(&name, policy);
        let input: Vec<Value> = series.iter().map(|(s, v)| json!({"series": s, "values": v})).collect();
        let firing = json!([{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]);
        let test = json!({
            "rule_files": ["rules.json"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": input,
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": name, "exp_alerts": []},
                    {"eval_time": format!("{fire}m"), "alertname": name, "exp_alerts": firing},
                    {"eval_time": "55m", "alertname": name, "exp_alerts": []},
                ],
            }],
        });
        let file = format!("{name}.test.json");
        std::fs::write(dir.path().join(&file), test.to_string()).expect("write the test file");
        let out = promtool(dir.path(), &["test", "rules", &file]);
        assert!(
            out.status.success(),
            "promtool test rules {file}: {name} must be quiet at 5m, firing at {fire}m and cleared at 55m:\n{}{}\n{test:#}",
            text(&out.stdout),
            text(&out.stderr)
        );
        tested.push(name);
    }
    tested
}

#[test]
fn every_alert_fires_on_its_synthetic_series_and_clears_after() {
    let rules = rule_file(WEBHOOK_MODE);
    let tested = every_alert_fires_and_clears(&rules, false);
    assert_eq!(tested.len(), 10, "{tested:?}");
    let policy = every_alert_fires_and_clears(&rule_file(POLICY_MODE), true);
    assert_eq!(policy.len(), 3, "{policy:?}");
}

/// The `imagemap_*` names in `text`.
fn imagemap_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("imagemap_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect()
}

fn rendered_dashboard(sets: &[&str]) -> (Value, Value) {
    let objects = render(sets);
    let map = find(&objects, "ConfigMap", &format!("{FULLNAME}-dashboard")).clone();
    let json = map["data"]["imagemap.json"].as_str().expect("the dashboard JSON in the ConfigMap");
    let dashboard: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("the dashboard is not JSON ({e})"));
    (map, dashboard)
}

#[test]
fn the_dashboard_is_a_configmap_for_the_grafana_sidecar_with_a_query_in_every_panel() {
    let (map, dashboard) = rendered_dashboard(&["metrics.dashboard.enabled=true"]);
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["namespace"], NAMESPACE);
    assert_eq!(dashboard["uid"], "imagemap");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()), "a panel without a query: {panel}");
    }
    let queries = dashboard_queries(&dashboard).join("\n");
    for wanted in [
        "imagemap_reviews_total",
        "imagemap_swaps_total",
        "imagemap_review_duration_seconds_bucket",
        "imagemap_refused_requests_total",
        "imagemap_cache_age_seconds",
        "imagemap_stale_pods",
        "imagemap_controller_restarts_total",
        "imagemap_controller_gate_releases_total",
        "imagemap_controller_policy_applies_total",
        "imagemap_controller_leading",
    ] {
        assert!(queries.contains(wanted), "the dashboard shows {wanted}");
    }
    let (map, _) = rendered_dashboard(&[
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.label=dashboards",
        "metrics.dashboard.labelValue=imagemap",
        "metrics.dashboard.namespace=grafana",
    ]);
    assert_eq!(map["metadata"]["labels"]["dashboards"], "imagemap");
    assert!(map["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(map["metadata"]["namespace"], "grafana");
    let defaults = render(&[]);
    assert!(!defaults.iter().any(|o| o["kind"] == "PrometheusRule" || o["kind"] == "ConfigMap"), "both off by default");
}

/// `GET /metrics` of a running process over HTTPS, verified with the CA in its folder.
fn scrape(process: &Webhook) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "10", "--cacert"])
        .arg(process.dir().join("ca.crt"))
        .arg(format!("https://127.0.0.1:{}/metrics", process.port()))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "scraping port {}: {}", process.port(), text(&out.stderr));
    text(&out.stdout)
}

/// The series names a scrape makes queryable: every sample's name, and for each declared
/// family those of its type (counters `_total`, histograms `_bucket`, `_sum`, `_count`), since
/// a family with no sample yet (no refusal so far) still declares its type.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Every `imagemap_*` name the rules (both modes) and the dashboard query.
fn queried_names() -> BTreeSet<String> {
    let mut queried = BTreeSet::new();
    for sets in [WEBHOOK_MODE, POLICY_MODE] {
        for rule in alerts(&rule_file(sets)) {
            queried.extend(imagemap_names(rule["expr"].as_str().unwrap_or_default()));
        }
    }
    let (_, dashboard) = rendered_dashboard(&["metrics.dashboard.enabled=true"]);
    for query in dashboard_queries(&dashboard) {
        queried.extend(imagemap_names(&query));
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        queried.extend(imagemap_names(&variable["definition"].to_string()));
    }
    queried
}

/// Polls the scrapes of `processes` until they export every name of `wanted` (families with
/// labels appear with their first sample); the names still missing at the deadline.
fn missing_after_polling(processes: &[&Webhook], wanted: &BTreeSet<String>) -> (Vec<String>, BTreeSet<String>) {
    let mut served = BTreeSet::new();
    let found = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        served = processes.iter().flat_map(|p| exported(&scrape(p))).collect();
        wanted.is_subset(&served).then_some(())
    });
    let missing = if found.is_some() { Vec::new() } else { wanted.difference(&served).cloned().collect() };
    (missing, served)
}

#[test]
fn every_imagemap_metric_the_rules_and_the_dashboard_query_is_exported_by_the_running_processes() {
    let _turn = maps_and_policies();
    let plane = imagemap_e2e::shared();
    let queried = queried_names();
    assert!(queried.len() >= 15, "the names found in the queries: {queried:?}");
    let ns = plane.create_namespace("monitoring");
    let apply = |object: Value| {
        let out =
            plane.kubectl_client().run_with_stdin(["create", "-f", "-"], Some(&object.to_string())).expect("kubectl");
        assert!(out.status.success(), "kubectl create {object}: {}", text(&out.stderr));
    };

    // A controller in policy mode syncs the (here: no) compiled policies once it leads.
    let policy = policy_mode_controller(plane, &ns, "monitoring-policy");
    let policy_controller = policy.controller().expect("the policy controller");
    let applies = BTreeSet::from(["imagemap_controller_policy_applies_total".to_string()]);
    let (missing, _) = missing_after_polling(&[policy_controller], &applies);
    assert!(missing.is_empty(), "the policy controller never synced:\n{}", policy.log_tail(30));
    let mut served = exported(&scrape(policy_controller));
    drop(policy);

    // The admission server and a controller that converges and releases gated Pods.
    let webhook = Webhook::start(
        plane,
        WebhookOptions {
            controller_args: Some(vec![
                "--converge".into(),
                "--gate-unbuilt".into(),
                "--leader-election-namespace".into(),
                ns.clone(),
            ]),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("starting the webhook and its controller: {e:#}"));
    let controller = webhook.controller().expect("the controller beside the webhook");
    // A refused request (malformed review).
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}", "--cacert"])
        .arg(webhook.dir().join("ca.crt"))
        .args(["--header", "Content-Type: application/json", "--data", "{not json"])
        .arg(format!("https://127.0.0.1:{}/mutate", webhook.port()))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    assert_eq!(text(&out.stdout), "400", "a malformed review is refused");
    // A certificate reload (a broken pair, then the good one again).
    let cert = webhook.dir().join("tls.crt");
    let good = std::fs::read(&cert).expect("the serving certificate");
    std::fs::write(&cert, b"not a certificate").expect("break the certificate file");
    let reloads = BTreeSet::from(["imagemap_tls_reloads_total".to_string()]);
    let (missing, _) = missing_after_polling(&[&webhook], &reloads);
    std::fs::write(&cert, &good).expect("restore the certificate file");
    assert!(missing.is_empty(), "no reload was counted:\n{}", webhook.log_tail(30));
    // A stale Pod: its map was built, and no webhook is registered to swap it.
    apply(json!({"apiVersion": "tilt.dev/v1alpha1", "kind": "ImageMap",
                 "metadata": {"name": "app", "namespace": ns}, "spec": {"selector": "monitoring-app"}}));
    imagemap_e2e::webhook::set_status(plane.kubectl_client(), &ns, "app", &json!({"image": "localhost:5000/app:1"}))
        .expect("set the map's status");
    apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stale", "namespace": ns},
                 "spec": {"containers": [{"name": "app", "image": "monitoring-app"}]}}));
    // A gated Pod whose map does not exist: released.
    apply(json!({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "gated", "namespace": ns, "labels": {"imagemap.tilt.dev/gated": "true"}},
                 "spec": {"schedulingGates": [{"name": "tilt.dev/imagemap"}],
                          "containers": [{"name": "app", "image": "no-map-names-this"}]}}));

    let (missing, served_now) =
        missing_after_polling(&[&webhook, controller], &queried.difference(&served).cloned().collect());
    served.extend(served_now);
    assert!(served.contains("imagemap_build_info"), "{served:?}");
    assert!(
        missing.is_empty(),
        "queried but exported by neither process: {missing:?}\nexported: {served:?}\n{}",
        webhook.log_tail(40)
    );
    plane.kubectl_ok(["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn helm_test_hooks_run_the_check_in_a_served_test_namespace_with_rights_only_there() {
    let objects = render(&[
        "webhook.namespaceSelector.matchLabels.team=a",
        "allowedRegistries={registry.example.com/team/}",
        "tests.timeout=90s",
    ]);
    let hooks: Vec<&Value> =
        objects.iter().filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test").collect();
    let kinds: BTreeSet<&str> = hooks.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["Namespace", "Pod", "Role", "RoleBinding", "ServiceAccount"]));
    let test_ns = format!("{FULLNAME}-test");
    let namespace = find(&objects, "Namespace", &test_ns);
    assert_eq!(namespace["metadata"]["labels"]["team"], "a", "served by the webhook's namespaceSelector");
    for hook in &hooks {
        let policy = hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"].as_str().unwrap_or_default();
        assert!(policy.contains("hook-succeeded") && policy.contains("before-hook-creation"), "{hook}");
    }
    let pod = find(&objects, "Pod", &test_ns);
    assert_eq!(pod["metadata"]["namespace"], NAMESPACE);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/imagemap/imagemap-webhook:0.1.0", "the chart's own image");
    assert_eq!(
        container["args"],
        json!([
            "check",
            format!("--namespace={test_ns}"),
            "--target=registry.example.com/team/imagemap-helm-test:check",
            "--timeout=90s"
        ])
    );
    assert_eq!(pod["spec"]["serviceAccountName"], test_ns);
    let role = find(&objects, "Role", &test_ns);
    assert_eq!(role["metadata"]["namespace"], test_ns.as_str(), "rights in the test namespace only");
    let rules: Vec<String> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| format!("{} {} {}", r["apiGroups"], r["resources"], r["verbs"]))
        .collect();
    assert_eq!(
        rules,
        [
            r#"["tilt.dev"] ["imagemaps"] ["create","get","delete"]"#,
            r#"["tilt.dev"] ["imagemaps/status"] ["patch"]"#,
            r#"[""] ["pods"] ["create"]"#,
        ]
    );
    // The release namespace is never served: a test namespace there is refused at render.
    let out = helm_template(&["--set", &format!("tests.namespace={NAMESPACE}")]);
    assert!(!out.status.success() && text(&out.stderr).contains("tests.namespace"), "{}", text(&out.stderr));
    let off = render(&["tests.enabled=false"]);
    assert!(!off.iter().any(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test"));
}

#[test]
fn the_chart_declares_its_minimum_kubernetes_and_policy_mode_refuses_older_clusters() {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/imagemap/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["kubeVersion"], ">=1.30.0-0");
    assert!(chart["home"].as_str().is_some_and(|h| h.starts_with("https://")));
    assert!(chart["sources"].as_array().is_some_and(|s| !s.is_empty()));
    let old = helm_template(&["--kube-version", "1.29.0"]);
    assert!(!old.status.success() && text(&old.stderr).contains("kubeVersion"), "{}", text(&old.stderr));
    let policy = helm_template(&["--kube-version", "1.35.0", "--set", "mode=policy"]);
    let why = text(&policy.stderr);
    assert!(!policy.status.success() && why.contains("mode: policy needs Kubernetes 1.36"), "{why}");
    for args in [&["--kube-version", "1.36.0", "--set", "mode=policy"][..], &["--kube-version", "1.30.0"]] {
        let out = helm_template(args);
        assert!(out.status.success(), "helm template {args:?}: {}", text(&out.stderr));
    }
}

/// Held by the tests that create ImageMaps or run a controller in policy mode: a policy-mode
/// controller compiles the maps of every namespace into admission policies, which would swap
/// the Pods of a test running beside it.
static MAPS_AND_POLICIES: Mutex<()> = Mutex::new(());

fn maps_and_policies() -> std::sync::MutexGuard<'static, ()> {
    MAPS_AND_POLICIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `imagemap-webhook check --namespace NS` against the plane, with `extra` flags.
fn check(plane: &imagemap_e2e::ControlPlane, namespace: &str, extra: &[&str]) -> Output {
    let program = workspace_binary("imagemap-webhook").unwrap_or_else(|e| panic!("{e:#}"));
    Command::new(program)
        .args(["check", "--namespace", namespace, "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("imagemap-webhook runs")
}

/// The names of the ImageMaps in `namespace`.
fn maps_in(plane: &imagemap_e2e::ControlPlane, namespace: &str) -> String {
    plane.kubectl_ok(["get", "imagemaps", "--namespace", namespace, "-o", "name"])
}

#[test]
fn the_check_passes_when_a_dry_run_pod_comes_back_swapped_and_removes_its_map() {
    let _turn = maps_and_policies();
    let served = shared_webhook();
    let plane = imagemap_e2e::shared();
    let ns = served.create_namespace("check");
    let out = check(plane, &ns, &["--target", "registry.example.com/team/check:1"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "check failed:\n{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("PASS: a server-side dry-run Pod naming imagemap-check/probe-"), "{stdout}");
    assert!(stdout.contains("came back with registry.example.com/team/check:1"), "{stdout}");
    assert!(stdout.contains("deleted ImageMap"), "{stdout}");
    assert_eq!(maps_in(plane, &ns).trim(), "", "the test map is gone");
    assert_eq!(plane.kubectl_ok(["get", "pods", "--namespace", &ns, "-o", "name"]).trim(), "", "only dry runs");
}

#[test]
fn the_check_fails_naming_what_came_back_when_no_webhook_serves_the_namespace() {
    let _turn = maps_and_policies();
    let plane = imagemap_e2e::shared();
    let ns = plane.create_namespace("check-unserved");
    let out = check(plane, &ns, &["--timeout", "3s"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an unserved namespace cannot pass:\n{}", text(&out.stdout));
    assert!(stderr.contains("came back with localhost:5000/imagemap-helm-test:check"), "{stderr}");
    assert!(text(&out.stdout).contains("(not swapped yet)"), "what it saw: {}", text(&out.stdout));
    assert!(stderr.contains("kubectl imagemap doctor"), "the next step: {stderr}");
    assert_eq!(maps_in(plane, &ns).trim(), "", "the test map is deleted after a failure too");
}

#[test]
fn in_policy_mode_the_check_passes_through_the_compiled_policy() {
    let _turn = maps_and_policies();
    let plane = imagemap_e2e::shared();
    let ns = plane.create_namespace("check-policy");
    let controller = policy_mode_controller(plane, &ns, "check-policy");
    // No webhook is registered: only the MutatingAdmissionPolicy the controller compiles swaps.
    let out = check(plane, &ns, &["--timeout", "120s"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check failed in policy mode:\n{stdout}{}\n{}",
        text(&out.stderr),
        controller.log_tail(30)
    );
    assert!(stdout.contains("came back with localhost:5000/imagemap-helm-test:check"), "{stdout}");
    assert_eq!(maps_in(plane, &ns).trim(), "", "the test map is gone");
    // The controller prunes the map's policy once it is gone (a left-over one would only match
    // the deleted map's selector in this namespace).
    let pruned = poll(Duration::from_secs(60), Duration::from_millis(500), || {
        let policies = plane.kubectl_ok(["get", "mutatingadmissionpolicies", "-o", "name"]);
        (!policies.contains(&ns)).then_some(())
    });
    drop(controller);
    assert!(pruned.is_some(), "the policy of {ns} was not pruned after the check deleted its map");
    plane.kubectl_ok(["delete", "namespace", &ns, "--wait=false"]);
}

/// A controller in policy mode (no webhook) leading with Lease `id` in `ns`.
fn policy_mode_controller(plane: &imagemap_e2e::ControlPlane, ns: &str, id: &str) -> Webhook {
    let args = ["--mode", "policy", "--leader-election-namespace", ns, "--leader-election-id", id];
    Webhook::start(plane, WebhookOptions { controller_args: Some(args.map(String::from).into()), ..Default::default() })
        .unwrap_or_else(|e| panic!("starting a policy-mode controller: {e:#}"))
}
