//! `kubectl imagemap describe NAME`: spec, status, usability, the Pods it swapped, Events.

use anyhow::Result;
use imagemap_core::inject::{parse_records, SwapRecord, SWAPS_ANNOTATION};
use imagemap_core::stale::StaleField;
use imagemap_core::types::ImageMap;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::Api;

use crate::cli::{DescribeArgs, Global};
use crate::client::Cluster;
use crate::render::{self, escape, human_duration};

/// A Pod and the swaps a map made in it.
pub struct SwappedPod {
    /// Pod name.
    pub name: String,
    /// The map's records in its annotation.
    pub records: Vec<SwapRecord>,
}

/// Renders the description (pure). Every value read from the cluster is printed
/// [`escape`]d.
pub fn describe_text(
    map: &ImageMap,
    pods: &[SwappedPod],
    stale: &[(String, StaleField)],
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<22}{}\n", format!("{k}:"), escape(v)));
    let status = map.status.clone().unwrap_or_default();
    line("Name", map.metadata.name.as_deref().unwrap_or(""));
    line("Namespace", map.metadata.namespace.as_deref().unwrap_or(""));
    line("Selector", &map.spec.selector);
    line("Match Exact", &map.spec.match_exact.to_string());
    line("Match In Env Vars", &map.spec.match_in_env_vars.to_string());
    let words = |w: &[String]| if w.is_empty() { "<cleared>".to_string() } else { w.join(" ") };
    line("Override Command", &map.spec.override_command.as_ref().map_or("<none>".into(), |o| words(&o.command)));
    line("Override Args", &map.spec.override_args.as_ref().map_or("<none>".into(), |o| words(&o.args)));
    line("Image", or_none(&status.image));
    line("Image From Cluster", or_none(&status.image_from_cluster));
    line("Image From Local", or_none(&status.image_from_local));
    let built = status
        .build_start_time
        .as_ref()
        .map(|t| format!("{} ({} ago)", t.0, human_duration(now.as_second() - t.0.as_second())));
    line("Build Start Time", built.as_deref().unwrap_or("<none>"));
    match render::usability(map) {
        Ok(target) => line("Usable", &format!("Yes: Pods get {target}")),
        Err(why) => line(
            "Usable",
            &format!(
                "No: {why}; set one with `kubectl imagemap set-image {} IMAGE`",
                map.metadata.name.as_deref().unwrap_or("NAME")
            ),
        ),
    }
    out.push_str("Swapped Pods:\n");
    if pods.is_empty() {
        out.push_str("  <none>\n");
    }
    for pod in pods {
        for r in &pod.records {
            out.push_str(&format!(
                "  pod/{}  {}  {} -> {}\n",
                escape(&pod.name),
                escape(&r.field),
                escape(&r.original),
                escape(&r.image)
            ));
        }
    }
    out.push_str("Stale Pods (this map would change them now; `kubectl imagemap rollout` restarts them):\n");
    if stale.is_empty() {
        out.push_str("  <none>\n");
    }
    for (pod, f) in stale {
        out.push_str(&format!(
            "  pod/{}  {}  {} -> {}  ({})\n",
            escape(pod),
            escape(&f.field),
            escape(&f.current),
            escape(&f.wanted),
            f.reason.describe()
        ));
    }
    out.push_str("Events:\n");
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows = vec![vec!["  TYPE".to_string(), "REASON".into(), "AGE".into(), "MESSAGE".into()]];
        for e in events {
            let when = e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0));
            rows.push(vec![
                format!("  {}", e.type_.clone().unwrap_or_default()),
                e.reason.clone().unwrap_or_default(),
                render::age(now, when),
                e.message.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&render::align(&rows));
    }
    out
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

/// The Pods whose swap annotation names `map_id`.
pub fn swapped_pods(pods: &[Pod], map_id: &str) -> Vec<SwappedPod> {
    pods.iter()
        .filter_map(|p| {
            let text = p.metadata.annotations.as_ref()?.get(SWAPS_ANNOTATION)?;
            let records: Vec<SwapRecord> = parse_records(text).into_iter().filter(|r| r.image_map == map_id).collect();
            (!records.is_empty()).then(|| SwappedPod { name: p.metadata.name.clone().unwrap_or_default(), records })
        })
        .collect()
}

/// Runs `describe`.
pub async fn run(global: &Global, args: &DescribeArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &DescribeArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let map = cluster
        .maps()
        .get(&args.name)
        .await
        .map_err(|e| cluster.explain_error(e, &format!("imagemap {:?}", args.name)))?;
    let ns = cluster.namespace.clone();
    let id = format!("{ns}/{}", args.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let pods = match pods.list(&ListParams::default()).await {
        Ok(list) => swapped_pods(&list.items, &id),
        Err(e) => {
            eprintln!("warning: cannot list Pods: {e}");
            Vec::new()
        }
    };
    let maps = cluster.maps().list(&Default::default()).await.map(|l| l.items).unwrap_or_else(|_| vec![map.clone()]);
    let stale: Vec<(String, StaleField)> = match crate::stale::stale_pods(&cluster.client, &ns, &maps).await {
        Ok(stale) => stale
            .into_iter()
            .flat_map(|(pod, fields)| {
                let name = pod.metadata.name.unwrap_or_default();
                fields.into_iter().filter(|f| f.image_map == id).map(move |f| (name.clone(), f))
            })
            .collect(),
        Err(e) => {
            eprintln!("warning: cannot list Pods for stale ones: {e}");
            Vec::new()
        }
    };
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &ns);
    let selector = format!("involvedObject.kind=ImageMap,involvedObject.name={}", args.name);
    let events = events.list(&ListParams::default().fields(&selector)).await.map(|l| l.items).unwrap_or_default();
    Ok(describe_text(&map, &pods, &stale, &events, Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_core::types::{ImageMapSpec, ImageMapStatus};
    use serde_json::json;

    #[test]
    fn describes_an_unbuilt_map_with_the_fix() {
        let mut m = ImageMap::new("web", ImageMapSpec { selector: "web".into(), ..Default::default() });
        m.metadata.namespace = Some("dev".into());
        let text = describe_text(&m, &[], &[], &[], Timestamp::now());
        assert!(text.contains("Selector:             web\n"), "{text}");
        assert!(text.contains("Usable:               No: has no built image yet"), "{text}");
        assert!(text.contains("kubectl imagemap set-image web IMAGE"), "{text}");
        assert!(text.contains("Swapped Pods:\n  <none>\nStale Pods"), "{text}");
        assert!(text.ends_with("restarts them):\n  <none>\nEvents:\n  <none>\n"), "{text}");
    }

    #[test]
    fn control_characters_from_the_cluster_are_printed_escaped() {
        let hostile = "x\u{1b}]0;title\u{7}\u{1b}[2J\rFAKE\nUsable: Yes";
        let mut m = ImageMap::for_selector("dev", "web", hostile).with_image(hostile).with_command(&[hostile]);
        m.metadata.annotations = Some([("note".to_string(), hostile.to_string())].into());
        let records = vec![SwapRecord {
            field: hostile.into(),
            original: hostile.into(),
            image: hostile.into(),
            image_map: "dev/web".into(),
        }];
        let pods = [SwappedPod { name: hostile.into(), records }];
        let events: Vec<Event> = serde_json::from_value(json!([
            {"metadata": {"name": "e"}, "involvedObject": {}, "type": "Warning", "reason": hostile, "message": hostile}
        ]))
        .expect("events");
        let text = describe_text(&m, &pods, &[], &events, Timestamp::now());
        let raw: Vec<char> = text.chars().filter(|&c| c != '\n' && c.is_control()).collect();
        assert!(raw.is_empty(), "raw control characters {raw:?} in {text:?}");
        assert!(
            text.contains("Selector:             x\\u{1b}]0;title\\u{7}\\u{1b}[2J\\rFAKE\\nUsable: Yes\n"),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("Usable: Yes")), "no forged line: {text}");
        assert!(text.contains("  pod/x\\u{1b}]0;title"), "{text}");
    }

    #[test]
    fn lists_stale_pods_with_why() {
        let mut m = ImageMap::new("web", ImageMapSpec { selector: "web".into(), ..Default::default() });
        m.metadata.namespace = Some("dev".into());
        let stale = [(
            "web-1".to_string(),
            StaleField {
                field: "spec.containers{web}.image".into(),
                current: "web".into(),
                wanted: "r.io/web:2".into(),
                image_map: "dev/web".into(),
                reason: imagemap_core::stale::StaleReason::NeverSwapped,
            },
        )];
        let text = describe_text(&m, &[], &stale, &[], Timestamp::now());
        assert!(text.contains("Stale Pods"), "{text}");
        assert!(text.contains("  pod/web-1  spec.containers{web}.image  web -> r.io/web:2  (never swapped"), "{text}");
    }

    #[test]
    fn lists_pods_swapped_by_this_map_only() {
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"metadata": {"name": "a", "annotations": {SWAPS_ANNOTATION: r#"[{"field":"spec.containers{c}.image","original":"web","image":"r.io/web:1","imageMap":"dev/web"},{"field":"spec.containers{d}.image","original":"x","image":"r.io/x:1","imageMap":"dev/x"}]"#}}},
            {"metadata": {"name": "b"}},
            {"metadata": {"name": "c", "annotations": {SWAPS_ANNOTATION: "garbage"}}}
        ])).expect("pods");
        let found = swapped_pods(&pods, "dev/web");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].records.len(), 1);
        let mut m = ImageMap::new("web", ImageMapSpec { selector: "web".into(), ..Default::default() });
        m.status = Some(ImageMapStatus { image: "r.io/web:1".into(), ..Default::default() });
        let text = describe_text(&m, &found, &[], &[], Timestamp::now());
        assert!(text.contains("  pod/a  spec.containers{c}.image  web -> r.io/web:1\n"), "{text}");
        assert!(text.contains("Usable:               Yes: Pods get r.io/web:1"), "{text}");
    }
}
