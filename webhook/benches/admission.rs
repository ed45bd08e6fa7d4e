//! In-process cost of the admission decision against plain serde_json parse + re-serialize of
//! the same body (the baseline), for Pod reviews of about 4, 8 and 16 KB with 0, 1 and all
//! containers matching, and for 10 to 100 000 maps in the cache. Ratios are printed by
//! `scripts/bench-report` from criterion's estimates.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imagemap::admission::review;
use imagemap::maps::MapIndex;
use imagemap::types::{ImageMap, ImageMapSpec, ImageMapStatus};
use serde_json::{json, Value};

/// A Pod CREATE review of roughly `kb` KB with `containers` containers, `matching` of which use
/// the image `app-N` that the maps select.
pub fn review_body(kb: usize, containers: usize, matching: usize) -> Vec<u8> {
    let mut list = Vec::new();
    for i in 0..containers {
        let image = if i < matching { format!("app-{i}") } else { format!("other-{i}:1.0") };
        list.push(json!({
            "name": format!("c{i}"), "image": image, "imagePullPolicy": "Always",
            "ports": [{"containerPort": 8080 + i, "protocol": "TCP"}],
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}},
            "volumeMounts": [{"name": "kube-api-access", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "env": [], }));
    }
    let mut review = json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {
        "uid": "6f5d5e6b-7a0c-4b8e-9d3e-2f1c0a9b8c7d",
        "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"}, "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "web-7d9f8b6c5d-x2k4p", "namespace": "ns-0", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"generateName": "web-7d9f8b6c5d-", "namespace": "ns-0", "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d", "uid": "0b7c0d4e-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"containers": list, "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {}, "schedulerName": "default-scheduler",
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}]},
            "status": {}},
        "oldObject": null, "dryRun": false, "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}});
    // Pad with env vars on the last container until the body reaches the size.
    let mut n = 0;
    while serde_json::to_vec(&review).map(|v| v.len()).unwrap_or(0) < kb * 1024 {
        let env = review["request"]["object"]["spec"]["containers"][containers - 1]["env"].as_array_mut().map(|e| {
            e.push(json!({"name": format!("SETTING_{n}"), "value": format!("value-number-{n}-for-the-service")}));
        });
        if env.is_none() {
            break;
        }
        n += 1;
    }
    serde_json::to_vec(&review).unwrap_or_default()
}

/// `total` maps over 100 namespaces, half name-only, half exact; `app-0..8` in `ns-0` exist.
pub fn index_with(total: usize) -> MapIndex {
    let mut idx = MapIndex::new(None);
    let mut add = |ns: String, name: String, selector: String, exact: bool| {
        let mut m = ImageMap::new(&name, ImageMapSpec { selector, match_exact: exact, ..Default::default() });
        m.metadata.namespace = Some(ns);
        m.status = Some(ImageMapStatus { image: format!("localhost:5000/{name}:tilt-1"), ..Default::default() });
        let _ = idx.upsert(&m);
    };
    for i in 0..8 {
        add("ns-0".into(), format!("app-{i}"), format!("app-{i}"), false);
    }
    for i in 8..total.max(8) {
        add(format!("ns-{}", i % 100), format!("map-{i}"), format!("gcr.io/team/svc-{i}:v1"), i % 2 == 0);
    }
    idx
}

fn baseline(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    serde_json::to_vec(&v).unwrap_or_default()
}

fn sizes_and_matches(c: &mut Criterion) {
    let idx = index_with(10);
    let mut group = c.benchmark_group("review");
    for (kb, containers) in [(4usize, 2usize), (8, 4), (16, 8)] {
        for (label, matching) in [("none", 0), ("one", 1), ("all", containers)] {
            let body = review_body(kb, containers, matching);
            group.throughput(Throughput::Bytes(body.len() as u64));
            let id = format!("{kb}KB-{label}");
            group.bench_with_input(BenchmarkId::new("handler", &id), &body, |b, body| {
                b.iter(|| review(black_box(body), &idx).map(|r| r.body.len()).unwrap_or(0))
            });
            group.bench_with_input(BenchmarkId::new("serde-baseline", &id), &body, |b, body| {
                b.iter(|| baseline(black_box(body)))
            });
        }
    }
    group.finish();
}

fn map_counts(c: &mut Criterion) {
    let body = review_body(8, 4, 1);
    let mut group = c.benchmark_group("maps");
    for total in [10usize, 1_000, 10_000, 100_000] {
        let idx = index_with(total);
        group.bench_with_input(BenchmarkId::new("handler-8KB-one", total), &body, |b, body| {
            b.iter(|| review(black_box(body), &idx).map(|r| r.body.len()).unwrap_or(0))
        });
    }
    group.finish();
}

criterion_group!(benches, sizes_and_matches, map_counts);
criterion_main!(benches);
