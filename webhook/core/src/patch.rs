//! RFC 6902 JSON patches built operation by operation, with RFC 6901 pointer escaping.

use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

/// Escapes one JSON-pointer token: `~` becomes `~0` and `/` becomes `~1` (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON patch under construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch(pub Vec<PatchOperation>);

impl Patch {
    /// Appends an `add` (sets an object member, whether present or not).
    pub fn add(&mut self, path: &str, value: Value) {
        self.0.push(PatchOperation::Add(AddOperation { path: pointer(path), value }));
    }

    /// Appends a `replace` of an existing value.
    pub fn replace(&mut self, path: &str, value: Value) {
        self.0.push(PatchOperation::Replace(ReplaceOperation { path: pointer(path), value }));
    }

    /// Appends a `remove`.
    pub fn remove(&mut self, path: &str) {
        self.0.push(PatchOperation::Remove(RemoveOperation { path: pointer(path) }));
    }

    /// Puts a `test` first: the whole patch fails unless `path` holds `value` when applied.
    pub fn test_first(&mut self, path: &str, value: Value) {
        self.0.insert(0, PatchOperation::Test(json_patch::TestOperation { path: pointer(path), value }));
    }

    /// True when the patch has no operation.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the patch as compact JSON, as serde_json writes it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use crate::json_writer::{string, value};
        out.push(b'[');
        for (i, op) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let (name, path, operand) = match op {
                PatchOperation::Add(a) => ("add", a.path.as_str(), Some(&a.value)),
                PatchOperation::Replace(r) => ("replace", r.path.as_str(), Some(&r.value)),
                PatchOperation::Remove(r) => ("remove", r.path.as_str(), None),
                PatchOperation::Test(t) => ("test", t.path.as_str(), Some(&t.value)),
                // Never built here; written the slow way if they ever are.
                other => {
                    let _ = serde_json::to_writer(&mut *out, other);
                    continue;
                }
            };
            out.extend_from_slice(b"{\"op\":\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\",\"path\":");
            string(out, path);
            if let Some(operand) = operand {
                out.extend_from_slice(b",\"value\":");
                value(out, operand);
            }
            out.push(b'}');
        }
        out.push(b']');
    }

    /// The patch as `json_patch::Patch`.
    pub fn into_json_patch(self) -> json_patch::Patch {
        json_patch::Patch(self.0)
    }

    /// Applies the patch to a copy of `doc`.
    pub fn apply_to(&self, doc: &Value) -> Result<Value, json_patch::PatchError> {
        let mut out = doc.clone();
        json_patch::patch(&mut out, &self.0)?;
        Ok(out)
    }
}

/// The pointer for `path`. Invariant: every path is built by this crate as `/`-joined tokens
/// escaped with [`escape`], below the root. A path breaking it is a bug here and panics (the
/// review fails, the API server applies the failure policy) rather than becoming another
/// pointer: the root pointer would make an `add` replace the whole Pod.
fn pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    match json_patch::jsonptr::PointerBuf::parse(path) {
        Ok(p) if !p.is_root() => p,
        Ok(_) => panic!("patch path {path:?} is the root: an operation there would replace the whole object"),
        Err(e) => panic!("patch path {path:?} is not a JSON pointer: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_the_json_serde_json_writes() {
        let mut p = Patch::default();
        p.add("/metadata/annotations/a~1b", json!({"k": "v\"q", "n": [1, null]}));
        p.replace("/spec/containers/0/image", json!("x"));
        p.remove("/spec/containers/0/args");
        let mut out = Vec::new();
        p.write_json(&mut out);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), serde_json::to_string(&p.0).expect("json"));
    }

    #[test]
    #[should_panic(expected = "is the root")]
    fn an_operation_at_the_root_is_refused_not_applied_to_the_whole_object() {
        Patch::default().add("", json!({}));
    }

    #[test]
    #[should_panic(expected = "not a JSON pointer")]
    fn a_path_that_is_not_a_pointer_is_refused_not_turned_into_the_root() {
        Patch::default().add("metadata/labels", json!({}));
    }

    #[test]
    fn a_test_first_makes_the_patch_fail_when_the_value_changed() {
        let mut p = Patch::default();
        p.remove("/a/0");
        p.test_first("/a/0", json!("x"));
        assert!(p.apply_to(&json!({"a": ["y"]})).is_err());
        assert_eq!(p.apply_to(&json!({"a": ["x"]})).expect("applies"), json!({"a": []}));
    }

    #[test]
    fn escapes_tilde_before_slash() {
        assert_eq!(escape("imagemap.tilt.dev/swaps"), "imagemap.tilt.dev~1swaps");
        assert_eq!(escape("a~/b"), "a~0~1b");
    }

    #[test]
    fn escaped_annotation_key_round_trips_through_apply() {
        let mut p = Patch::default();
        p.add(&format!("/metadata/annotations/{}", escape("x.io/a~b")), json!("v"));
        let out = p.apply_to(&json!({"metadata": {"annotations": {}}})).expect("applies");
        assert_eq!(out["metadata"]["annotations"]["x.io/a~b"], "v");
        let wire = serde_json::to_value(p.into_json_patch()).expect("serializes");
        assert_eq!(wire[0]["path"], "/metadata/annotations/x.io~1a~0b");
    }
}
