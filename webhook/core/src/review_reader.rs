//! Reading an AdmissionReview body in one pass, keeping only what the decision needs: the
//! request's uid, kind, operation, subresource, name and namespace, and of the Pod the views of
//! [`crate::pod_view`] (names, whether labels exist, the swap annotation; container names,
//! images, command, args, env when some map swaps env values, volume image sources, scheduling
//! gates), with strings borrowed from the body unless they had escapes.
//!
//! This module is the schema (which fields are kept); the reading is [`crate::json::cursor`]'s.
//! Everything else (managed fields, resources, probes, most env vars, `oldObject`, `userInfo`)
//! is skipped without being built: a skipped value only has its strings closed and its brackets
//! matched (its scalars are not validated: the API server sends valid JSON). The envelope is
//! strict: `apiVersion`, `uid`, `kind`, `operation`, `subResource`, `name` and `namespace` must
//! be strings (or null where optional) and `object` an object or null. Kept strings are read
//! strictly; a Pod field of another type than expected is skipped and reads as absent, as
//! [`crate::pod_view::PodObject::from_json`] reads it, so an odd Pod is left alone.

use crate::inject::SWAPS_ANNOTATION;
use crate::json::cursor::{Cursor, Result};
use crate::pod_view::{ContainerView, EnvVarView, ListField, MetaView, PodObject, SpecView, Text, VolumeView};

pub use crate::json::cursor::ReadError;

/// The AdmissionReview as the decision sees it; strings borrow from the body.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    /// `apiVersion`, echoed in the response (empty when absent).
    pub api_version: Text<'a>,
    /// `request`; `None` when absent or null.
    pub request: Option<Request<'a>>,
}

/// The request fields the decision reads; `uid`, `kind.kind` and `operation` are required.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// Echoed in the response.
    pub uid: Text<'a>,
    /// `kind.group`.
    pub group: Text<'a>,
    /// `kind.kind`.
    pub kind: Text<'a>,
    /// `CREATE`, `UPDATE`, ...
    pub operation: Text<'a>,
    /// `subResource`, if any.
    pub sub_resource: Option<Text<'a>>,
    /// `name` (empty when absent).
    pub name: Text<'a>,
    /// `namespace`, if any.
    pub namespace: Option<Text<'a>>,
    /// `object`, if present and not null.
    pub object: Option<PodObject<'a>>,
}

/// Reads `body`; env values are kept only when `keep_env` (some map swaps env values).
pub fn read(body: &[u8], keep_env: bool) -> Result<Envelope<'_>, ReadError> {
    let mut s = Cursor::from_utf8(body)?;
    let schema = Schema { keep_env };
    let mut envelope = Envelope::default();
    s.object(|s, key| {
        match &*key {
            "apiVersion" => envelope.api_version = s.opt_string()?.unwrap_or_default(),
            "request" => envelope.request = if s.null()? { None } else { Some(schema.request(s)?) },
            _ => s.skip()?,
        }
        Ok(())
    })?;
    s.finish("trailing characters after the review")?;
    Ok(envelope)
}

/// Which fields are kept, and how each is read: one method per object of the review.
struct Schema {
    /// Keep containers' env (some map swaps env values).
    keep_env: bool,
}

impl Schema {
    fn request<'a>(&self, s: &mut Cursor<'a>) -> Result<Request<'a>> {
        let mut r = Request::default();
        let (mut uid, mut kind, mut operation) = (None, None, None);
        s.object(|s, key| {
            match &*key {
                "uid" => uid = Some(s.string()?),
                "kind" => kind = Some(Self::group_and_kind(s)?),
                "operation" => operation = Some(s.string()?),
                "subResource" => r.sub_resource = s.opt_string()?,
                "name" => r.name = s.opt_string()?.unwrap_or_default(),
                "namespace" => r.namespace = s.opt_string()?,
                "object" => r.object = if s.null()? { None } else { Some(self.pod(s)?) },
                _ => s.skip()?,
            }
            Ok(())
        })?;
        r.uid = uid.ok_or_else(|| ReadError("the request has no uid".into()))?;
        (r.group, r.kind) = kind.ok_or_else(|| ReadError("the request has no kind".into()))?;
        r.operation = operation.ok_or_else(|| ReadError("the request has no operation".into()))?;
        Ok(r)
    }

    /// `kind`: (group, kind).
    fn group_and_kind<'a>(s: &mut Cursor<'a>) -> Result<(Text<'a>, Text<'a>)> {
        let (mut group, mut kind) = (Text::Borrowed(""), None);
        s.object(|s, key| {
            match &*key {
                "group" => group = s.opt_string()?.unwrap_or_default(),
                "kind" => kind = Some(s.string()?),
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok((group, kind.ok_or_else(|| ReadError("the request's kind has no kind".into()))?))
    }

    fn pod<'a>(&self, s: &mut Cursor<'a>) -> Result<PodObject<'a>> {
        let mut pod = PodObject::default();
        s.object(|s, key| {
            match &*key {
                "metadata" => pod.metadata = Self::metadata(s)?,
                "spec" => pod.spec = self.spec(s)?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(pod)
    }

    fn metadata<'a>(s: &mut Cursor<'a>) -> Result<Option<MetaView<'a>>> {
        let mut meta = MetaView::default();
        let read = s.lenient_object(|s, key| {
            match &*key {
                "name" => meta.name = s.text()?,
                "generateName" => meta.generate_name = s.text()?,
                "namespace" => meta.namespace = s.text()?,
                "labels" => meta.labels_present = s.lenient_object(|s, _| s.skip())?,
                "annotations" => {
                    let mut ours = None;
                    let read = s.lenient_object(|s, key| {
                        if key == SWAPS_ANNOTATION {
                            ours = s.text()?;
                            Ok(())
                        } else {
                            s.skip()
                        }
                    })?;
                    meta.annotations = read.then_some(ours);
                }
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(read.then_some(meta))
    }

    fn spec<'a>(&self, s: &mut Cursor<'a>) -> Result<Option<SpecView<'a>>> {
        let mut spec = SpecView::default();
        let read = s.lenient_object(|s, key| {
            match &*key {
                "containers" => spec.containers = s.lenient_array(|s| self.container(s))?,
                "initContainers" => spec.init_containers = s.lenient_array(|s| self.container(s))?,
                "volumes" => spec.volumes = s.lenient_array(Self::volume)?,
                "schedulingGates" => spec.scheduling_gates = s.lenient_array(|s| s.text_member("name"))?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(read.then_some(spec))
    }

    fn container<'a>(&self, s: &mut Cursor<'a>) -> Result<ContainerView<'a>> {
        let mut c = ContainerView::default();
        s.lenient_object(|s, key| {
            match &*key {
                "name" => c.name = s.text()?,
                "image" => c.image = s.text()?,
                "command" => c.command = Some(Self::list_field(s)?),
                "args" => c.args = Some(Self::list_field(s)?),
                "env" if self.keep_env => c.env = s.lenient_array(Self::env_var)?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(c)
    }

    fn list_field<'a>(s: &mut Cursor<'a>) -> Result<ListField<'a>> {
        let mut all_strings = true;
        let items = s.lenient_array(|s| {
            let item = s.text()?;
            all_strings &= item.is_some();
            Ok(item)
        })?;
        Ok(match items {
            Some(items) if all_strings => ListField::Strings(items.into_iter().flatten().collect()),
            _ => ListField::Other,
        })
    }

    fn env_var<'a>(s: &mut Cursor<'a>) -> Result<EnvVarView<'a>> {
        let mut e = EnvVarView::default();
        s.lenient_object(|s, key| {
            match &*key {
                "name" => e.name = s.text()?,
                "value" => e.value = s.text()?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(e)
    }

    fn volume<'a>(s: &mut Cursor<'a>) -> Result<VolumeView<'a>> {
        let mut v = VolumeView::default();
        s.lenient_object(|s, key| {
            match &*key {
                "name" => v.name = s.text()?,
                "image" => v.image_reference = s.text_member("reference")?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::borrow::Cow;

    /// Reads a Pod spec alone, as in a review.
    fn read_spec(json: &str, keep_env: bool) -> Result<Option<SpecView<'_>>, ReadError> {
        let mut s = Cursor::new(json);
        let spec = Schema { keep_env }.spec(&mut s)?;
        s.finish("trailing characters after the spec")?;
        Ok(spec)
    }

    /// What `PodObject::from_json` reads of the same spec, without env when `keep_env` is off.
    fn from_json(spec: &Value, keep_env: bool) -> Option<SpecView<'_>> {
        let mut view = spec.is_object().then(|| SpecView::from_json(spec))?;
        if !keep_env {
            for c in view.containers.iter_mut().chain(view.init_containers.iter_mut()).flatten() {
                c.env = None;
            }
        }
        Some(view)
    }

    fn review(request: Value) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
            .to_string()
            .into_bytes()
    }

    fn text(s: &str) -> Option<Text<'_>> {
        Some(Cow::Borrowed(s))
    }

    #[test]
    fn keeps_what_the_engine_reads_and_skips_the_rest() {
        let text_ = json!({"nodeName": "n", "containers": [{"name": "c", "image": "app", "command": ["x"], "args": [],
            "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "app"}, {"name": "B", "valueFrom": {"x": 1}}]}],
            "volumes": [{"name": "v", "image": {"reference": "app"}}, {"name": "e", "emptyDir": {}}],
            "schedulingGates": [{"name": "g"}], "tolerations": []})
        .to_string();
        let spec = read_spec(&text_, true).expect("reads").expect("spec");
        let c = &spec.containers.as_ref().expect("containers")[0];
        assert_eq!((c.name.clone(), c.image.clone()), (text("c"), text("app")));
        assert_eq!(c.command, Some(ListField::Strings(vec![Cow::Borrowed("x")])));
        assert_eq!(c.args, Some(ListField::Strings(vec![])));
        assert_eq!(
            c.env,
            Some(vec![EnvVarView { name: text("A"), value: text("app") }, EnvVarView { name: text("B"), value: None }])
        );
        assert_eq!(
            spec.volumes,
            Some(vec![
                VolumeView { name: text("v"), image_reference: text("app") },
                VolumeView { name: text("e"), image_reference: None }
            ])
        );
        assert_eq!(spec.scheduling_gates, Some(vec![text("g")]));
        let lean = read_spec(&text_, false).expect("reads").expect("spec");
        assert_eq!(lean.containers.expect("containers")[0].env, None, "env skipped when no map swaps env");
    }

    #[test]
    fn fields_of_another_type_read_as_absent() {
        let spec = read_spec(r#"{"containers": "nope", "volumes": [1, {"image": "x"}]}"#, true).expect("reads");
        let spec = spec.expect("spec");
        assert_eq!(spec.containers, None);
        assert_eq!(spec.volumes, Some(vec![VolumeView::default(), VolumeView::default()]));
        let odd = read_spec(r#"{"containers": [1, null, {"image": 2, "command": "x", "args": ["a", 1]}]}"#, true);
        let containers = odd.expect("reads").expect("spec").containers.expect("containers");
        assert_eq!(containers[..2], [ContainerView::default(), ContainerView::default()]);
        assert_eq!((containers[2].image.clone(), containers[2].command.clone()), (None, Some(ListField::Other)));
        assert_eq!(containers[2].args, Some(ListField::Other));
        assert_eq!(read_spec("null", true).expect("reads"), None);
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let t = r#"{"containers": [{"ima\u0067e": "a\"b\\c\/d\n\u00e9\ud83d\ude00", "name": "\t"}]}"#;
        let c = read_spec(t, false).expect("reads").expect("spec").containers.expect("containers").remove(0);
        assert_eq!(c.image.as_deref(), Some("a\"b\\c/d\n\u{e9}\u{1F600}"));
        assert_eq!(c.name.as_deref(), Some("\t"));
    }

    #[test]
    fn reads_the_request_fields_and_the_lean_pod() {
        let body = review(json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE", "namespace": "dev",
            "userInfo": {"username": "me"}, "oldObject": null, "options": {"kind": "CreateOptions"},
            "object": {"metadata": {"generateName": "web-", "labels": {"app": "web"},
                "annotations": {"a/b": "c", "imagemap.tilt.dev/swaps": "[]"},
                "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
                "spec": {"containers": [{"name": "c", "image": "app"}]}, "status": {}}}));
        let envelope = read(&body, false).expect("reads");
        assert_eq!(envelope.api_version, "admission.k8s.io/v1");
        let r = envelope.request.expect("request");
        assert_eq!((&*r.uid, &*r.group, &*r.kind, &*r.operation), ("u", "", "Pod", "CREATE"));
        assert_eq!((&*r.name, r.namespace.as_deref(), r.sub_resource), ("", Some("dev"), None));
        let pod = r.object.expect("object");
        let meta = pod.metadata.clone().expect("metadata");
        assert_eq!(
            meta,
            MetaView {
                generate_name: text("web-"),
                labels_present: true,
                annotations: Some(text("[]")),
                ..MetaView::default()
            }
        );
        let c = ContainerView { name: text("c"), image: text("app"), ..ContainerView::default() };
        assert_eq!(pod.spec, Some(SpecView { containers: Some(vec![c]), ..SpecView::default() }));
    }

    #[test]
    fn malformed_bodies_name_what_is_wrong_and_where() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "expected an object: the body ends at byte 0"),
            (b"{not json", "expected a string key at byte 1"),
            (b"[]", "expected an object at byte 0"),
            (br#"{"request": {"uid": "x"}}"#, "the request has no kind"),
            (br#"{"request": {"uid": "x", "kind": {"kind": "Pod"}}}"#, "the request has no operation"),
            (br#"{"request": {"kind": {"kind": "Pod"}, "operation": "CREATE"}}"#, "the request has no uid"),
            (br#"{"a": [1, 2}"#, "mismatched bracket at byte 11"),
            (br#"{"a": "open"#, "unterminated string: the body ends at byte 11"),
            (br#"{"a": {"b": [}"#, "mismatched bracket at byte 13"),
            (br#"{"apiVersion": 5}"#, "expected a string at byte 15"),
            (br#"{} x"#, "trailing characters after the review at byte 3"),
            (b"{\"apiVersion\": \"a\x01\"}", "control character in a string at byte 17"),
            (b"{\"apiVersion\": \"\\x\"}", "invalid escape at byte 17"),
            (b"{\"apiVersion\": \"\\ud800\"}", "lone leading surrogate in a \\u escape at byte 22"),
            (&[b'{', b'"', 0xff, b'"', b':', b'1', b'}'], "the body is not UTF-8"),
        ];
        for (body, want) in cases {
            let err = read(body, false).expect_err(&String::from_utf8_lossy(body)).to_string();
            assert!(err.starts_with(want), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn nesting_deeper_than_serde_json_allows_is_refused_not_overflowed() {
        let deep = format!("{{\"skipped\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read(deep.as_bytes(), false).expect_err("too deep").to_string().contains("nested too deeply"));
        let deep_kept = format!("{{\"schedulingGates\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read_spec(&deep_kept, false).expect_err("too deep").to_string().contains("nested too deeply"));
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("containers".to_string()),
            Just("initContainers".to_string()),
            Just("volumes".to_string()),
            Just("schedulingGates".to_string()),
            Just("name".to_string()),
            Just("image".to_string()),
            Just("env".to_string()),
            Just("value".to_string()),
            Just("command".to_string()),
            Just("args".to_string()),
            Just("reference".to_string()),
            "[a-z\"\\\\/\u{e9}\u{1F600}\n]{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[ -~\u{e9}\u{1F600}\n\t\"\\\\]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The fast reader and the plugin's reading of a Pod as JSON agree on every spec.
        #[test]
        fn reads_any_json_spec_as_from_json_does(value in arb_json(), keep_env: bool, pretty: bool) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.expect("json");
            let parsed: Value = serde_json::from_str(&text).expect("serde_json reads it");
            let got = read_spec(&text, keep_env).expect("valid JSON reads");
            proptest::prop_assert_eq!(got, from_json(&parsed, keep_env));
        }

        #[test]
        fn any_bytes_give_a_result_or_an_error_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = read(&bytes, true);
        }
    }
}
