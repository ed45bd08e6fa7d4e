//! Rendered Kubernetes objects as JSON: helm's multi-document output split into objects, and
//! the lookups the chart's tests make in them (the one object of a kind, an object by name, a
//! Deployment's arguments, a Secret's data).

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::Value;

/// Splits helm's multi-document output into objects (comment-only documents dropped).
pub fn parse_manifests(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            serde_saphyr::from_str::<Value>(doc).unwrap_or_else(|e| panic!("helm rendered invalid YAML ({e}):\n{doc}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of `kind`.
pub fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind`; panics if there is not exactly one.
pub fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}: {:?}", found.len(), kinds(objects));
    found[0]
}

/// The object of `kind` named `name`; panics if there is none.
pub fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", names(objects)))
}

/// `KIND/NAME` of every object.
pub fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

/// The kinds among `objects`.
pub fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap_or("?").to_string()).collect()
}

/// The string arguments of a Deployment's first container.
pub fn args_of(deployment: &Value) -> Vec<&str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// base64-decoded `data[key]` of a Secret, as text.
pub fn secret_data(secret: &Value, key: &str) -> String {
    let encoded = secret["data"][key].as_str().unwrap_or_else(|| panic!("the Secret has no {key}: {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("Secret data is base64");
    String::from_utf8(bytes).expect("PEM is text")
}

/// The first (only) webhook of a MutatingWebhookConfiguration.
pub fn the_webhook(config: &Value) -> &Value {
    let hooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1, "{config}");
    &hooks[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_become_objects_and_comments_are_dropped() {
        let yaml =
            "---\n# Source: a\n---\nkind: Secret\nmetadata:\n  name: s\n---\nkind: Service\nmetadata:\n  name: v\n";
        let objects = parse_manifests(yaml);
        assert_eq!(names(&objects), ["Secret/s", "Service/v"]);
        assert_eq!(one(&objects, "Service")["metadata"]["name"], "v");
        assert_eq!(named(&objects, "Secret", "s")["kind"], "Secret");
        assert!(all_of(&objects, "Deployment").is_empty());
        let secret = json!({"data": {"k": "dGV4dA=="}});
        assert_eq!(secret_data(&secret, "k"), "text");
    }
}
