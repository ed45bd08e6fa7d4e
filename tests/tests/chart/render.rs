//! Rendering and values: every value documented, lint in every mode, the default objects' safe
//! defaults, every mode and option rendered into objects the API server accepts, bad values
//! refused with a message naming them, and policy mode's objects.

use std::collections::BTreeSet;

use base64::Engine as _;
use imagemap_e2e::helm::{chart_dir, fullname, is_gone, render, unique, validate_on_server, values_file, TEST_LABEL};
use imagemap_e2e::kubectl::text;
use imagemap_e2e::manifests::{all_of, args_of, kinds, named, one, secret_data, the_webhook};
use imagemap_e2e::shared;
use serde_json::{json, Value};

use crate::OPT_OUT_LABEL;

/// The value combinations the rendering tests go through: (name, values).
fn cases() -> Vec<(&'static str, Value)> {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    vec![
        ("defaults", json!({})),
        ("url", json!({"webhook": {"url": "https://127.0.0.1:8443/mutate"}})),
        ("certManager", json!({"certs": {"mode": "certManager"}})),
        (
            "certManager-issuer-url",
            json!({"certs": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
                   "webhook": {"url": "https://webhook.example.com/mutate"}}),
        ),
        (
            "existingSecret",
            json!({"certs": {"mode": "existingSecret", "existingSecret": {"name": "my-tls", "caBundle": pem}}}),
        ),
        ("single-replica", json!({"replicaCount": 1})),
        ("controller", json!({"controller": {"gateUnbuilt": true, "gateTimeout": "5m", "restartOnRebuild": true}})),
        (
            "everything",
            json!({
                "replicaCount": 3,
                "image": {"digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                "imagePullSecrets": [{"name": "regcred"}],
                "priorityClassName": "system-cluster-critical",
                "commonLabels": {"team": "platform"},
                "commonAnnotations": {"owner": "platform@example.com"},
                "podLabels": {"extra": "yes"},
                "podAnnotations": {"scrape": "no"},
                "globalNamespace": "imagemap-global",
                "allowedRegistries": ["registry.example.com/", "localhost:5000"],
                "allowOverrides": "local",
                "imagemapsFile": {"enabled": true, "maps": [
                    {"metadata": {"name": "base"}, "spec": {"selector": "base"}, "status": {"image": "registry.example/base:1"}}
                ]},
                "extraArgs": ["--max-concurrent-reviews=64"],
                "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
                "metrics": {"service": {"enabled": true}, "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}},
                "networkPolicy": {"enabled": true, "egress": {"enabled": true, "apiServerCIDRs": ["10.0.0.1/32"]}},
                "webhook": {
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 3,
                    "optOutLabel": "example.com/no-swaps",
                    "excludeNamespaces": ["monitoring"],
                    "namespaceSelector": {"matchLabels": {"imagemap": "on"},
                                          "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]},
                    "objectSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                    "annotations": {"note": "x"}
                },
                "serviceAccount": {"annotations": {"iam": "role"}},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
            }),
        ),
    ]
}

/// Adds to `missing` every key under `values` (path `prefix`) that `schema` does not declare or
/// the README's values table does not list (objects listed as a whole are not descended into).
fn undocumented(prefix: &str, values: &Value, schema: &Value, readme: &str, missing: &mut Vec<String>) {
    for (key, value) in values.as_object().into_iter().flatten() {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let declared = &schema["properties"][key];
        if declared.is_null() {
            missing.push(format!("{path} is not in values.schema.json"));
        }
        if readme.contains(&format!("| `{path}` |")) {
            continue;
        }
        match value.as_object() {
            Some(children) if !children.is_empty() => undocumented(&path, value, declared, readme, missing),
            _ => missing.push(format!("{path} is not in README.md's values table")),
        }
    }
}

#[test]
fn every_value_is_in_the_schema_and_the_readme() {
    let read = |file: &str| {
        std::fs::read_to_string(chart_dir().join(file))
            .unwrap_or_else(|e| panic!("reading charts/imagemap/{file}: {e}"))
    };
    let values: Value = serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml is YAML");
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("values.schema.json is JSON");
    let mut missing = Vec::new();
    undocumented("", &values, &schema, &read("README.md"), &mut missing);
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn lint_passes_in_every_mode_and_with_every_option() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    for (name, values) in cases() {
        let file = values_file(&values);
        let output = plane.helm(["lint", "--strict", &chart, "--namespace", "imagemap-system", "-f", &file.path]);
        assert!(
            output.status.success(),
            "helm lint --strict failed for {name}:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

#[test]
fn the_default_render_has_the_safe_defaults() {
    let plane = shared();
    let ns = plane.create_namespace("chart-defaults");
    let release = "imagemap";
    let objects = render(plane, release, &ns, &json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
        .map(String::from)
        .into(),
        "the default objects"
    );
    // Release name "imagemap" already holds the chart name: no "imagemap-imagemap".
    let name = "imagemap";
    let hook = default_webhook_configuration(&objects, name, &ns);
    default_certificate(&objects, name, hook);
    let deployment = default_admission_server(&objects, name);
    default_service_budget_and_rbac(&objects, name, &ns, deployment);
    default_controller(&objects, name, &ns);
    default_aggregated_roles(&objects, name);
    assert_eq!(validate_on_server(plane, &ns, &objects), objects.len());
}

/// The rule that reads ImageMaps (the admission server's only one, the controller's first).
fn read_maps() -> Value {
    json!({"apiGroups": ["tilt.dev"], "resources": ["imagemaps"], "verbs": ["get", "list", "watch"]})
}

/// The default webhook configuration (DESIGN §9); returns its webhook.
fn default_webhook_configuration<'a>(objects: &'a [Value], name: &str, ns: &str) -> &'a Value {
    let config = one(objects, "MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], name);
    let hook = the_webhook(config);
    assert_eq!(hook["name"], "pods.imagemap.tilt.dev");
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        hook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(hook["clientConfig"]["service"], json!({"name": name, "namespace": ns, "path": "/mutate", "port": 443}));
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", "kube-public", "kube-node-lease", ns]},
            {"key": OPT_OUT_LABEL, "operator": "DoesNotExist"}
        ]})
    );
    assert_eq!(
        hook["objectSelector"],
        json!({"matchExpressions": [{"key": OPT_OUT_LABEL, "operator": "DoesNotExist"}]})
    );
    hook
}

/// The certificate Secret and the caBundle come from the same CA.
fn default_certificate(objects: &[Value], name: &str, hook: &Value) {
    let secret = one(objects, "Secret");
    assert_eq!(secret["metadata"]["name"], format!("{name}-tls"));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    assert!(
        secret_data(secret, "tls.key").starts_with(&format!("-----BEGIN {}-----", "EC PRIVATE KEY")),
        "an ECDSA key"
    );
}

/// The admission server's Deployment; returns it.
fn default_admission_server<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    let deployment = named(objects, "Deployment", name);
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(spec["serviceAccountName"], name);
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert!(spec.get("priorityClassName").is_none());
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        spec["topologySpreadConstraints"],
        json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}])
    );
    let webhook = &spec["containers"][0];
    assert_eq!(webhook["image"], "ghcr.io/imagemap/imagemap-webhook:0.1.0");
    let security = &webhook["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let args: Vec<&str> = webhook["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    for flag in [
        "--listen=0.0.0.0:8443",
        "--tls-cert-file=/etc/imagemap/tls/tls.crt",
        "--tls-private-key-file=/etc/imagemap/tls/tls.key",
        "--shutdown-delay=5s",
        "--shutdown-timeout=20s",
    ] {
        assert!(args.contains(&flag), "{flag} in {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--global-namespace") || a.starts_with("--imagemaps-file")), "{args:?}");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(webhook[probe]["httpGet"], json!({"path": path, "port": "https", "scheme": "HTTPS"}), "{probe}");
    }
    assert!(
        webhook["resources"]["requests"]["cpu"].is_string() && webhook["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(spec["volumes"][0]["secret"]["secretName"], format!("{name}-tls"));
    deployment
}

/// Service 443 -> the container's https port (8443), PDB, least-privilege RBAC.
fn default_service_budget_and_rbac(objects: &[Value], name: &str, ns: &str, deployment: &Value) {
    let webhook = &deployment["spec"]["template"]["spec"]["containers"][0];
    let service = one(objects, "Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}])
    );
    assert_eq!(webhook["ports"], json!([{"name": "https", "containerPort": 8443, "protocol": "TCP"}]));
    // The Service selects the admission server's Pods, never the controller's.
    let selects = |labels: &Value| {
        service["spec"]["selector"].as_object().expect("selector").iter().all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&deployment["spec"]["template"]["metadata"]["labels"]));
    let controller_pods = &named(objects, "Deployment", &format!("{name}-controller"))["spec"]["template"];
    assert!(!selects(&controller_pods["metadata"]["labels"]), "{}", controller_pods["metadata"]);
    assert_eq!(controller_pods["spec"]["serviceAccountName"], format!("{name}-controller"));
    let pdb = one(objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    assert_eq!(named(objects, "ClusterRole", name)["rules"], json!([read_maps()]));
    assert_eq!(
        named(objects, "ClusterRoleBinding", name)["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );
}

/// The controller scopes the webhook to where maps are, by default: its own Deployment,
/// ServiceAccount and role.
fn default_controller(objects: &[Value], name: &str, ns: &str) {
    let controller = format!("{name}-controller");
    assert!(
        args_of(named(objects, "Deployment", &controller))
            .contains(&format!("--webhook-configuration={name}").as_str()),
        "the webhook is scoped to where maps are by default"
    );
    assert_eq!(
        named(objects, "ClusterRole", &controller)["rules"],
        json!([
            read_maps(),
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [name], "verbs": ["get", "update"]},
        ])
    );
    assert_eq!(
        named(objects, "ClusterRoleBinding", &controller)["subjects"],
        json!([{"kind": "ServiceAccount", "name": controller, "namespace": ns}])
    );
    let policy = one(objects, "ValidatingAdmissionPolicy");
    assert_eq!(policy["metadata"]["name"], format!("{controller}-webhook-configuration"));
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        format!("request.userInfo.username == 'system:serviceaccount:{ns}:{controller}'")
    );
    assert_eq!(one(objects, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"], json!(["Deny"]));
}

/// ImageMap rights folded into the built-in roles.
fn default_aggregated_roles(objects: &[Value], name: &str) {
    let view = named(objects, "ClusterRole", &format!("{name}-view"));
    assert_eq!(view["rules"], json!([read_maps()]));
    let edit = named(objects, "ClusterRole", &format!("{name}-edit"));
    assert_eq!(
        edit["rules"],
        json!([
            {"apiGroups": ["tilt.dev"], "resources": ["imagemaps"],
             "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
            {"apiGroups": ["tilt.dev"], "resources": ["imagemaps/status"], "verbs": ["get", "update", "patch"]},
        ])
    );
    for (role, to) in [(view, ["view", "edit", "admin"].as_slice()), (edit, ["edit", "admin"].as_slice())] {
        let labels = &role["metadata"]["labels"];
        for target in ["view", "edit", "admin"] {
            let label = &labels[format!("rbac.authorization.k8s.io/aggregate-to-{target}")];
            assert_eq!(label.as_str() == Some("true"), to.contains(&target), "{target} in {labels}");
        }
    }
}

#[test]
fn every_mode_and_option_renders_objects_the_api_server_accepts() {
    let plane = shared();
    let ns = plane.create_namespace("chart-modes");
    for (case, values) in cases() {
        let release = "r";
        let name = fullname(release);
        let objects = render(plane, release, &ns, &values);
        let config = one(&objects, "MutatingWebhookConfiguration");
        let deployment = named(&objects, "Deployment", &name);
        let validated = validate_on_server(plane, &ns, &objects);
        let r = Rendered {
            case,
            ns: &ns,
            name: &name,
            objects: &objects,
            config,
            hook: the_webhook(config),
            deployment,
            pod_spec: &deployment["spec"]["template"]["spec"],
            controller: named(&objects, "Deployment", &format!("{name}-controller")),
            skipped: objects.len() - validated,
        };
        match case {
            "defaults" => assert_eq!(r.skipped, 0),
            "url" => check_url(r),
            "certManager" => check_cert_manager(r),
            "certManager-issuer-url" => check_cert_manager_issuer_url(r),
            "existingSecret" => check_existing_secret(r),
            "single-replica" => {
                assert!(all_of(&objects, "PodDisruptionBudget").is_empty(), "a 1-replica PDB would block drains");
            }
            "controller" => check_controller(r),
            "everything" => {
                check_everything_workloads(r);
                check_everything_webhook_maps_and_metrics(r);
            }
            other => panic!("no checks for case {other}"),
        }
    }
}

/// One case of [`cases`] rendered (release `r`), and how many of its objects the API server
/// validated.
#[derive(Clone, Copy)]
struct Rendered<'a> {
    case: &'a str,
    ns: &'a str,
    /// The chart's full name, `r-imagemap`.
    name: &'a str,
    objects: &'a [Value],
    config: &'a Value,
    /// The configuration's webhook.
    hook: &'a Value,
    /// The admission server's Deployment.
    deployment: &'a Value,
    /// Its Pod spec.
    pod_spec: &'a Value,
    /// The controller's Deployment.
    controller: &'a Value,
    /// Objects not sent to the API server ([`imagemap_e2e::helm::NOT_ON_SERVER`]).
    skipped: usize,
}

/// `webhook.url`: the configuration calls the URL, and the certificate covers its IP.
fn check_url(r: Rendered<'_>) {
    let Rendered { case, objects, hook, .. } = r;
    assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:8443/mutate", "{case}");
    assert!(hook["clientConfig"].get("service").is_none(), "{case}");
    let secret = one(objects, "Secret");
    assert!(
        secret["metadata"]["annotations"]["imagemap.tilt.dev/cert-hosts"]
            .as_str()
            .is_some_and(|h| h.ends_with(";127.0.0.1")),
        "the certificate covers the URL's IP: {secret}"
    );
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
}

/// `certs.mode=certManager`: the cert-manager chain (checked here: no CRDs on the plane).
fn check_cert_manager(r: Rendered<'_>) {
    let Rendered { ns, name, objects, config, hook, pod_spec, skipped, .. } = r;
    assert!(all_of(objects, "Secret").is_empty(), "cert-manager makes the Secret");
    assert_eq!(skipped, 4, "2 Issuers and 2 Certificates");
    let issuers = all_of(objects, "Issuer");
    assert!(issuers.iter().any(|i| i["spec"]["selfSigned"] == json!({})), "{issuers:?}");
    assert!(issuers.iter().any(|i| i["spec"]["ca"]["secretName"] == format!("{name}-ca")), "{issuers:?}");
    let certificates = all_of(objects, "Certificate");
    let ca = certificates.iter().find(|c| c["spec"]["isCA"] == true).expect("a CA Certificate");
    assert_eq!(ca["spec"]["issuerRef"]["name"], format!("{name}-selfsigned"));
    let serving = certificates.iter().find(|c| c["spec"]["isCA"] != true).expect("a serving Certificate");
    assert_eq!(serving["spec"]["secretName"], format!("{name}-tls"));
    assert_eq!(serving["spec"]["issuerRef"]["name"], format!("{name}-ca"));
    assert_eq!(
        serving["spec"]["dnsNames"],
        json!([name, format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")])
    );
    assert_eq!(config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], format!("{ns}/{name}-tls"));
    assert!(hook["clientConfig"].get("caBundle").is_none(), "the CA injector fills it");
    assert_eq!(pod_spec["volumes"][0]["secret"]["secretName"], format!("{name}-tls"));
}

/// `certManager` with an issuer of the admin's and a URL: only the serving Certificate, for the URL's host.
fn check_cert_manager_issuer_url(r: Rendered<'_>) {
    let Rendered { objects, skipped, .. } = r;
    assert_eq!(skipped, 1, "only the serving Certificate");
    let serving = one(objects, "Certificate");
    assert_eq!(serving["spec"]["issuerRef"], json!({"name": "corp-ca", "kind": "ClusterIssuer"}));
    assert_eq!(serving["spec"]["dnsNames"][4], "webhook.example.com", "the URL's host name");
    assert!(serving["spec"].get("ipAddresses").is_none());
}

/// `certs.mode=existingSecret`: no Secret made, the given CA bundle.
fn check_existing_secret(r: Rendered<'_>) {
    let Rendered { objects, hook, pod_spec, .. } = r;
    assert!(all_of(objects, "Secret").is_empty());
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert_eq!(hook["clientConfig"]["caBundle"], base64::engine::general_purpose::STANDARD.encode(pem));
    assert_eq!(pod_spec["volumes"][0]["secret"]["secretName"], "my-tls");
}

/// The controller's features: the admission server adds the gate; the controller does the rest.
fn check_controller(r: Rendered<'_>) {
    let Rendered { ns, name, objects, deployment, controller, .. } = r;
    let args = args_of(deployment);
    assert!(args.contains(&"--gate-unbuilt"), "{args:?}");
    let controller_args = args_of(controller);
    for flag in ["--gate-unbuilt", "--gate-timeout=5m", "--converge", &format!("--leader-election-namespace={ns}")] {
        assert!(controller_args.contains(&flag), "{flag} in {controller_args:?}");
    }
    let env = &controller["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "POD_NAME for the Lease identity");
    let rules = &named(objects, "ClusterRole", &format!("{name}-controller"))["rules"];
    let granted: BTreeSet<String> = rules
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let verbs: Vec<String> =
                r["verbs"].as_array().expect("verbs").iter().filter_map(|v| v.as_str().map(String::from)).collect();
            r["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .filter_map(|x| x.as_str())
                .flat_map(move |res| verbs.iter().map(move |v| format!("{v} {res}")).collect::<Vec<_>>())
        })
        .collect();
    for want in [
        "patch pods",
        "list pods",
        "create events",
        "get replicasets",
        "patch deployments",
        "patch statefulsets",
        "patch daemonsets",
        "get deployments",
        "get statefulsets",
        "get daemonsets",
    ] {
        assert!(granted.contains(want), "{want} granted when the controller is on: {granted:?}");
    }
    let lease_rules = &one(objects, "Role")["rules"][0];
    assert_eq!(lease_rules["resources"], json!(["leases"]));
    assert_eq!(one(objects, "RoleBinding")["metadata"]["namespace"], ns);
}

/// Every option: the Deployments, their flags, the guards, common labels and annotations.
fn check_everything_workloads(r: Rendered<'_>) {
    let Rendered { ns, name, objects, deployment, pod_spec, controller, skipped, .. } = r;
    let args = args_of(deployment);
    assert_eq!(skipped, 1, "the ServiceMonitor");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        pod_spec["containers"][0]["image"],
        "ghcr.io/imagemap/imagemap-webhook@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(pod_spec["priorityClassName"], "system-cluster-critical");
    assert!(args.contains(&"--global-namespace=imagemap-global"), "{args:?}");
    assert!(args.contains(&"--imagemaps-file=/etc/imagemap/maps/imagemaps.yaml"), "{args:?}");
    assert!(args.contains(&"--max-concurrent-reviews=64"), "{args:?}");
    assert_eq!(pod_spec["volumes"][1]["configMap"]["name"], format!("{name}-imagemaps"));
    // The controller runs the same image, with the same global namespace and
    // protected namespaces, but not the admission server's extra flags.
    let controller_spec = &controller["spec"]["template"]["spec"];
    assert_eq!(controller_spec["containers"][0]["image"], pod_spec["containers"][0]["image"]);
    assert_eq!(controller_spec["priorityClassName"], "system-cluster-critical");
    let controller_args = args_of(controller);
    for flag in [
        "--global-namespace=imagemap-global",
        "--allowed-registry=registry.example.com/",
        "--allowed-registry=localhost:5000",
        "--allow-overrides=local",
        &format!("--protected-namespace={ns}"),
        "--protected-namespace=monitoring",
    ] {
        assert!(args.contains(&flag) && controller_args.contains(&flag), "{flag}: {args:?} {controller_args:?}");
    }
    assert!(!controller_args.contains(&"--max-concurrent-reviews=64"), "{controller_args:?}");
    let guards = named(objects, "ValidatingAdmissionPolicy", &format!("{name}-imagemap-guards"));
    let guards = guards["spec"]["validations"].to_string();
    assert!(guards.contains("(allowedRegistries: registry.example.com/, localhost:5000)"), "{guards}");
    assert!(guards.contains("(allowOverrides: local)"), "{guards}");
    for object in objects {
        assert_eq!(object["metadata"]["labels"]["team"], "platform", "commonLabels on {}", object["kind"]);
        assert_eq!(
            object["metadata"]["annotations"]["owner"], "platform@example.com",
            "commonAnnotations on {}",
            object["kind"]
        );
    }
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["extra"], "yes");
}

/// Every option: the webhook's selectors, the maps ConfigMap, metrics and the NetworkPolicy.
fn check_everything_webhook_maps_and_metrics(r: Rendered<'_>) {
    let Rendered { ns, name, objects, hook, .. } = r;
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["timeoutSeconds"], 3);
    assert_eq!(hook["namespaceSelector"]["matchLabels"], json!({"imagemap": "on"}));
    let expressions = hook["namespaceSelector"]["matchExpressions"].as_array().expect("expressions");
    assert_eq!(expressions[0]["values"], json!(["kube-system", "kube-public", "kube-node-lease", ns, "monitoring"]));
    assert_eq!(expressions[1], json!({"key": "example.com/no-swaps", "operator": "DoesNotExist"}));
    assert_eq!(expressions[2]["key"], "tier");
    assert_eq!(hook["objectSelector"]["matchExpressions"][1], json!({"key": "app", "operator": "Exists"}));
    // The maps ConfigMap holds a List of complete ImageMaps (the webhook's file format).
    let maps = &one(objects, "ConfigMap")["data"]["imagemaps.yaml"];
    let maps: Value = serde_saphyr::from_str(maps.as_str().expect("maps text")).expect("maps YAML");
    assert_eq!(maps["kind"], "List");
    assert_eq!(maps["items"][0]["apiVersion"], "tilt.dev/v1alpha1");
    assert_eq!(maps["items"][0]["kind"], "ImageMap");
    // Metrics and the ServiceMonitor (checked here: no Prometheus Operator CRD).
    let metrics = all_of(objects, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == format!("{name}-metrics"))
        .expect("the metrics Service");
    let monitor = one(objects, "ServiceMonitor");
    for (label, value) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
        assert_eq!(&metrics["metadata"]["labels"][label], value, "the ServiceMonitor selects {label}");
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], metrics["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"], json!({"name": format!("{name}-tls"), "key": "ca.crt"}));
    assert_eq!(endpoint["tlsConfig"]["serverName"], format!("{name}.{ns}.svc"));
    let policy = one(objects, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["ingress"], json!([{"ports": [{"port": "https", "protocol": "TCP"}]}]));
}

#[test]
fn bad_values_are_refused_with_a_message_naming_them() {
    let plane = shared();
    let chart = chart_dir().display().to_string();
    let ns = plane.create_namespace("chart-bad");
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--set", "replicaCount=two"], &["/replicaCount", "want integer"]),
        (&["--set", "webhook.failurePolicy=Sometimes"], &["/webhook/failurePolicy", "'Ignore', 'Fail'"]),
        (&["--set", "certs.mode=selfSigned"], &["/certs/mode", "'generate', 'certManager', 'existingSecret'"]),
        (&["--set", "webhook.url=http://127.0.0.1:8443/mutate"], &["/webhook/url", "http://127.0.0.1:8443/mutate"]),
        (&["--set", "replicas=3"], &["replicas", "not allowed"]),
        (&["--set", "certs.mode=existingSecret"], &["certs.existingSecret.name", "certs.existingSecret.caBundle"]),
        (&["--set", "allowOverrides=some"], &["/allowOverrides", "'all', 'local', 'none'"]),
        (
            &["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine"],
            &["controller.serviceAccount.name is required"],
        ),
    ];
    for (args, expected) in cases {
        let release = unique("bad");
        let mut all = vec!["install", release.as_str(), chart.as_str(), "--namespace", ns.as_str()];
        all.extend_from_slice(args);
        let scope = format!(r#"webhook.namespaceSelector.matchLabels={{"{TEST_LABEL}":"{release}"}}"#);
        all.extend(["--set-json", scope.as_str()]);
        let output = plane.helm(&all);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "helm accepted {args:?}:\n{}", text(&output.stdout));
        for needle in expected {
            assert!(stderr.contains(needle), "helm's message for {args:?} does not mention {needle:?}:\n{stderr}");
        }
        // Nothing was installed.
        assert!(!plane.helm(["status", &release, "--namespace", &ns]).status.success(), "release {release} exists");
        assert!(is_gone(plane, "mutatingwebhookconfiguration", &fullname(&release), None));
    }
}

#[test]
fn policy_mode_registers_no_webhook_and_may_write_admission_policies() {
    let plane = shared();
    let ns = plane.create_namespace("chart-policy");
    let values = json!({"mode": "policy", "controller": {"restartOnRebuild": true}});
    let objects = render(plane, "r", &ns, &values);
    // No admission server: no webhook configuration, Service, budget or its ServiceAccount;
    // only the controller.
    for kind in ["MutatingWebhookConfiguration", "Service", "PodDisruptionBudget"] {
        assert!(all_of(&objects, kind).is_empty(), "{kind} in policy mode: {:?}", kinds(&objects));
    }
    assert_eq!(one(&objects, "ServiceAccount")["metadata"]["name"], "r-imagemap-controller");
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "r-imagemap-controller");
    let args = args_of(deployment);
    assert!(args.contains(&"--role=controller") && args.contains(&"--mode=policy"), "{args:?}");
    assert!(args.iter().any(|a| a.starts_with("--policy-owner=")), "policies owned by a ClusterRole: {args:?}");
    assert!(args.iter().any(|a| a.starts_with("--leader-election-namespace=")), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--webhook-configuration")), "no webhook to scope: {args:?}");
    let role = named(&objects, "ClusterRole", "r-imagemap-controller");
    let rules = role["rules"].as_array().expect("rules");
    assert!(
        rules.contains(&json!({"apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
            "verbs": ["get", "list", "create", "patch", "delete"]})),
        "{rules:?}"
    );
    assert!(!role.to_string().contains("mutatingwebhookconfigurations"), "{role}");
    // Restarts wait for a new build's policy to be in effect, seen with dry-run Pods.
    assert!(
        rules.contains(&json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "create"]})),
        "{rules:?}"
    );
    assert_eq!(validate_on_server(plane, &ns, &objects), objects.len(), "the API server accepts every object");
    let file = values_file(&values);
    let chart = chart_dir().display().to_string();
    let lint = plane.helm(["lint", "--strict", &chart, "--namespace", "imagemap-system", "-f", &file.path]);
    assert!(lint.status.success(), "{}{}", text(&lint.stdout), text(&lint.stderr));

    for (set, why) in [
        ("controller.gateUnbuilt=true", "cannot hold Pods until their image is built"),
        ("imagemapsFile.enabled=true", "compiled from the cluster's ImageMaps only"),
    ] {
        let out = plane.helm(["template", "r", &chart, "--set", "mode=policy", "--set", set]);
        assert!(!out.status.success(), "{set} accepted");
        assert!(text(&out.stderr).contains(why), "{set}: {}", text(&out.stderr));
    }
    let out = plane.helm(["template", "r", &chart, "--set", "mode=sometimes"]);
    assert!(!out.status.success() && text(&out.stderr).contains("/mode"), "{}", text(&out.stderr));
}
