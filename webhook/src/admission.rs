//! The admission decision: an AdmissionReview in, an AdmissionReview out (DESIGN §5, §8).
//! Pure: no I/O, no clock; the server adds transport, metrics and logs around it.

use base64::Engine as _;

use serde::Serialize;

use crate::inject::{inject, Applicable, Injection, MetadataView, PodView, SWAPS_ANNOTATION};
use crate::maps::MapIndex;
use crate::review_reader::{self, PodObject, ReadError, Request};

/// Why a request body is not an AdmissionReview we can answer (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not valid JSON, or not shaped like an AdmissionReview.
    #[error("request body is not a valid AdmissionReview: {0}")]
    Malformed(#[from] ReadError),
    /// The response could not be encoded.
    #[error("could not encode the response: {0}")]
    Encode(#[from] serde_json::Error),
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
        None => (Outcome::Skipped, request.name.clone(), None),
        Some(pod) => {
            let meta = pod.metadata.as_ref();
            let namespace =
                request.namespace.as_deref().or(meta.and_then(|m| m.namespace.as_deref())).unwrap_or("default");
            let name = meta
                .and_then(|m| m.name.as_deref().filter(|n| !n.is_empty()).or(m.generate_name.as_deref()))
                .unwrap_or("");
            let object = format!("{namespace}/{name}");
            let mut injection = inject(view(pod), &Applicable { index, namespace });
            if options.gate_unbuilt {
                crate::gate::gate(view(pod), &mut injection, &options.now);
            }
            (if injection.patch.is_empty() { Outcome::Unchanged } else { Outcome::Patched }, object, Some(injection))
        }
    };
    let api_version = if envelope.api_version.is_empty() { "admission.k8s.io/v1" } else { &envelope.api_version };
    let body = encode(api_version, &request.uid, injection.as_ref())?;
    Ok(Reviewed { body, outcome, uid: request.uid, object, injection })
}

/// The Pod of a Pod CREATE review (not a subresource), if that is what this is.
fn pod_create(request: &Request) -> Option<&PodObject> {
    let is_pod = request.group.is_empty() && request.kind == "Pod";
    let create = request.operation == "CREATE";
    let subresource = request.sub_resource.as_deref().is_some_and(|s| !s.is_empty());
    if !is_pod || !create || subresource {
        return None;
    }
    request.object.as_ref()
}

fn view(pod: &PodObject) -> PodView<'_> {
    let metadata = match pod.metadata.as_ref().map(|m| &m.annotations) {
        None => MetadataView::Absent,
        Some(Some(a)) => MetadataView::Annotations(a.get(SWAPS_ANNOTATION).map(String::as_str)),
        Some(None) => MetadataView::NoAnnotations,
    };
    let labels_present = pod.metadata.as_ref().is_some_and(|m| m.labels.is_some());
    PodView { spec: pod.spec.as_ref(), metadata, labels_present }
}

/// The response AdmissionReview as written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Message<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<AuditAnnotations>,
    /// The JSON patch, base64-encoded as Go's `[]byte` expects.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// `swaps` (how many fields) and `swapped` (`field=map,...`), for the API server's audit log.
#[derive(Serialize)]
struct AuditAnnotations {
    swaps: String,
    swapped: String,
}

/// Encodes the response review: allowed, the uid echoed, the engine's warnings, and the patch
/// with `patchType: JSONPatch` when there is one.
fn encode(api_version: &str, uid: &str, injection: Option<&Injection>) -> Result<Vec<u8>, serde_json::Error> {
    let mut response = Response {
        uid,
        allowed: true,
        status: None,
        warnings: &[],
        audit_annotations: None,
        patch: None,
        patch_type: None,
    };
    if let Some(injection) = injection {
        response.warnings = &injection.warnings;
        if !injection.swaps.is_empty() {
            let mut swapped = String::new();
            for (i, s) in injection.swaps.iter().enumerate() {
                if i > 0 {
                    swapped.push(',');
                }
                swapped.push_str(&s.record.field);
                swapped.push('=');
                swapped.push_str(&s.record.image_map);
            }
            response.audit_annotations = Some(AuditAnnotations { swaps: injection.swaps.len().to_string(), swapped });
        }
        if !injection.patch.is_empty() {
            let patch = serde_json::to_vec(&injection.patch.0)?;
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
            response.patch_type = Some("JSONPatch");
        }
    }
    let mut out = Vec::with_capacity(256 + response.patch.as_ref().map_or(0, String::len));
    serde_json::to_writer(&mut out, &ResponseReview { api_version, kind: "AdmissionReview", response })?;
    Ok(out)
}

/// Encodes an answer for a review we could not read at all: allowed, no patch, with `reason`
/// (the API server ignores `status` when allowed).
pub fn allowed_without_review(uid: &str, reason: &str) -> Vec<u8> {
    let response = Response {
        uid,
        allowed: true,
        status: Some(Message { message: reason }),
        warnings: &[],
        audit_annotations: None,
        patch: None,
        patch_type: None,
    };
    let review = ResponseReview { api_version: "admission.k8s.io/v1", kind: "AdmissionReview", response };
    serde_json::to_vec(&review).unwrap_or_default()
}
