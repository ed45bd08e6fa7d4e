//! The parts of a Pod the engine reads, with their strings borrowed from wherever the Pod was
//! read: the review reader fills them straight from an AdmissionReview body, [`PodObject::from_json`]
//! from a Pod as JSON (the plugin's manifests, the gate controller's live Pods). Both read the
//! same way: a field of another JSON type than the engine expects reads as absent, so an odd Pod
//! is left alone rather than refused.

use std::borrow::Cow;

use serde_json::Value;

use crate::inject::SWAPS_ANNOTATION;

/// A string read from a Pod: borrowed unless it had to be unescaped.
pub type Text<'a> = Cow<'a, str>;

/// A Pod as the engine reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodObject<'a> {
    /// `metadata`, when an object.
    pub metadata: Option<MetaView<'a>>,
    /// `spec`, when an object.
    pub spec: Option<SpecView<'a>>,
}

/// What the engine reads of a Pod's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaView<'a> {
    /// `name`.
    pub name: Option<Text<'a>>,
    /// `generateName`.
    pub generate_name: Option<Text<'a>>,
    /// `namespace`.
    pub namespace: Option<Text<'a>>,
    /// `labels` is an object.
    pub labels_present: bool,
    /// `annotations`, when it is an object: the swap annotation's text, if it has one.
    pub annotations: Option<Option<Text<'a>>>,
}

/// What the engine reads of a Pod spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecView<'a> {
    /// `containers`, when an array (an entry that is not an object reads as an empty container).
    pub containers: Option<Vec<ContainerView<'a>>>,
    /// `initContainers`, likewise.
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    /// `volumes`, when an array.
    pub volumes: Option<Vec<VolumeView<'a>>>,
    /// `schedulingGates`, when an array: each gate's name.
    pub scheduling_gates: Option<Vec<Option<Text<'a>>>>,
}

/// What the engine reads of a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerView<'a> {
    /// `name`.
    pub name: Option<Text<'a>>,
    /// `image`.
    pub image: Option<Text<'a>>,
    /// `command`, when present.
    pub command: Option<ListField<'a>>,
    /// `args`, when present.
    pub args: Option<ListField<'a>>,
    /// `env`, when an array; the review reader reads it only when some map swaps env values.
    pub env: Option<Vec<EnvVarView<'a>>>,
}

/// A present `command` or `args`.
#[derive(Debug, Clone, PartialEq)]
pub enum ListField<'a> {
    /// An array of strings.
    Strings(Vec<Text<'a>>),
    /// Anything else (null, another type, an array with a non-string).
    Other,
}

/// An `env` entry: its name and literal value (`valueFrom` is never read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvVarView<'a> {
    /// `name`.
    pub name: Option<Text<'a>>,
    /// `value`.
    pub value: Option<Text<'a>>,
}

/// What the engine reads of a volume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VolumeView<'a> {
    /// `name`.
    pub name: Option<Text<'a>>,
    /// `image.reference` (an image volume's source).
    pub image_reference: Option<Text<'a>>,
}

/// The parts of a Pod the engine reads, as one borrowed view.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// The spec.
    pub spec: Option<&'a SpecView<'a>>,
    /// What `metadata` looks like, to place the swap annotation.
    pub metadata: MetadataView<'a>,
    /// `metadata.labels` is an object.
    pub labels_present: bool,
}

/// The shape of a Pod's metadata, as far as the swap annotation is concerned.
#[derive(Debug, Clone, Copy)]
pub enum MetadataView<'a> {
    /// No `metadata` object at all.
    Absent,
    /// `metadata` whose `annotations` is missing or not an object.
    NoAnnotations,
    /// `metadata.annotations` is an object; holds our annotation's text if present.
    Annotations(Option<&'a str>),
}

impl<'a> PodObject<'a> {
    /// Reads a Pod given as JSON.
    pub fn from_json(pod: &'a Value) -> Self {
        PodObject {
            metadata: pod.get("metadata").and_then(Value::as_object).map(|m| MetaView {
                name: text(m.get("name")),
                generate_name: text(m.get("generateName")),
                namespace: text(m.get("namespace")),
                labels_present: m.get("labels").is_some_and(Value::is_object),
                annotations: m.get("annotations").and_then(Value::as_object).map(|a| text(a.get(SWAPS_ANNOTATION))),
            }),
            spec: pod.get("spec").filter(|s| s.is_object()).map(SpecView::from_json),
        }
    }

    /// The view the engine takes.
    pub fn view(&self) -> PodView<'_> {
        let metadata = match &self.metadata {
            None => MetadataView::Absent,
            Some(MetaView { annotations: None, .. }) => MetadataView::NoAnnotations,
            Some(MetaView { annotations: Some(ours), .. }) => MetadataView::Annotations(ours.as_deref()),
        };
        let labels_present = self.metadata.as_ref().is_some_and(|m| m.labels_present);
        PodView { spec: self.spec.as_ref(), metadata, labels_present }
    }
}

impl<'a> SpecView<'a> {
    /// Reads a spec given as JSON.
    pub fn from_json(spec: &'a Value) -> Self {
        let list = |key: &str| spec.get(key).and_then(Value::as_array);
        SpecView {
            containers: list("containers").map(|l| l.iter().map(ContainerView::from_json).collect()),
            init_containers: list("initContainers").map(|l| l.iter().map(ContainerView::from_json).collect()),
            volumes: list("volumes").map(|l| {
                l.iter()
                    .map(|v| VolumeView {
                        name: text(v.get("name")),
                        image_reference: text(v.get("image").and_then(|i| i.get("reference"))),
                    })
                    .collect()
            }),
            scheduling_gates: list("schedulingGates").map(|l| l.iter().map(|g| text(g.get("name"))).collect()),
        }
    }
}

impl<'a> ContainerView<'a> {
    /// Reads a container given as JSON.
    pub fn from_json(c: &'a Value) -> Self {
        ContainerView {
            name: text(c.get("name")),
            image: text(c.get("image")),
            command: c.get("command").map(ListField::from_json),
            args: c.get("args").map(ListField::from_json),
            env: c.get("env").and_then(Value::as_array).map(|env| {
                env.iter().map(|e| EnvVarView { name: text(e.get("name")), value: text(e.get("value")) }).collect()
            }),
        }
    }
}

impl<'a> ListField<'a> {
    /// Reads a present `command` or `args` given as JSON.
    pub fn from_json(value: &'a Value) -> Self {
        let strings = value.as_array().and_then(|items| items.iter().map(|i| text(Some(i))).collect());
        strings.map_or(ListField::Other, ListField::Strings)
    }

    /// The same strings as `want`, in order.
    pub fn is(&self, want: &[String]) -> bool {
        matches!(self, ListField::Strings(cur) if cur.len() == want.len() && cur.iter().zip(want).all(|(a, b)| a == b))
    }
}

fn text(value: Option<&Value>) -> Option<Text<'_>> {
    value.and_then(Value::as_str).map(Cow::Borrowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_of_another_type_read_as_absent_and_keep_their_place() {
        let pod = json!({"metadata": {"name": 5, "labels": [], "annotations": {"x": "y"}},
            "spec": {"containers": [1, {"image": "app", "command": ["a", 2], "args": null}], "volumes": "no"}});
        let read = PodObject::from_json(&pod);
        let meta = read.metadata.as_ref().expect("metadata");
        assert_eq!((meta.name.as_deref(), meta.labels_present, meta.annotations.clone()), (None, false, Some(None)));
        let spec = read.spec.as_ref().expect("spec");
        let containers = spec.containers.as_ref().expect("containers");
        assert_eq!(containers[0], ContainerView::default());
        assert_eq!(containers[1].image.as_deref(), Some("app"));
        assert_eq!(
            (containers[1].command.clone(), containers[1].args.clone()),
            (Some(ListField::Other), Some(ListField::Other))
        );
        assert_eq!(spec.volumes, None);
        assert!(matches!(read.view().metadata, MetadataView::Annotations(None)));
    }

    #[test]
    fn a_list_field_is_the_same_only_with_the_same_strings_in_order() {
        let value = json!(["a", "b"]);
        let list = ListField::from_json(&value);
        assert!(list.is(&["a".into(), "b".into()]));
        assert!(!list.is(&["b".into(), "a".into()]));
        assert!(!ListField::Other.is(&[]));
    }
}
