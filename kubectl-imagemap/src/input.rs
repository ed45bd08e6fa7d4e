//! Reading manifests and maps: files or standard input, YAML or JSON, several documents.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use imagemap_core::maps::MapIndex;
use imagemap_core::mapsfile::parse_maps;
use serde_json::Value;

use crate::client::Cluster;

/// Documents read from a manifest, and whether they were JSON.
pub struct Manifests {
    /// Each document (null documents dropped).
    pub docs: Vec<Value>,
    /// The input was JSON (so JSON is the default output).
    pub json: bool,
}

/// Reads `path` (`-` for standard input).
pub fn read_text(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Parses manifest text: JSON (one value), or YAML with any number of documents.
pub fn parse_manifests(text: &str, name: &str) -> Result<Manifests> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{name} is not valid JSON"))?;
        let docs = match v {
            Value::Array(items) => items,
            v => vec![v],
        };
        return Ok(Manifests { docs, json: true });
    }
    let mut docs = Vec::new();
    for (i, doc) in imagemap_core::yaml::documents(text).into_iter().enumerate() {
        docs.push(doc.with_context(|| format!("{name}: document {} is not valid YAML", i + 1))?);
    }
    Ok(Manifests { docs, json: false })
}

/// The maps to preview with: from `--maps` (applied to every namespace, like the webhook's
/// `--imagemaps-file`), else the cluster's maps of `namespaces` (plus a global namespace).
pub async fn load_index(
    maps_file: Option<&Path>,
    global_namespace: Option<&str>,
    cluster: Option<&Cluster>,
    namespaces: &[String],
) -> Result<MapIndex> {
    let mut index = MapIndex::new(global_namespace.map(String::from));
    if let Some(path) = maps_file {
        let text = read_text(path)?;
        let maps = parse_maps(&text, &path.display().to_string())?;
        for e in index.replace_file(maps.iter()) {
            eprintln!("warning: {e}");
        }
        return Ok(index);
    }
    let cluster = cluster.context("no --maps file and no cluster")?;
    let mut wanted: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    wanted.extend(global_namespace);
    wanted.sort_unstable();
    wanted.dedup();
    for ns in wanted {
        let list = cluster
            .maps_in(ns)
            .list(&Default::default())
            .await
            .map_err(|e| crate::client::friendly(e, "list imagemaps", ns, &cluster.server))?;
        for map in &list.items {
            if let Err(e) = index.upsert(map) {
                eprintln!("warning: {e}");
            }
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_yaml_and_multi_document_inputs() {
        let m = parse_manifests(r#"{"kind":"Pod"}"#, "f").expect("json");
        assert!(m.json);
        assert_eq!(m.docs.len(), 1);
        let m = parse_manifests("kind: Pod\n---\nkind: Service\n---\n", "f").expect("yaml");
        assert!(!m.json);
        assert_eq!(m.docs.len(), 2);
        assert!(parse_manifests("{", "f").is_err());
    }
}
