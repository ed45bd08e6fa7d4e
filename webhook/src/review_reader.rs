//! Reading an AdmissionReview body in one pass, keeping only what the decision needs: the
//! request's uid, kind, operation, subresource, name and namespace, and of the Pod its lean
//! metadata (names, labels, annotations) and a pruned spec (container names, images, command,
//! args, env when some map swaps env values, volume names and image sources, scheduling gates).
//!
//! Everything else (managed fields, resources, probes, most env vars, `oldObject`, `userInfo`)
//! is skipped without being built. Skipping through serde_json was most of a review's cost; here
//! a skipped value only has its strings closed and its brackets matched (its scalars are not
//! validated: the API server sends valid JSON), while everything kept is read strictly. Values
//! of kept fields are read whatever their type, so an odd review still parses and the engine
//! then ignores what it does not understand.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use crate::json_scan::{find_string_end, SkipError};

/// Deepest nesting accepted, as serde_json.
const MAX_DEPTH: usize = 128;

/// Why a body is not an AdmissionReview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(String);

/// The AdmissionReview as the decision sees it.
#[derive(Debug, Default)]
pub struct Envelope {
    /// `apiVersion`, echoed in the response (empty when absent).
    pub api_version: String,
    /// `request`; `None` when absent or null.
    pub request: Option<Request>,
}

/// The request fields the decision reads; `uid`, `kind.kind` and `operation` are required.
#[derive(Debug, Default)]
pub struct Request {
    /// Echoed in the response.
    pub uid: String,
    /// `kind.group`.
    pub group: String,
    /// `kind.kind`.
    pub kind: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// `subResource`, if any.
    pub sub_resource: Option<String>,
    /// `name` (empty when absent).
    pub name: String,
    /// `namespace`, if any.
    pub namespace: Option<String>,
    /// `object`, if present and not null.
    pub object: Option<PodObject>,
}

/// The part of a Pod the webhook reads.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodObject {
    /// Names, labels and annotations only; `None` when the object has no metadata.
    pub metadata: Option<ObjectMeta>,
    /// The spec, pruned to what the engine reads; `None` when absent or null.
    pub spec: Option<Value>,
}

/// Reads `body`; env values are kept only when `keep_env` (some map swaps env values).
pub fn read(body: &[u8], keep_env: bool) -> Result<Envelope, ReadError> {
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

/// What to keep of a JSON value at one place in a Pod spec.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Everything.
    Any,
    /// The spec: container lists, volumes, scheduling gates.
    Spec,
    /// A list of containers, env vars or volumes.
    ListOf(Item),
    /// One container, env var or volume.
    One(Item),
}

#[derive(Clone, Copy, Debug)]
enum Item {
    Container,
    Env,
    Volume,
}

impl Shape {
    /// The shape of the member `key` of an object of this shape; `None` skips it.
    fn member(self, key: &str, keep_env: bool) -> Option<Shape> {
        match self {
            Shape::Any => Some(Shape::Any),
            Shape::Spec => match key {
                "containers" | "initContainers" => Some(Shape::ListOf(Item::Container)),
                "volumes" => Some(Shape::ListOf(Item::Volume)),
                "schedulingGates" => Some(Shape::Any),
                _ => None,
            },
            Shape::One(Item::Container) => match key {
                "name" | "image" | "command" | "args" => Some(Shape::Any),
                "env" if keep_env => Some(Shape::ListOf(Item::Env)),
                _ => None,
            },
            Shape::One(Item::Env) => matches!(key, "name" | "value").then_some(Shape::Any),
            Shape::One(Item::Volume) => matches!(key, "name" | "image").then_some(Shape::Any),
            Shape::ListOf(_) => None,
        }
    }

    /// The shape of the elements of an array of this shape.
    fn element(self) -> Shape {
        match self {
            Shape::ListOf(item) => Shape::One(item),
            _ => Shape::Any,
        }
    }
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

    fn opt_string(&mut self) -> Result<Option<String>> {
        if self.null()? {
            return Ok(None);
        }
        Ok(Some(self.string()?.into_owned()))
    }

    fn opt_string_map(&mut self) -> Result<Option<BTreeMap<String, String>>> {
        if self.null()? {
            return Ok(None);
        }
        let mut map = BTreeMap::new();
        self.object(|s, key| {
            let value = s.string()?;
            map.insert(key.into_owned(), value.into_owned());
            Ok(())
        })?;
        Ok(Some(map))
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

    /// Reads a value, keeping of objects only the members `shape` names.
    fn shaped(&mut self, shape: Shape) -> Result<Value> {
        match self.peek() {
            Some(b'{') => {
                let mut map = Map::new();
                self.object(|s, key| match shape.member(&key, s.keep_env) {
                    Some(inner) => {
                        let value = s.shaped(inner)?;
                        map.insert(key.into_owned(), value);
                        Ok(())
                    }
                    None => s.skip(),
                })?;
                Ok(Value::Object(map))
            }
            Some(b'[') => {
                let mut items = Vec::new();
                self.array(|s| {
                    items.push(s.shaped(shape.element())?);
                    Ok(())
                })?;
                Ok(Value::Array(items))
            }
            Some(b'"') => Ok(Value::String(self.string()?.into_owned())),
            Some(_) => {
                let at = self.pos;
                let token = self.scalar()?;
                match token {
                    "null" => Ok(Value::Null),
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => match serde_json::from_str::<Value>(token) {
                        Ok(number @ Value::Number(_)) => Ok(number),
                        _ => {
                            self.pos = at;
                            Err(self.error("invalid number or literal"))
                        }
                    },
                }
            }
            None => Err(self.error("expected a value")),
        }
    }

    fn spec(&mut self) -> Result<Option<Value>> {
        Ok(Some(self.shaped(Shape::Spec)?).filter(|v| !v.is_null()))
    }

    fn request(&mut self) -> Result<Request> {
        let mut r = Request::default();
        let (mut uid, mut kind, mut operation) = (None, None, None);
        self.object(|s, key| {
            match &*key {
                "uid" => uid = Some(s.string()?.into_owned()),
                "kind" => kind = Some(s.group_and_kind()?),
                "operation" => operation = Some(s.string()?.into_owned()),
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
    fn group_and_kind(&mut self) -> Result<(String, String)> {
        let (mut group, mut kind) = (String::new(), None);
        self.object(|s, key| {
            match &*key {
                "group" => group = s.opt_string()?.unwrap_or_default(),
                "kind" => kind = Some(s.string()?.into_owned()),
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok((group, kind.ok_or_else(|| ReadError("the request's kind has no kind".into()))?))
    }

    fn pod(&mut self) -> Result<PodObject> {
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

    fn metadata(&mut self) -> Result<Option<ObjectMeta>> {
        if self.null()? {
            return Ok(None);
        }
        let mut meta = ObjectMeta::default();
        self.object(|s, key| {
            match &*key {
                "name" => meta.name = s.opt_string()?,
                "generateName" => meta.generate_name = s.opt_string()?,
                "namespace" => meta.namespace = s.opt_string()?,
                "labels" => meta.labels = s.opt_string_map()?,
                "annotations" => meta.annotations = s.opt_string_map()?,
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads a Pod spec alone, pruned as in a review.
    fn pruned_spec(json: &str, keep_env: bool) -> Result<Option<Value>, ReadError> {
        let mut s = Scanner { text: json, bytes: json.as_bytes(), pos: 0, depth: 0, keep_env };
        let spec = s.spec()?;
        s.ws();
        if s.pos != s.bytes.len() {
            return Err(s.error("trailing characters after the spec"));
        }
        Ok(spec)
    }

    fn spec(text: &str, env: bool) -> Value {
        pruned_spec(text, env).expect("parses").unwrap_or(Value::Null)
    }

    fn review(request: Value) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn keeps_what_the_engine_reads_and_skips_the_rest() {
        let text = json!({"nodeName": "n", "containers": [{"name": "c", "image": "app", "command": ["x"], "args": [],
            "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "app"}, {"name": "B", "valueFrom": {"x": 1}}]}],
            "volumes": [{"name": "v", "image": {"reference": "app"}}, {"name": "e", "emptyDir": {}}],
            "schedulingGates": [{"name": "g"}], "tolerations": []})
        .to_string();
        assert_eq!(
            spec(&text, true),
            json!({"containers": [{"name": "c", "image": "app", "command": ["x"], "args": [],
                "env": [{"name": "A", "value": "app"}, {"name": "B"}]}],
                "volumes": [{"name": "v", "image": {"reference": "app"}}, {"name": "e"}], "schedulingGates": [{"name": "g"}]})
        );
        assert!(spec(&text, false)["containers"][0].get("env").is_none(), "env skipped when no map swaps env");
    }

    #[test]
    fn odd_shapes_still_parse() {
        assert_eq!(spec(r#"{"containers": "nope"}"#, true), json!({"containers": "nope"}));
        assert_eq!(
            spec(r#"{"containers": [1, null, {"image": 2}]}"#, true),
            json!({"containers": [1, null, {"image": 2}]})
        );
        assert_eq!(spec(r#"{"containers": {"image": "x"}}"#, true), json!({"containers": {}}));
        assert_eq!(spec("null", true), Value::Null);
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let text = r#"{"containers": [{"ima\u0067e": "a\"b\\c\/d\n\u00e9\ud83d\ude00", "name": "\t"}]}"#;
        assert_eq!(spec(text, false), json!({"containers": [{"image": "a\"b\\c/d\n\u{e9}\u{1F600}", "name": "\t"}]}));
    }

    #[test]
    fn reads_the_request_fields_and_the_lean_pod() {
        let body = review(json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE", "namespace": "dev",
            "userInfo": {"username": "me"}, "oldObject": null, "options": {"kind": "CreateOptions"},
            "object": {"metadata": {"generateName": "web-", "labels": {"app": "web"}, "annotations": {"a/b": "c"},
                "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
                "spec": {"containers": [{"name": "c", "image": "app"}]}, "status": {}}}));
        let envelope = read(&body, false).expect("reads");
        assert_eq!(envelope.api_version, "admission.k8s.io/v1");
        let r = envelope.request.expect("request");
        assert_eq!(
            (r.uid.as_str(), r.group.as_str(), r.kind.as_str(), r.operation.as_str()),
            ("u", "", "Pod", "CREATE")
        );
        assert_eq!((r.name.as_str(), r.namespace.as_deref(), r.sub_resource), ("", Some("dev"), None));
        let pod = r.object.expect("object");
        let meta = pod.metadata.expect("metadata");
        assert_eq!(meta.generate_name.as_deref(), Some("web-"));
        assert_eq!(meta.labels, Some([("app".to_string(), "web".to_string())].into()));
        assert_eq!(meta.annotations, Some([("a/b".to_string(), "c".to_string())].into()));
        assert_eq!(meta.managed_fields, None);
        assert_eq!(pod.spec, Some(json!({"containers": [{"name": "c", "image": "app"}]})));
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
        assert!(pruned_spec(&deep_kept, false).expect_err("too deep").to_string().contains("nested too deeply"));
    }

    /// The reference: serde_json's full tree, pruned afterwards.
    fn prune(value: &Value, shape: Shape, keep_env: bool) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter_map(|(k, v)| shape.member(k, keep_env).map(|inner| (k.clone(), prune(v, inner, keep_env))))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| prune(v, shape.element(), keep_env)).collect()),
            other => other.clone(),
        }
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
        #[test]
        fn reads_any_json_spec_as_serde_json_then_pruning_would(value in arb_json(), keep_env: bool, pretty: bool) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.expect("json");
            let parsed: Value = serde_json::from_str(&text).expect("serde_json reads it");
            let want = prune(&parsed, Shape::Spec, keep_env);
            let got = pruned_spec(&text, keep_env).expect("valid JSON reads");
            proptest::prop_assert_eq!(got.unwrap_or(Value::Null), want);
        }

        #[test]
        fn any_bytes_give_a_result_or_an_error_never_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = read(&bytes, true);
        }
    }
}
