//! `kubectl imagemap explain IMAGE | -f FILE | pod/NAME`: which map matched which field and why.
//! The winner always comes from the engine itself, so the explanation cannot disagree with it.

use anyhow::{bail, Result};
use imagemap_core::inject::{inject_json, parse_records, Applicable, SWAPS_ANNOTATION};
use imagemap_core::manifests::inject_object;
use imagemap_core::maps::{MapIndex, Scope};
use imagemap_core::reference::Reference;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{json, Value};

use crate::cli::{ExplainArgs, Global};
use crate::client::Cluster;
use crate::input::{load_index, parse_manifests, read_text};
use crate::render::escape;

/// Explains how `value` (an image) would be swapped in `namespace` (pure). Text from the
/// cluster or a file is printed [`escape`]d, here and in the other explanations.
pub fn explain_image(index: &MapIndex, namespace: &str, value: &str) -> String {
    let reference = match Reference::parse(value) {
        Ok(r) => r,
        Err(e) => {
            let (value, e) = (escape(value), escape(&e.to_string()).into_owned());
            return format!("{value}: not a valid image reference ({e}); the webhook leaves it unchanged\n");
        }
    };
    let mut out = format!("{}\n  normalized: {} (name {})\n", escape(value), reference.full(), reference.name());
    let pod = json!({"metadata": {}, "spec": {"containers": [{"name": "explain", "image": value}]}});
    let injection = inject_json(&pod, &Applicable { index, namespace });
    let winner = injection.swaps.first();
    let candidates: Vec<_> = index.candidates(namespace, reference.name()).iter().collect();
    if candidates.is_empty() {
        out.push_str(&format!(
            "  no ImageMap in namespace {:?} (or global) selects {}: unchanged\n",
            escape(namespace),
            reference.name()
        ));
        return out;
    }
    for (map, scope) in candidates {
        let scope = match scope {
            Scope::Local => "local",
            Scope::Global => "global",
        };
        let how = if map.match_exact { "exact" } else { "name-only" };
        let verdict = if !map.matches(&reference) {
            format!("no match: matchExact needs the full string {}", map.selector.full())
        } else if let Err(why) = &map.target {
            format!("matches but unusable: {}", escape(&why.to_string()))
        } else if winner.is_some_and(|w| w.record.image_map == map.id) {
            format!("WINS: swaps to {}", escape(winner.map_or("", |w| w.record.image.as_str())))
        } else {
            "matches but outranked (exact > name-only, local > global, then lowest name)".to_string()
        };
        out.push_str(&format!(
            "  ImageMap {} ({how}, {scope}, selector {}): {verdict}\n",
            escape(&map.id),
            escape(&map.selector.familiar())
        ));
    }
    if winner.is_none() {
        out.push_str("  result: unchanged\n");
    }
    out
}

/// Explains every swap the engine makes in a manifest's Pods (pure).
pub fn explain_manifests(
    index: &MapIndex,
    namespace: &str,
    docs: &[Value],
) -> Result<String, imagemap_core::manifests::ManifestError> {
    let mut out = String::new();
    for doc in docs {
        let mut copy = doc.clone();
        for result in inject_object(&mut copy, namespace, index)? {
            out.push_str(&format!("{} (namespace {}):\n", escape(&result.object), escape(&result.namespace)));
            if result.injection.swaps.is_empty() && result.injection.unusable.is_empty() {
                out.push_str("  nothing matches: unchanged\n");
            }
            for s in &result.injection.swaps {
                let how = if s.exact { "exact" } else { "name-only" };
                let scope = if s.scope == Scope::Local { "local" } else { "global" };
                out.push_str(&format!(
                    "  {}: {} -> {} by ImageMap {} ({how}, {scope})\n",
                    escape(&s.record.field),
                    escape(&s.record.original),
                    escape(&s.record.image),
                    escape(&s.record.image_map)
                ));
                if !s.outranked.is_empty() {
                    out.push_str(&format!("    outranked: {}\n", escape(&s.outranked.join(", "))));
                }
            }
            for u in &result.injection.unusable {
                out.push_str(&format!(
                    "  {}: {} matched ImageMap {} but it {}\n",
                    escape(&u.field),
                    escape(&u.value),
                    escape(&u.image_map),
                    escape(&u.reason.to_string())
                ));
            }
        }
    }
    Ok(out)
}

/// Explains a live Pod: what its annotation records, and how its original images match now.
pub fn explain_pod(index: &MapIndex, namespace: &str, pod: &Value) -> String {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let mut out = format!("pod/{} (namespace {}):\n", escape(name), escape(namespace));
    let records = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SWAPS_ANNOTATION))
        .and_then(Value::as_str)
        .map(parse_records)
        .unwrap_or_default();
    if records.is_empty() {
        out.push_str("  no swaps recorded (annotation imagemap.tilt.dev/swaps absent)\n");
    }
    for r in &records {
        out.push_str(&format!(
            "  recorded: {}: {} -> {} by ImageMap {}\n",
            escape(&r.field),
            escape(&r.original),
            escape(&r.image),
            escape(&r.image_map)
        ));
    }
    out.push_str("  as the maps stand now:\n");
    for list in ["initContainers", "containers"] {
        for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
            let field = format!("spec.{list}{{{cname}}}.image");
            let current = c.get("image").and_then(Value::as_str).unwrap_or("");
            let original = records.iter().find(|r| r.field == field).map_or(current, |r| r.original.as_str());
            for line in explain_image(index, namespace, original).lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

/// Runs `explain`.
pub async fn run(global: &Global, args: &ExplainArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &ExplainArgs) -> Result<String> {
    let cluster = match (&args.maps, &args.target) {
        (Some(_), Some(t)) if !t.starts_with("pod/") => None,
        (Some(_), None) => None,
        _ => Some(Cluster::connect(global).await?),
    };
    let namespace = global
        .namespace
        .clone()
        .or_else(|| cluster.as_ref().map(|c| c.namespace.clone()))
        .unwrap_or_else(|| "default".into());
    let index = load_index(
        args.maps.as_deref(),
        args.global_namespace.as_deref(),
        cluster.as_ref(),
        std::slice::from_ref(&namespace),
    )
    .await?;
    if let Some(file) = &args.file {
        let manifests = parse_manifests(&read_text(file)?, &file.display().to_string())?;
        return Ok(explain_manifests(&index, &namespace, &manifests.docs)?);
    }
    let Some(target) = &args.target else { bail!("give an image, pod/NAME, or -f FILE to explain") };
    if let Some(name) = target.strip_prefix("pod/").or_else(|| target.strip_prefix("pods/")) {
        let Some(cluster) = &cluster else { bail!("explaining a live Pod needs a cluster") };
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &namespace);
        let pod = pods.get(name).await.map_err(|e| cluster.explain_error(e, &format!("pod {name:?}")))?;
        return Ok(explain_pod(&index, &namespace, &serde_json::to_value(pod)?));
    }
    Ok(explain_image(&index, &namespace, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_core::types::ImageMap;

    fn map(name: &str, selector: &str, image: Option<&str>, exact: bool) -> ImageMap {
        let m = ImageMap::for_selector("dev", name, selector).with_match_exact(exact);
        match image {
            Some(image) => m.with_image(image),
            None => m,
        }
    }

    fn index() -> MapIndex {
        let mut idx = MapIndex::new(None);
        for m in [
            map("a-name", "app", Some("r.io/a:1"), false),
            map("b-exact", "app:v1", Some("r.io/b:1"), true),
            map("c-unbuilt", "app", None, false),
            map("d-exact-other", "app:v2", Some("r.io/d:1"), true),
        ] {
            idx.upsert(&m).expect("valid");
        }
        idx
    }

    #[test]
    fn explains_winner_outranked_unusable_and_non_matching_maps() {
        let text = explain_image(&index(), "dev", "app:v1");
        assert!(
            text.contains("ImageMap dev/b-exact (exact, local, selector app:v1): WINS: swaps to r.io/b:1"),
            "{text}"
        );
        assert!(text.contains("ImageMap dev/a-name (name-only, local, selector app): matches but outranked"), "{text}");
        assert!(
            text.contains("ImageMap dev/c-unbuilt (name-only, local, selector app): matches but unusable"),
            "{text}"
        );
        assert!(text.contains("ImageMap dev/d-exact-other (exact, local, selector app:v2): no match"), "{text}");
    }

    #[test]
    fn explains_invalid_and_unmatched_images() {
        assert!(explain_image(&index(), "dev", "Bad Image").contains("not a valid image reference"));
        assert!(explain_image(&index(), "dev", "other").contains("no ImageMap"));
        assert!(explain_image(&index(), "prod", "app").contains("no ImageMap in namespace \"prod\""));
    }

    #[test]
    fn control_characters_in_images_annotations_and_names_are_printed_escaped() {
        let hostile = "app\u{1b}[2J\rWINS: swaps to evil\nx\u{9b}";
        let raw = |text: &str| text.chars().filter(|&c| c != '\n' && c.is_control()).collect::<Vec<char>>();
        let text = explain_image(&index(), "dev\u{1b}[1m", hostile);
        assert!(raw(&text).is_empty(), "raw control characters in {text:?}");
        assert!(text.starts_with("app\\u{1b}[2J\\rWINS: swaps to evil\\nx\\u{9b}: not a valid"), "{text}");
        let record = format!(
            r#"[{{"field":"spec.containers{{c}}.image","original":{o},"image":{o},"imageMap":{o}}}]"#,
            o = serde_json::to_string(hostile).expect("json")
        );
        let pod = json!({"metadata": {"name": hostile, "annotations": {SWAPS_ANNOTATION: record}},
            "spec": {"containers": [{"name": "c", "image": "r.io/b:1"}]}});
        let text = explain_pod(&index(), "dev", &pod);
        assert!(raw(&text).is_empty(), "raw control characters in {text:?}");
        assert!(text.contains("recorded: spec.containers{c}.image: app\\u{1b}[2J"), "{text}");
        assert!(!text.lines().any(|l| l.trim_start().starts_with("WINS")), "no forged line: {text}");
        let docs = vec![json!({"kind": "Pod", "metadata": {"name": hostile, "namespace": "dev"},
            "spec": {"containers": [{"name": hostile, "image": "app:v1"}]}})];
        let text = explain_manifests(&index(), "dev", &docs).expect("explains");
        assert!(raw(&text).is_empty(), "raw control characters in {text:?}");
    }

    #[test]
    fn explains_manifests_and_live_pods() {
        let docs = vec![
            json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "dev"}, "spec": {"containers": [{"name": "c", "image": "app:v1"}]}}),
        ];
        let text = explain_manifests(&index(), "dev", &docs).expect("explains");
        assert!(
            text.contains("spec.containers{c}.image: app:v1 -> r.io/b:1 by ImageMap dev/b-exact (exact, local)"),
            "{text}"
        );
        assert!(text.contains("outranked: dev/a-name"), "{text}");
        let pod = json!({"metadata": {"name": "p", "annotations": {SWAPS_ANNOTATION: r#"[{"field":"spec.containers{c}.image","original":"app:v1","image":"r.io/b:1","imageMap":"dev/b-exact"}]"#}},
            "spec": {"containers": [{"name": "c", "image": "r.io/b:1"}]}});
        let text = explain_pod(&index(), "dev", &pod);
        assert!(
            text.contains("recorded: spec.containers{c}.image: app:v1 -> r.io/b:1 by ImageMap dev/b-exact"),
            "{text}"
        );
        assert!(text.contains("WINS"), "{text}");
    }
}
