//! The inputs every benchmark shares: Pod CREATE reviews of a given size, and ImageMap sets of a
//! given size. One copy for the criterion bench (`webhook/core/benches/admission.rs` includes this
//! file with `#[path]`) and for `imagemap-bench`, so both measure the same bodies.

use imagemap_core::maps::MapIndex;
use imagemap_core::types::ImageMap;
use serde_json::{json, Value};

/// The namespace of the review and of the maps that match it.
pub const REVIEW_NAMESPACE: &str = "ns-0";

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
        "name": "web-7d9f8b6c5d-x2k4p", "namespace": REVIEW_NAMESPACE, "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"generateName": "web-7d9f8b6c5d-", "namespace": REVIEW_NAMESPACE, "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
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

/// One ImageMap with a built status image.
pub fn image_map(namespace: &str, name: &str, selector: &str, exact: bool) -> ImageMap {
    ImageMap::for_selector(namespace, name, selector)
        .with_match_exact(exact)
        .with_image(&format!("localhost:5000/{name}:tilt-1"))
}

/// `total` maps (at least 8) over 100 namespaces, half name-only, half exact; `app-0..8` in
/// [`REVIEW_NAMESPACE`] are the ones the reviews' `app-N` containers match.
pub fn fixture_maps(total: usize) -> Vec<ImageMap> {
    let mut maps = Vec::with_capacity(total.max(8));
    for i in 0..8 {
        maps.push(image_map(REVIEW_NAMESPACE, &format!("app-{i}"), &format!("app-{i}"), false));
    }
    for i in 8..total.max(8) {
        maps.push(image_map(
            &format!("ns-{}", i % 100),
            &format!("map-{i}"),
            &format!("gcr.io/team/svc-{i}:v1"),
            i.is_multiple_of(2),
        ));
    }
    maps
}

/// [`fixture_maps`] loaded into an index.
pub fn index_with(total: usize) -> MapIndex {
    let mut idx = MapIndex::new(None);
    for m in fixture_maps(total) {
        let _ = idx.upsert(&m);
    }
    idx
}

/// The baseline the handler is compared with: parse the body into a `serde_json::Value` and
/// serialize it again.
pub fn baseline(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The fixed answer of the baseline servers (`imagemap-bench-server`, nginx): allowed, no patch.
pub const ALLOWED_REVIEW: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"6f5d5e6b-7a0c-4b8e-9d3e-2f1c0a9b8c7d","allowed":true}}"#;
