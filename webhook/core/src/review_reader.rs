//! Reading an AdmissionReview body in one pass, keeping only what the decision needs: the
//! request's uid, kind, operation, subresource, name and namespace, and of the Pod the views of
//! [`crate::pod_view`] (names, whether labels exist, the swap annotation; container names,
//! images, command, args, env when some map swaps env values, volume image sources, scheduling
//! gates), with strings borrowed from the body unless they had escapes.
//!
//! Everything else (managed fields, resources, probes, most env vars, `oldObject`, `userInfo`)
//! is skipped without being built: a skipped value only has its strings closed and its brackets
//! matched (its scalars are not validated: the API server sends valid JSON). The envelope is
//! strict: `apiVersion`, `uid`, `kind`, `operation`, `subResource`, `name` and `namespace` must
//! be strings (or null where optional) and `object` an object or null. Kept strings are read
//! strictly; a Pod field of another type than expected is skipped and reads as absent, as
//! [`crate::pod_view::PodObject::from_json`] reads it, so an odd Pod is left alone.

use std::borrow::Cow;

use crate::inject::SWAPS_ANNOTATION;
use crate::json_scan::{find_string_end, SkipError};
use crate::pod_view::{ContainerView, EnvVarView, ListField, MetaView, PodObject, SpecView, Text, VolumeView};

/// Deepest nesting accepted: 128 levels (serde_json stops one level sooner), all a skip tracks.
const MAX_DEPTH: usize = crate::json_scan::MAX_ROOM;

/// Why a body is not an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(String);

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
    let text = std::str::from_utf8(body).map_err(|e| ReadError(format!("the body is not UTF-8: {e}")))?;
    let mut s = Scanner { text, bytes: body, pos: 0, depth: 0, keep_env };
    let mut envelope = Envelope::default();
    s.object(|s, key| {
        match &*key {
            "apiVersion" => envelope.api_version = s.opt_string()?.unwrap_or_default(),
            "request" => envelope.request = if s.null()? { None } else { Some(s.request()?) },
            _ => s.skip()?,
        }
        Ok(())
    })?;
    s.ws();
    if s.pos != s.bytes.len() {
        return Err(s.error("trailing characters after the review"));
    }
    Ok(envelope)
}

/// A cursor over the body; `text` and `bytes` are the same UTF-8 body.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    keep_env: bool,
}

type Result<T, E = ReadError> = std::result::Result<T, E>;

impl<'a> Scanner<'a> {
    fn error(&self, what: &str) -> ReadError {
        if self.pos >= self.bytes.len() {
            ReadError(format!("{what}: the body ends at byte {}", self.bytes.len()))
        } else {
            ReadError(format!("{what} at byte {}", self.pos))
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `b` if it comes next.
    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn literal(&mut self, word: &str) -> Result<()> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// Consumes `null` if it comes next.
    fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        Ok(())
    }

    /// Calls `member` with each key of an object; `member` reads or skips its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>) -> Result<()> {
        self.expect(b'{', "expected an object")?;
        self.enter()?;
        if !self.eat(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                let key = self.string()?;
                self.expect(b':', "expected ':'")?;
                member(self, key)?;
                if !self.eat(b',') {
                    self.expect(b'}', "expected ',' or '}'")?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Calls `element` for each element of an array; `element` reads or skips it.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect(b'[', "expected an array")?;
        self.enter()?;
        if !self.eat(b']') {
            loop {
                element(self)?;
                if !self.eat(b',') {
                    self.expect(b']', "expected ',' or ']'")?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A string, borrowed from the body unless it has escapes.
    fn string(&mut self) -> Result<Cow<'a, str>> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let Some(end) = find_string_end(self.bytes, start, true) else {
            self.pos = self.bytes.len();
            return Err(self.error("unterminated string"));
        };
        match self.bytes[end] {
            b'"' => {
                self.pos = end + 1;
                Ok(Cow::Borrowed(&self.text[start..end]))
            }
            b'\\' => self.escaped_string(start).map(Cow::Owned),
            _ => {
                self.pos = end;
                Err(self.error("control character in a string"))
            }
        }
    }

    fn escaped_string(&mut self, start: usize) -> Result<String> {
        let mut out = String::new();
        self.pos = start;
        loop {
            let Some(end) = find_string_end(self.bytes, self.pos, true) else {
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            };
            out.push_str(&self.text[self.pos..end]);
            self.pos = end + 1;
            match self.bytes[end] {
                b'"' => return Ok(out),
                b'\\' => {}
                _ => {
                    self.pos = end;
                    return Err(self.error("control character in a string"));
                }
            }
            let Some(&escape) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match escape {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => out.push(self.unicode_escape()?),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("invalid escape"));
                }
            }
        }
    }

    /// The character of `\uXXXX` (the `\u` consumed), joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone leading surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("invalid surrogate pair in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone trailing surrogate in a \\u escape")),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("truncated \\u escape"))?;
        let mut value = 0;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
            value = value * 16 + v;
        }
        self.pos += 4;
        Ok(value)
    }

    fn opt_string(&mut self) -> Result<Option<Text<'a>>> {
        if self.null()? {
            return Ok(None);
        }
        Ok(Some(self.string()?))
    }

    /// Skips one value.
    fn skip(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.skip_string_body()
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(_) => self.scalar().map(|_| ()),
            None => Err(self.error("expected a value")),
        }
    }

    /// Skips to just past the closing quote (the opening one consumed).
    fn skip_string_body(&mut self) -> Result<()> {
        loop {
            let Some(at) = find_string_end(self.bytes, self.pos, false) else {
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            };
            if self.bytes[at] == b'"' {
                self.pos = at + 1;
                return Ok(());
            }
            self.pos = at + 2;
            if self.pos > self.bytes.len() {
                return Err(self.error("unterminated string"));
            }
        }
    }

    /// Skips an object or array, matching brackets (most of a review is skipped here).
    fn skip_container(&mut self) -> Result<()> {
        match crate::json_scan::skip_container(self.bytes, self.pos, MAX_DEPTH - self.depth) {
            Ok(end) => {
                self.pos = end;
                Ok(())
            }
            Err(e) => {
                let (at, what) = match e {
                    SkipError::UnterminatedString => (self.bytes.len(), "unterminated string"),
                    SkipError::Unterminated => (self.bytes.len(), "unterminated object or array"),
                    SkipError::TooDeep(at) => (at, "nested too deeply"),
                    SkipError::Mismatched(at) => (at, "mismatched bracket"),
                };
                self.pos = at;
                Err(self.error(what))
            }
        }
    }

    /// A number or literal token's text (not validated).
    fn scalar(&mut self) -> Result<&'a str> {
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a value"));
        }
        Ok(&self.text[start..self.pos])
    }

    /// A string, or `None` (the value skipped) when it is of another type.
    fn text(&mut self) -> Result<Option<Text<'a>>> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.skip().map(|()| None)
    }

    /// Calls `member` for each key of an object, or skips a value of another type (`false`).
    fn lenient_object(&mut self, member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>) -> Result<bool> {
        if self.peek() != Some(b'{') {
            return self.skip().map(|()| false);
        }
        self.object(member).map(|()| true)
    }

    /// The elements of an array read by `element`, or `None` (skipped) for another type.
    fn lenient_array<T>(&mut self, mut element: impl FnMut(&mut Self) -> Result<T>) -> Result<Option<Vec<T>>> {
        if self.peek() != Some(b'[') {
            return self.skip().map(|()| None);
        }
        let mut items = Vec::new();
        self.array(|s| {
            items.push(element(s)?);
            Ok(())
        })?;
        Ok(Some(items))
    }

    fn spec(&mut self) -> Result<Option<SpecView<'a>>> {
        let mut spec = SpecView::default();
        let read = self.lenient_object(|s, key| {
            match &*key {
                "containers" => spec.containers = s.lenient_array(Self::container)?,
                "initContainers" => spec.init_containers = s.lenient_array(Self::container)?,
                "volumes" => spec.volumes = s.lenient_array(Self::volume)?,
                "schedulingGates" => spec.scheduling_gates = s.lenient_array(|s| s.text_member("name"))?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(read.then_some(spec))
    }

    fn container(&mut self) -> Result<ContainerView<'a>> {
        let mut c = ContainerView::default();
        self.lenient_object(|s, key| {
            match &*key {
                "name" => c.name = s.text()?,
                "image" => c.image = s.text()?,
                "command" => c.command = Some(s.list_field()?),
                "args" => c.args = Some(s.list_field()?),
                "env" if s.keep_env => c.env = s.lenient_array(Self::env_var)?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(c)
    }

    fn list_field(&mut self) -> Result<ListField<'a>> {
        let mut all_strings = true;
        let items = self.lenient_array(|s| {
            let item = s.text()?;
            all_strings &= item.is_some();
            Ok(item)
        })?;
        Ok(match items {
            Some(items) if all_strings => ListField::Strings(items.into_iter().flatten().collect()),
            _ => ListField::Other,
        })
    }

    fn env_var(&mut self) -> Result<EnvVarView<'a>> {
        let mut e = EnvVarView::default();
        self.lenient_object(|s, key| {
            match &*key {
                "name" => e.name = s.text()?,
                "value" => e.value = s.text()?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(e)
    }

    fn volume(&mut self) -> Result<VolumeView<'a>> {
        let mut v = VolumeView::default();
        self.lenient_object(|s, key| {
            match &*key {
                "name" => v.name = s.text()?,
                "image" => v.image_reference = s.text_member("reference")?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(v)
    }

    /// The string member `name` of an object (`None` when absent, not a string, or not an object).
    fn text_member(&mut self, name: &str) -> Result<Option<Text<'a>>> {
        let mut found = None;
        self.lenient_object(|s, key| {
            if key == name {
                found = s.text()?;
                Ok(())
            } else {
                s.skip()
            }
        })?;
        Ok(found)
    }

    fn request(&mut self) -> Result<Request<'a>> {
        let mut r = Request::default();
        let (mut uid, mut kind, mut operation) = (None, None, None);
        self.object(|s, key| {
            match &*key {
                "uid" => uid = Some(s.string()?),
                "kind" => kind = Some(s.group_and_kind()?),
                "operation" => operation = Some(s.string()?),
                "subResource" => r.sub_resource = s.opt_string()?,
                "name" => r.name = s.opt_string()?.unwrap_or_default(),
                "namespace" => r.namespace = s.opt_string()?,
                "object" => r.object = if s.null()? { None } else { Some(s.pod()?) },
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
    fn group_and_kind(&mut self) -> Result<(Text<'a>, Text<'a>)> {
        let (mut group, mut kind) = (Text::Borrowed(""), None);
        self.object(|s, key| {
            match &*key {
                "group" => group = s.opt_string()?.unwrap_or_default(),
                "kind" => kind = Some(s.string()?),
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok((group, kind.ok_or_else(|| ReadError("the request's kind has no kind".into()))?))
    }

    fn pod(&mut self) -> Result<PodObject<'a>> {
        let mut pod = PodObject::default();
        self.object(|s, key| {
            match &*key {
                "metadata" => pod.metadata = s.metadata()?,
                "spec" => pod.spec = s.spec()?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(pod)
    }

    fn metadata(&mut self) -> Result<Option<MetaView<'a>>> {
        let mut meta = MetaView::default();
        let read = self.lenient_object(|s, key| {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Reads a Pod spec alone, as in a review.
    fn read_spec(json: &str, keep_env: bool) -> Result<Option<SpecView<'_>>, ReadError> {
        let mut s = Scanner { text: json, bytes: json.as_bytes(), pos: 0, depth: 0, keep_env };
        let spec = s.spec()?;
        s.ws();
        if s.pos != s.bytes.len() {
            return Err(s.error("trailing characters after the spec"));
        }
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
