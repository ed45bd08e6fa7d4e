//! `imagemap-bench modes`: Pod creates through a real API server by admission mode, each mode in
//! its own namespace of one control plane, measured in alternating rounds and reported as ratios
//! against a namespace that no webhook registration and no policy covers.
//!
//! The modes: the webhook registered for a namespace with no map (its controller scopes the
//! registration with match conditions, so the API server does not call it there), with a map
//! that cannot match, with a matching map; the matching map compiled into a
//! MutatingAdmissionPolicy (`imagemap_core::policy`), also with 10 and 100 maps; and a naive
//! hand-written policy that takes ImageMaps as parameters and builds a regular expression from
//! each one's selector per evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use imagemap_cluster::policy_sync::Prune;
use imagemap_core::policy::PolicyOptions;
use imagemap_core::scope::{condition_includes, IMAGES_CONDITION, MAX_IMAGE_TOKENS, SCOPE_CONDITION};
use imagemap_core::types::ImageMap;
use imagemap_e2e::ControlPlane;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::cluster::{
    client, create_map, create_namespace, create_pods, delete_pods, pod_with_env, start_webhook, swapped, wait_cache,
    SERVED_LABEL,
};
use crate::fixtures::image_map;
use crate::results::{CreateStats, ModesCase, ModesResults, ModesRun};
use crate::{quantile, ratio};

/// Knobs for the modes step.
#[derive(Debug, Clone)]
pub struct ModesOptions {
    /// Rounds; each round measures every mode once, in order.
    pub rounds: usize,
    /// Pods per mode per round.
    pub pods: usize,
    /// Creates in flight.
    pub concurrency: usize,
    /// Time limit per run, seconds.
    pub seconds: u64,
    /// Scratch folder.
    pub work: PathBuf,
}

/// The webhook's registration; its controller scopes it.
const CONFIGURATION: &str = "imagemap-bench-modes";
/// The [`SERVED_LABEL`] value of the namespaces the registration covers.
const SERVED: &str = "modes";
/// Where the webhook's controller keeps its leader-election Lease.
const LEASE_NAMESPACE: &str = "bench-modes-lease";
/// The hand-written policy and its binding.
const NAIVE: &str = "imagemap-bench-naive";
/// The field manager of the hand-written policy.
const FIELD_MANAGER: &str = "imagemap-bench";
/// The Pod's size in bytes (JSON, as sent), at least.
const POD_BYTES: usize = 8 * 1024;
/// How long a registration, scope or policy may take to take effect.
const SETTLE: Duration = Duration::from_secs(60);

/// What stands in a mode's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Nothing (or the webhook, which the registration may or may not send the Pod to).
    Plain,
    /// The policy `imagemap_core::policy::compile` writes for the namespace's maps.
    Compiled,
    /// The hand-written policy with ImageMaps as parameters.
    Naive,
    /// A policy that sets one field of every Pod, no lookup: the floor of any mutating policy.
    Trivial,
}

struct Mode {
    case: &'static str,
    namespace: &'static str,
    how: &'static str,
    /// Whether the webhook registration's namespaceSelector covers it.
    covered: bool,
    admission: Admission,
    maps: Vec<ImageMap>,
    /// Whether its Pods come back swapped.
    swaps: bool,
}

/// The `app` map: `app` -> [`crate::cluster::TARGET_IMAGE`].
fn app_map(namespace: &str) -> ImageMap {
    image_map(namespace, "app", "app", false)
}

/// `app` and `n - 1` maps `gcr.io/team/svc-<i>`.
fn many_maps(namespace: &str, n: usize) -> Vec<ImageMap> {
    let mut maps = vec![app_map(namespace)];
    maps.extend((1..n).map(|i| image_map(namespace, &format!("svc-{i}"), &format!("gcr.io/team/svc-{i}"), false)));
    maps
}

fn all_modes() -> Vec<Mode> {
    let mode = |case, namespace, how, covered, admission, maps: Vec<ImageMap>, swaps| Mode {
        case,
        namespace,
        how,
        covered,
        admission,
        maps,
        swaps,
    };
    vec![
        mode(
            "opted-out",
            "modes-opted-out",
            "no webhook registration covers the namespace, no policy (baseline)",
            false,
            Admission::Plain,
            vec![],
            false,
        ),
        mode(
            "webhook, no maps",
            "modes-webhook-none",
            "covered by the registration's namespaceSelector, no ImageMap: outside the controller's `imagemap-scope` condition",
            true,
            Admission::Plain,
            vec![],
            false,
        ),
        mode(
            "webhook, maps with other images",
            "modes-webhook-other",
            "covered, one built map `gcr.io/team/other` (matches no container)",
            true,
            Admission::Plain,
            vec![image_map("modes-webhook-other", "other", "gcr.io/team/other", false)],
            false,
        ),
        mode(
            "webhook, matching map",
            "modes-webhook-match",
            "covered, one built map `app` -> `localhost:5000/app:tilt-1`",
            true,
            Admission::Plain,
            vec![app_map("modes-webhook-match")],
            true,
        ),
        mode(
            "policy, matching map",
            "modes-policy-1",
            "not covered; the same map compiled into a MutatingAdmissionPolicy (`imagemap_core::policy::compile`)",
            false,
            Admission::Compiled,
            vec![app_map("modes-policy-1")],
            true,
        ),
        mode(
            "naive policy",
            "modes-naive",
            "not covered; the same map as the parameter of a hand-written policy (regex from the selector per evaluation)",
            false,
            Admission::Naive,
            vec![app_map("modes-naive")],
            true,
        ),
        mode(
            "trivial policy (floor)",
            "modes-trivial",
            "not covered; a policy that adds one field (the first container's pull policy) to every Pod, no CEL lookup: the cost of any mutating policy",
            false,
            Admission::Trivial,
            vec![],
            false,
        ),
        mode(
            "policy, 10 maps",
            "modes-policy-10",
            "not covered; compiled policy of `app` and 9 `gcr.io/team/svc-<i>` maps",
            false,
            Admission::Compiled,
            many_maps("modes-policy-10", 10),
            true,
        ),
        mode(
            "policy, 100 maps",
            "modes-policy-100",
            "not covered; compiled policy of `app` and 99 `gcr.io/team/svc-<i>` maps",
            false,
            Admission::Compiled,
            many_maps("modes-policy-100", 100),
            true,
        ),
    ]
}

/// The API server's message for a failed request, else the whole error.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => format!("{other:#}"),
    }
}

/// Compiles the namespace's maps (as listed from the API server) and applies the policy.
async fn apply_compiled(client: &Client, namespace: &str) -> std::result::Result<(), String> {
    let maps: Api<ImageMap> = Api::namespaced(client.clone(), namespace);
    let listed = maps.list(&ListParams::default()).await.map_err(|e| message(&e))?.items;
    let policies =
        imagemap_core::policy::compile(&listed, &PolicyOptions::default()).map_err(|e| format!("not compiled: {e}"))?;
    if policies.iter().all(|p| p.namespace.as_deref() != Some(namespace)) {
        return Err(format!("no policy compiled for {namespace} from {} maps", listed.len()));
    }
    imagemap_cluster::policy_sync::sync(client, &policies, Prune::Namespace(namespace))
        .await
        .map_err(|e| message(&e))?;
    Ok(())
}

/// The CEL of the hand-written policy: each container whose image matches a pattern built from
/// the parameter's selector gets the parameter's status image.
const NAIVE_PATCH: &str = "object.spec.containers.transformList(i, c, \
     c.image.matches('^(docker\\\\.io/)?(library/)?' + params.spec.selector + \
     '(:[A-Za-z0-9_.-]+)?(@sha256:[0-9a-f]{64})?$'), \
     JSONPatch{op: 'replace', path: '/spec/containers/' + string(i) + '/image', value: params.status.image})";

/// The trivial policy: one field set on every Pod.
const TRIVIAL: &str = "imagemap-bench-trivial";
const TRIVIAL_PATCH: &str = "[JSONPatch{op: 'add', path: '/spec/containers/0/imagePullPolicy', value: 'IfNotPresent'}]";

/// Applies the trivial policy, bound to `namespace` only.
async fn apply_trivial(client: &Client, namespace: &str) -> std::result::Result<(), String> {
    apply_hand_written(client, namespace, TRIVIAL, TRIVIAL_PATCH, false).await
}

/// Applies the hand-written policy, bound to `namespace` only, every ImageMap there a parameter.
async fn apply_naive(client: &Client, namespace: &str) -> std::result::Result<(), String> {
    apply_hand_written(client, namespace, NAIVE, NAIVE_PATCH, true).await
}

/// Applies policy `name` with the JSON patch `patch`, bound to `namespace` only; with
/// `params`, every ImageMap there is a parameter.
async fn apply_hand_written(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: &str,
    params: bool,
) -> std::result::Result<(), String> {
    let param_kind = params.then(|| json!({"apiVersion": "tilt.dev/v1alpha1", "kind": "ImageMap"}));
    let param_ref = params.then(|| json!({"selector": {}, "parameterNotFoundAction": "Allow"}));
    let policy: MutatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "paramKind": param_kind,
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"]}]},
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": patch}}],
        },
    }))
    .map_err(|e| e.to_string())?;
    let binding: MutatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "paramRef": param_ref,
            "matchResources": {"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]}},
        },
    }))
    .map_err(|e| e.to_string())?;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let policies: Api<MutatingAdmissionPolicy> = Api::all(client.clone());
    policies.patch(name, &apply, &Patch::Apply(&policy)).await.map_err(|e| message(&e))?;
    let bindings: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    bindings.patch(name, &apply, &Patch::Apply(&binding)).await.map_err(|e| message(&e))?;
    Ok(())
}

/// Waits until the registration's scope condition lets exactly `inside` (of `all`) call the
/// webhook; returns the names of its match conditions then.
async fn wait_scope(
    configs: &Api<MutatingWebhookConfiguration>,
    inside: &BTreeSet<&str>,
    all: &[&str],
) -> Result<Vec<String>> {
    let started = Instant::now();
    let mut last = String::from("no configuration read");
    loop {
        if let Ok(config) = configs.get(CONFIGURATION).await {
            let conditions = config
                .webhooks
                .as_ref()
                .and_then(|w| w.first())
                .and_then(|w| w.match_conditions.clone())
                .unwrap_or_default();
            if let Some(scope) = conditions.iter().find(|c| c.name == SCOPE_CONDITION) {
                if all.iter().all(|ns| condition_includes(&scope.expression, ns) == inside.contains(ns)) {
                    return Ok(conditions.into_iter().map(|c| c.name).collect());
                }
                last = scope.expression.clone();
            } else {
                last = format!("no {SCOPE_CONDITION} condition");
            }
        }
        if started.elapsed() > SETTLE {
            bail!("the webhook did not scope {CONFIGURATION} to {inside:?} within {SETTLE:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Server-side dry-run creates until one comes back swapped (or not, as `swaps` says).
async fn wait_admitted(pods: &Api<Pod>, pod: &dyn Fn(&str) -> Result<Pod>, swaps: bool) -> Result<(), String> {
    let started = Instant::now();
    let params = PostParams { dry_run: true, ..Default::default() };
    loop {
        let last = match pods.create(&params, &pod("probe").map_err(|e| e.to_string())?).await {
            Ok(created) if swapped(&created) == swaps => {
                // A pause: every API server watch (of policies, params, registrations) caught up.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            Ok(created) => {
                let image = created.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
                format!("the dry-run Pod has image {:?}", image.unwrap_or_default())
            }
            Err(e) => message(&e),
        };
        if started.elapsed() > SETTLE {
            return Err(format!(
                "a dry-run Pod was {} swapped within {SETTLE:?} (last: {last})",
                if swaps { "never" } else { "still" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of env vars per container that makes the Pod at least [`POD_BYTES`].
fn env_for_size(namespace: &str) -> Result<usize> {
    for env in 10..400 {
        if serde_json::to_vec(&pod_with_env(namespace, "modes-r0-c0-0000", env)?)?.len() >= POD_BYTES {
            return Ok(env);
        }
    }
    bail!("no Pod of {POD_BYTES} bytes")
}

/// The step.
#[expect(clippy::too_many_lines, reason = "the modes run one after another; to be split by mode")]
pub async fn modes(plane: &ControlPlane, opts: &ModesOptions) -> Result<ModesResults> {
    std::fs::create_dir_all(&opts.work)?;
    let client = client(plane).await?;
    let modes = all_modes();
    let labels = BTreeMap::from([(SERVED_LABEL.to_string(), SERVED.to_string())]);
    let unlabelled = BTreeMap::new();
    create_namespace(&client, LEASE_NAMESPACE, &unlabelled).await?;
    let mut total_maps = 0;
    for m in &modes {
        create_namespace(&client, m.namespace, if m.covered { &labels } else { &unlabelled }).await?;
        for map in &m.maps {
            create_map(&client, map).await?;
        }
        total_maps += m.maps.len();
    }
    eprintln!("modes: {} namespaces, {total_maps} ImageMaps", modes.len());

    // The admission server, and the controller scoping its registration.
    let controller_args: Vec<String> = [
        "--role",
        "controller",
        "--webhook-configuration",
        CONFIGURATION,
        "--leader-election-namespace",
        LEASE_NAMESPACE,
        "--controller-interval",
        "300ms",
    ]
    .map(String::from)
    .to_vec();
    let _controller = start_webhook(plane, &opts.work, "controller-modes", &controller_args).await?;
    let webhook = start_webhook(plane, &opts.work, "webhook-modes", &[]).await?;
    wait_cache(&webhook, total_maps, SETTLE).await?;
    let ca_pem = std::fs::read_to_string(&webhook.certs.ca)?;
    let config_json =
        imagemap_e2e::webhook::webhook_configuration(CONFIGURATION, &webhook.url("/mutate"), &ca_pem, &labels);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .create(&PostParams::default(), &serde_json::from_value(config_json)?)
        .await
        .context("registering the webhook")?;
    let all: Vec<&str> = modes.iter().map(|m| m.namespace).collect();
    let with_maps: BTreeSet<&str> = modes.iter().filter(|m| !m.maps.is_empty()).map(|m| m.namespace).collect();
    let conditions = wait_scope(&configs, &with_maps, &all).await?;
    eprintln!("modes: {CONFIGURATION} scoped; its match conditions: {}", conditions.join(", "));

    // The policies; a rejected one is recorded and its mode not measured.
    let mut accepted: Vec<Option<bool>> = Vec::new();
    let mut errors: Vec<Option<String>> = Vec::new();
    for m in &modes {
        let applied = match m.admission {
            Admission::Plain => None,
            Admission::Compiled => Some(apply_compiled(&client, m.namespace).await),
            Admission::Naive => Some(apply_naive(&client, m.namespace).await),
            Admission::Trivial => Some(apply_trivial(&client, m.namespace).await),
        };
        if let Some(Err(e)) = &applied {
            eprintln!("modes: {}: the policy was not accepted: {e}", m.case);
        }
        accepted.push(applied.as_ref().map(|a| a.is_ok()));
        errors.push(applied.and_then(|a| a.err()));
    }

    // Every mode does what it should before anything is measured.
    let env = env_for_size(modes[0].namespace)?;
    let pod_bytes = serde_json::to_vec(&pod_with_env(modes[0].namespace, "modes-r0-c0-0000", env)?)?.len();
    let apis: Vec<Api<Pod>> = modes.iter().map(|m| Api::namespaced(client.clone(), m.namespace)).collect();
    for (i, m) in modes.iter().enumerate() {
        if accepted[i] == Some(false) {
            continue;
        }
        let make = |name: &str| pod_with_env(m.namespace, name, env);
        if let Err(e) = wait_admitted(&apis[i], &make, m.swaps).await {
            eprintln!("modes: {}: {e}", m.case);
            errors[i] = Some(e);
        }
    }

    let mut runs = Vec::new();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..opts.rounds {
        for (i, m) in modes.iter().enumerate() {
            if accepted[i] == Some(false) {
                continue;
            }
            let tag = format!("r{round}-c{i}");
            let make = |name: &str| pod_with_env(m.namespace, name, env);
            let reviews_before = webhook.metric("imagemap_review_duration_seconds_count").await.unwrap_or(0.0);
            let (mut ms, failed, swaps, wall) =
                create_pods(&apis[i], &make, &tag, opts.pods, opts.concurrency, opts.seconds).await?;
            let reviews = webhook.metric("imagemap_review_duration_seconds_count").await.unwrap_or(0.0);
            latencies[i].extend_from_slice(&ms);
            let run = ModesRun {
                round,
                case: m.case.to_string(),
                stats: CreateStats::new(&mut ms, failed, swaps, wall),
                webhook_reviews: reviews - reviews_before,
            };
            let s = &run.stats;
            eprintln!(
                "  round {round} {:<32} {} pods in {:.1} s = {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  swapped {}  failed {}  webhook reviews {}",
                m.case, s.pods, s.seconds, s.creates_per_s, s.p50_ms, s.p99_ms, s.swapped, s.failed, run.webhook_reviews
            );
            runs.push(run);
            delete_pods(&apis[i]).await?;
        }
    }
    let reviews = webhook.metric("imagemap_review_duration_seconds_count").await.unwrap_or(0.0);
    let sum = webhook.metric("imagemap_review_duration_seconds_sum").await.unwrap_or(0.0);
    webhook.stop();

    let mean_rate = |case: &str| {
        let rates: Vec<f64> = runs.iter().filter(|r| r.case == case).map(|r| r.stats.creates_per_s).collect();
        if rates.is_empty() {
            0.0
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        }
    };
    let baseline = mean_rate(modes[0].case);
    let mut cases = Vec::new();
    for (i, m) in modes.iter().enumerate() {
        let mine: Vec<&ModesRun> = runs.iter().filter(|r| r.case == m.case).collect();
        let rate = mean_rate(m.case);
        cases.push(ModesCase {
            case: m.case.to_string(),
            namespace: m.namespace.to_string(),
            how: m.how.to_string(),
            maps: m.maps.len(),
            policy_accepted: accepted[i],
            error: errors[i].clone(),
            rounds: mine.len(),
            pods: mine.iter().map(|r| r.stats.pods).sum(),
            failed: mine.iter().map(|r| r.stats.failed).sum(),
            swapped: mine.iter().map(|r| r.stats.swapped).sum(),
            webhook_reviews: mine.iter().map(|r| r.webhook_reviews).sum(),
            creates_per_s: rate,
            // 0 when not measured (JSON has no NaN).
            ratio: Some(ratio(rate, baseline)).filter(|r| !mine.is_empty() && r.is_finite()).unwrap_or(0.0),
            p50_ms: quantile(&mut latencies[i], 0.5),
            p99_ms: quantile(&mut latencies[i], 0.99),
        });
    }
    let mut notes = Vec::new();
    if !conditions.iter().any(|c| c == IMAGES_CONDITION) {
        notes.push(format!(
            "the registration had no `{IMAGES_CONDITION}` condition: it lists the last path components of every \
             namespace's selectors, at most {MAX_IMAGE_TOKENS}, and the {total_maps} maps of this run (most of \
             them in the policy modes' namespaces) have more. It would not change which of these Pods reach the webhook: \
             their `app` container contains the component `app` of other namespaces' maps."
        ));
    }
    Ok(ModesResults {
        cases,
        runs,
        rounds: opts.rounds,
        pods_per_run: opts.pods,
        concurrency: opts.concurrency,
        seconds: opts.seconds,
        pod_bytes,
        webhook_conditions: conditions,
        webhook_reviews: reviews,
        webhook_mean_decision_us: if reviews > 0.0 { sum / reviews * 1e6 } else { 0.0 },
        naive_patch: NAIVE_PATCH.to_string(),
        notes,
    })
}
