//! What Pods on the real node show: which build they run.

use serde_json::Value;

use crate::ControlPlane;

/// The first Running, Ready Pod of `ns` labelled `label` whose container 0 runs an image with
/// `digest` and whose log shows `marker`; `None` until there is one.
pub fn running_build(plane: &ControlPlane, ns: &str, label: &str, digest: &str, marker: &str) -> Option<Value> {
    let list: Value = serde_json::from_str(&plane.kubectl_ok(["get", "pods", "-n", ns, "-l", label, "-o", "json"]))
        .expect("kubectl printed JSON");
    for pod in list["items"].as_array().into_iter().flatten() {
        let status = &pod["status"]["containerStatuses"][0];
        let image_id = status["imageID"].as_str().unwrap_or_default();
        if pod["status"]["phase"] != "Running" || status["ready"] != true || !image_id.ends_with(digest) {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let log = plane.kubectl(["logs", name, "-n", ns]);
        if String::from_utf8_lossy(&log.stdout).contains(marker) {
            return Some(pod.clone());
        }
    }
    None
}
