//! The admission decision: an AdmissionReview in, an AdmissionReview out (DESIGN §5, §8).
//! Pure: no I/O, no clock; the server adds transport, metrics and logs around it.

use base64::Engine as _;

use crate::inject::{inject, Applicable, Injection};
use crate::maps::MapIndex;
use crate::pod_view::PodObject;
use crate::review_reader::{self, ReadError, Request};

/// Why a request body is not an AdmissionReview we can answer (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not valid JSON, or not shaped like an AdmissionReview.
    #[error("request body is not a valid AdmissionReview: {0}")]
    Malformed(#[from] ReadError),
    /// The review has no `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// What happened to one review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one field was swapped: the response carries a patch.
    Patched,
    /// A Pod CREATE with nothing to swap.
    Unchanged,
    /// Not a Pod CREATE (another kind, operation or a subresource): allowed untouched.
    Skipped,
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
        }
    }
}

/// An answered review.
#[derive(Debug)]
pub struct Reviewed {
    /// The response AdmissionReview, encoded.
    pub body: Vec<u8>,
    /// What happened.
    pub outcome: Outcome,
    /// The request uid.
    pub uid: String,
    /// `namespace/name` (or `generateName`) of the Pod, for logs.
    pub object: String,
    /// The engine's report for Pod CREATEs.
    pub injection: Option<Injection>,
}

/// Options of the decision beyond the maps.
#[derive(Debug, Clone, Default)]
pub struct ReviewOptions {
    /// Hold Pods whose image waits for an unbuilt map with a scheduling gate (`--gate-unbuilt`).
    pub gate_unbuilt: bool,
    /// The current time (RFC 3339), recorded on gated Pods.
    pub now: String,
}

/// Decodes `body`, decides, and encodes the response AdmissionReview.
pub fn review(body: &[u8], index: &MapIndex) -> Result<Reviewed, ReviewError> {
    review_with(body, index, &ReviewOptions::default())
}

/// [`review`] with options.
pub fn review_with(body: &[u8], index: &MapIndex, options: &ReviewOptions) -> Result<Reviewed, ReviewError> {
    let envelope = review_reader::read(body, index.has_env_maps())?;
    let request = envelope.request.ok_or(ReviewError::NoRequest)?;
    let (outcome, object, injection) = match pod_create(&request) {
        None => (Outcome::Skipped, request.name.to_string(), None),
        Some(pod) => {
            let meta = pod.metadata.as_ref();
            let namespace =
                request.namespace.as_deref().or(meta.and_then(|m| m.namespace.as_deref())).unwrap_or("default");
            let name = meta
                .and_then(|m| m.name.as_deref().filter(|n| !n.is_empty()).or(m.generate_name.as_deref()))
                .unwrap_or("");
            let object = crate::inject::concat(&[namespace, "/", name]);
            let mut injection = inject(pod.view(), &Applicable { index, namespace });
            if options.gate_unbuilt {
                crate::gate::gate(pod.view(), &mut injection, &options.now);
            }
            (if injection.patch.is_empty() { Outcome::Unchanged } else { Outcome::Patched }, object, Some(injection))
        }
    };
    let api_version = if envelope.api_version.is_empty() { "admission.k8s.io/v1" } else { &envelope.api_version };
    let body = encode(api_version, &request.uid, injection.as_ref());
    Ok(Reviewed { body, outcome, uid: request.uid.into_owned(), object, injection })
}

/// The Pod of a Pod CREATE review (not a subresource), if that is what this is.
fn pod_create<'r, 'a>(request: &'r Request<'a>) -> Option<&'r PodObject<'a>> {
    let is_pod = request.group.is_empty() && request.kind == "Pod";
    let create = request.operation == "CREATE";
    let subresource = request.sub_resource.as_deref().is_some_and(|s| !s.is_empty());
    if !is_pod || !create || subresource {
        return None;
    }
    request.object.as_ref()
}

/// Encodes the response review: allowed, the uid echoed, the engine's warnings, audit
/// annotations, and the patch (base64, as Go's `[]byte` expects) with `patchType: JSONPatch`
/// when there is one.
fn encode(api_version: &str, uid: &str, injection: Option<&Injection>) -> Vec<u8> {
    use crate::json_writer::string;
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"apiVersion\":");
    string(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    string(&mut out, uid);
    out.extend_from_slice(b",\"allowed\":true");
    if let Some(injection) = injection {
        if !injection.warnings.is_empty() {
            out.extend_from_slice(b",\"warnings\":[");
            for (i, w) in injection.warnings.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(&mut out, w);
            }
            out.push(b']');
        }
        if !injection.swaps.is_empty() {
            // For the API server's audit log: how many fields, and `field=map,...`.
            let mut swapped = String::new();
            for (i, s) in injection.swaps.iter().enumerate() {
                if i > 0 {
                    swapped.push(',');
                }
                swapped.push_str(&s.record.field);
                swapped.push('=');
                swapped.push_str(&s.record.image_map);
            }
            out.extend_from_slice(b",\"auditAnnotations\":{\"swaps\":");
            string(&mut out, &injection.swaps.len().to_string());
            out.extend_from_slice(b",\"swapped\":");
            string(&mut out, &swapped);
            out.push(b'}');
        }
        if !injection.patch.is_empty() {
            let mut patch = Vec::with_capacity(512);
            injection.patch.write_json(&mut patch);
            out.extend_from_slice(b",\"patch\":\"");
            let start = out.len();
            out.resize(start + base64::encoded_len(patch.len(), true).unwrap_or(0), 0);
            let written =
                base64::engine::general_purpose::STANDARD.encode_slice(&patch, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.extend_from_slice(b"\",\"patchType\":\"JSONPatch\"");
        }
    }
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_echoes_uid_and_api_version_as_valid_json_whatever_they_contain() {
        let body = serde_json::json!({"apiVersion": "a\"b\\c\n", "request": {"uid": "u\"\u{1}é",
            "kind": {"group": "", "kind": "Pod"}, "operation": "DELETE"}});
        let reviewed = review(body.to_string().as_bytes(), &MapIndex::new(None)).expect("reviewed");
        let response: serde_json::Value = serde_json::from_slice(&reviewed.body).expect("valid JSON");
        assert_eq!(response["apiVersion"], "a\"b\\c\n");
        assert_eq!(response["response"]["uid"], "u\"\u{1}é");
        assert_eq!(response["response"]["allowed"], true);
    }
}
