//! The admission decision: an AdmissionReview in, an AdmissionReview out (DESIGN §5, §8).
//! Pure: no I/O, no clock; the server adds transport, metrics and logs around it.

use base64::Engine as _;
use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{NamespaceResourceScope, TypeMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inject::{inject, Applicable, Injection, MetadataView, PodView, SWAPS_ANNOTATION};
use crate::maps::MapIndex;

/// Why a request body is not an AdmissionReview we can answer (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not valid JSON, or not shaped like an AdmissionReview.
    #[error("request body is not a valid AdmissionReview: {0}")]
    Malformed(#[from] serde_json::Error),
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

/// The part of a Pod the webhook reads: metadata and spec, as JSON. Everything else in the
/// object (status, managed fields' contents aside) is skipped while parsing, not materialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodObject {
    /// The Pod's metadata (without managed fields, which can be large and are never read);
    /// `None` when the object has none.
    #[serde(default, deserialize_with = "lean_metadata")]
    pub metadata: Option<ObjectMeta>,
    #[serde(skip)]
    empty: ObjectMeta,
    /// The Pod's spec, untyped, holding only the fields the engine reads (see `pruned`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::pruned::spec")]
    pub spec: Option<Value>,
}

/// The metadata fields the webhook reads; everything else (managed fields above all) is skipped.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LeanMetadata {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

fn lean_metadata<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ObjectMeta>, D::Error> {
    Ok(Option::<LeanMetadata>::deserialize(d)?.map(|m| ObjectMeta {
        name: m.name,
        generate_name: m.generate_name,
        namespace: m.namespace,
        labels: m.labels,
        annotations: m.annotations,
        ..Default::default()
    }))
}

impl kube::Resource for PodObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        self.metadata.as_ref().unwrap_or(&self.empty)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.metadata.get_or_insert_with(ObjectMeta::default)
    }
}

/// The AdmissionReview envelope. kube's `AdmissionReview` flattens its type meta, which makes
/// serde buffer the whole body before parsing it again; this envelope reads the same JSON in one
/// pass and hands kube's `AdmissionRequest` through.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest<PodObject>>,
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
    let envelope: Envelope = crate::pruned::with_env(index.has_env_maps(), || serde_json::from_slice(body))?;
    let mut request = envelope.request.ok_or(ReviewError::NoRequest)?;
    request.types = TypeMeta { api_version: envelope.api_version, kind: envelope.kind };
    let mut response = AdmissionResponse::from(&request);
    let (outcome, object, injection) = match pod_create(&request) {
        None => (Outcome::Skipped, request.name.clone(), None),
        Some(pod) => {
            let meta = kube::Resource::meta(pod);
            let namespace = request.namespace.as_deref().or(meta.namespace.as_deref()).unwrap_or("default");
            let name = meta.name.as_deref().filter(|n| !n.is_empty()).or(meta.generate_name.as_deref());
            let object = format!("{namespace}/{}", name.unwrap_or(""));
            let mut injection = inject(view(pod), &Applicable { index, namespace });
            if options.gate_unbuilt {
                crate::gate::gate(view(pod), &mut injection, &options.now);
            }
            (if injection.patch.is_empty() { Outcome::Unchanged } else { Outcome::Patched }, object, Some(injection))
        }
    };
    if let Some(injection) = &injection {
        if !injection.warnings.is_empty() {
            response.warnings = Some(injection.warnings.clone());
        }
        if !injection.swaps.is_empty() {
            response.audit_annotations.insert("swaps".into(), injection.swaps.len().to_string());
            let fields: Vec<String> =
                injection.swaps.iter().map(|s| format!("{}={}", s.record.field, s.record.image_map)).collect();
            response.audit_annotations.insert("swapped".into(), fields.join(","));
        }
    }
    let patch = match &injection {
        Some(i) if !i.patch.is_empty() => Some(serde_json::to_vec(&i.patch.0)?),
        _ => None,
    };
    let uid = response.uid.clone();
    Ok(Reviewed { body: encode(response, patch)?, outcome, uid, object, injection })
}

/// The Pod of a Pod CREATE review (not a subresource), if that is what this is.
fn pod_create(request: &AdmissionRequest<PodObject>) -> Option<&PodObject> {
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let create = matches!(request.operation, Operation::Create);
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

/// Encodes the response review with `patch` (a serialized JSON patch), base64-encoded as Go's
/// `[]byte` expects (kube-core alone would write an array of numbers), and `patchType: JSONPatch`.
fn encode(response: AdmissionResponse, patch: Option<Vec<u8>>) -> Result<Vec<u8>, serde_json::Error> {
    let types = response.types.clone();
    let mut fields = serde_json::to_value(&response)?;
    if let (Some(patch), Value::Object(r)) = (patch, &mut fields) {
        r.insert("patch".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(patch)));
        r.insert("patchType".into(), Value::String("JSONPatch".into()));
    }
    let api_version = if types.api_version.is_empty() { "admission.k8s.io/v1".to_string() } else { types.api_version };
    serde_json::to_vec(&serde_json::json!({ "apiVersion": api_version, "kind": "AdmissionReview", "response": fields }))
}

/// Encodes an answer for a review we could not read at all: allowed, no patch, with `reason`
/// (the API server ignores `status` when allowed).
pub fn allowed_without_review(uid: &str, reason: &str) -> Vec<u8> {
    let value = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": { "uid": uid, "allowed": true, "status": { "message": reason } }
    });
    serde_json::to_vec(&value).unwrap_or_default()
}
