//! `kubectl imagemap inject -f FILE`: the manifests as the webhook would change them. With
//! `--maps` no cluster is contacted at all.

use anyhow::Result;
use imagemap_core::manifests::inject_object;
use serde_json::{json, Value};

use crate::cli::{Global, InjectArgs, ObjectOutput};
use crate::client::Cluster;
use crate::input::{load_index, parse_manifests, read_text};
use crate::render::{json_text, yaml_text};

/// Runs `inject`.
pub async fn run(global: &Global, args: &InjectArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &InjectArgs) -> Result<String> {
    let text = read_text(&args.file)?;
    let mut manifests = parse_manifests(&text, &args.file.display().to_string())?;
    let cluster = match args.maps {
        Some(_) => None,
        None => Some(Cluster::connect(global).await?),
    };
    let default_ns = global
        .namespace
        .clone()
        .or_else(|| cluster.as_ref().map(|c| c.namespace.clone()))
        .unwrap_or_else(|| "default".into());
    let mut namespaces = vec![default_ns.clone()];
    collect_namespaces(&manifests.docs, &mut namespaces);
    let index =
        load_index(args.maps.as_deref(), args.global_namespace.as_deref(), cluster.as_ref(), &namespaces).await?;
    for doc in &mut manifests.docs {
        for result in inject_object(doc, &default_ns, &index)? {
            for w in &result.injection.warnings {
                eprintln!("{}: {w}", result.object);
            }
        }
    }
    let format = args.output.unwrap_or(if manifests.json { ObjectOutput::Json } else { ObjectOutput::Yaml });
    Ok(render_docs(&manifests.docs, format))
}

/// Prints documents in the input's shape: one object alone, several as YAML documents or a JSON
/// `List`.
pub fn render_docs(docs: &[Value], format: ObjectOutput) -> String {
    match (format, docs) {
        (ObjectOutput::Json, [one]) => json_text(one),
        (ObjectOutput::Json, many) => json_text(&json!({"apiVersion": "v1", "kind": "List", "items": many})),
        (ObjectOutput::Yaml, docs) => docs.iter().map(yaml_text).collect::<Vec<_>>().join("---\n"),
        (ObjectOutput::Name, docs) => docs
            .iter()
            .map(|d| {
                let kind = d.get("kind").and_then(Value::as_str).unwrap_or("").to_lowercase();
                format!("{kind}/{}\n", d.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""))
            })
            .collect(),
    }
}

fn collect_namespaces(docs: &[Value], out: &mut Vec<String>) {
    for d in docs {
        if let Some(ns) = d.pointer("/metadata/namespace").and_then(Value::as_str) {
            out.push(ns.to_string());
        }
        if let Some(items) = d.get("items").and_then(Value::as_array) {
            collect_namespaces(items, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_input_shape() {
        let docs = vec![
            json!({"kind": "Pod", "metadata": {"name": "a"}}),
            json!({"kind": "Service", "metadata": {"name": "b"}}),
        ];
        let yaml = render_docs(&docs, ObjectOutput::Yaml);
        assert_eq!(yaml.matches("---\n").count(), 1);
        let list: Value = serde_json::from_str(&render_docs(&docs, ObjectOutput::Json)).expect("json");
        assert_eq!(list["kind"], "List");
        let one: Value = serde_json::from_str(&render_docs(&docs[..1], ObjectOutput::Json)).expect("json");
        assert_eq!(one, docs[0]);
        assert_eq!(render_docs(&docs, ObjectOutput::Name), "pod/a\nservice/b\n");
    }
}
