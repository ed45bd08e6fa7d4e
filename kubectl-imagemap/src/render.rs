//! Pure renderers: every output format returns a string, so output is tested without a cluster.

use imagemap_core::maps::{CompiledMap, Origin};
use imagemap_core::types::ImageMap;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::cli::{ObjectOutput, Output};

/// kubectl's human-readable duration (`45s`, `5m30s`, `3h`, `2d4h`, `400d`, `3y20d`).
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        },
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => match d % 365 {
            0 => format!("{}y", d / 365),
            r => format!("{}y{r}d", d / 365),
        },
        _ => format!("{}y", d / 365),
    }
}

/// Age of `t` at `now`, kubectl-style.
pub fn age(now: Timestamp, t: Option<Timestamp>) -> String {
    t.map_or_else(|| "<unknown>".into(), |t| human_duration(now.as_second() - t.as_second()))
}

/// Whether a map is usable: `Ok(injected image)` or `Err(why not)`.
pub fn usability(map: &ImageMap) -> Result<String, String> {
    match CompiledMap::compile(map, Origin::Cluster) {
        Err(e) => Err(format!("invalid selector: {}", e.error)),
        Ok(c) => c.target.map(|t| t.familiar).map_err(|u| u.to_string()),
    }
}

/// The image a map injects, or `<none>`.
fn injected(map: &ImageMap) -> String {
    usability(map).unwrap_or_else(|_| "<none>".into())
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

/// A kubectl-style table of maps (`wide` adds from-local and the match flags).
pub fn table(maps: &[ImageMap], now: Timestamp, wide: bool, namespaces: bool) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<&str> = Vec::new();
    if namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "SELECTOR", "IMAGE", "BUILT", "READY", "AGE"]);
    if wide {
        header.extend(["FROM-LOCAL", "EXACT", "ENV"]);
    }
    rows.push(header.iter().map(|h| h.to_string()).collect());
    for m in maps {
        let mut row = Vec::new();
        if namespaces {
            row.push(m.metadata.namespace.clone().unwrap_or_default());
        }
        let status = m.status.clone().unwrap_or_default();
        row.push(m.metadata.name.clone().unwrap_or_default());
        row.push(m.spec.selector.clone());
        row.push(injected(m));
        row.push(status.build_start_time.as_ref().map_or("<none>".into(), |t| age(now, Some(t.0))));
        row.push(if usability(m).is_ok() { "True".into() } else { "False".into() });
        row.push(age(now, m.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        if wide {
            row.push(or_none(&status.image_from_local).to_string());
            row.push(m.spec.match_exact.to_string());
            row.push(m.spec.match_in_env_vars.to_string());
        }
        rows.push(row);
    }
    if rows.len() == 1 {
        return String::new();
    }
    align(&rows)
}

/// Aligns rows into columns separated by three spaces, as kubectl does.
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One object in YAML, JSON or `imagemap.tilt.dev/NAME`.
pub fn object(map: &ImageMap, format: ObjectOutput) -> String {
    match format {
        ObjectOutput::Name => format!("imagemap.tilt.dev/{}\n", map.metadata.name.as_deref().unwrap_or("")),
        ObjectOutput::Json => json_text(&serde_json::to_value(map).unwrap_or(Value::Null)),
        ObjectOutput::Yaml => yaml_text(&serde_json::to_value(map).unwrap_or(Value::Null)),
    }
}

/// Several objects: a `List` in YAML/JSON, names one per line, or a table.
pub fn list(maps: &[ImageMap], format: Output, now: Timestamp, namespaces: bool) -> String {
    match format {
        Output::Table => table(maps, now, false, namespaces),
        Output::Wide => table(maps, now, true, namespaces),
        Output::Name => maps.iter().map(|m| object(m, ObjectOutput::Name)).collect(),
        Output::Json | Output::Yaml => {
            let items: Vec<Value> = maps.iter().map(|m| serde_json::to_value(m).unwrap_or(Value::Null)).collect();
            let doc = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
            if format == Output::Json {
                json_text(&doc)
            } else {
                yaml_text(&doc)
            }
        }
    }
}

/// Pretty JSON with a trailing newline.
pub fn json_text(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// YAML text.
pub fn yaml_text(v: &Value) -> String {
    imagemap_core::yaml::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_core::types::{ImageMapSpec, ImageMapStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().expect("time")
    }

    fn ago(secs: i64) -> Timestamp {
        Timestamp::from_second(now().as_second() - secs).expect("time")
    }

    fn sample() -> Vec<ImageMap> {
        let mut built = ImageMap::new(
            "api",
            ImageMapSpec { selector: "my-apiserver".into(), match_exact: true, ..Default::default() },
        );
        built.metadata.namespace = Some("dev".into());
        built.metadata.creation_timestamp = Some(Time(ago(3 * 3600)));
        built.status = Some(ImageMapStatus {
            image: "localhost:5000/my-apiserver:tilt-1".into(),
            image_from_local: "localhost:5000/my-apiserver:tilt-1".into(),
            build_start_time: Some(MicroTime(ago(90))),
            ..Default::default()
        });
        let mut unbuilt = ImageMap::new("web", ImageMapSpec { selector: "web".into(), ..Default::default() });
        unbuilt.metadata.namespace = Some("dev".into());
        unbuilt.metadata.creation_timestamp = Some(Time(ago(3 * 86_400)));
        vec![built, unbuilt]
    }

    #[test]
    fn human_durations_follow_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (330, "5m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 3600, "3d1h"),
            (400 * 86_400, "400d"),
            (3 * 365 * 86_400, "3y"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn table_shows_selector_injected_image_built_ready_and_age() {
        let text = table(&sample(), now(), false, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "SELECTOR", "IMAGE", "BUILT", "READY", "AGE"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["api", "my-apiserver", "localhost:5000/my-apiserver:tilt-1", "90s", "True", "3h"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["web", "web", "<none>", "<none>", "False", "3d"]);
        assert_eq!(lines[0].find("SELECTOR"), lines[1].find("my-apiserver"), "columns align");
    }

    #[test]
    fn wide_table_adds_from_local_and_match_flags_and_namespace_with_all_namespaces() {
        let text = table(&sample(), now(), true, true);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines[0],
            ["NAMESPACE", "NAME", "SELECTOR", "IMAGE", "BUILT", "READY", "AGE", "FROM-LOCAL", "EXACT", "ENV"]
        );
        assert_eq!(lines[1][0], "dev");
        assert_eq!(&lines[1][7..], ["localhost:5000/my-apiserver:tilt-1", "true", "false"]);
        assert_eq!(&lines[2][7..], ["<none>", "false", "false"]);
    }

    #[test]
    fn yaml_json_and_name_outputs() {
        let maps = sample();
        let json: Value = serde_json::from_str(&list(&maps, Output::Json, now(), false)).expect("json");
        assert_eq!(json["kind"], "List");
        assert_eq!(json["items"][0]["kind"], "ImageMap");
        assert_eq!(json["items"][0]["apiVersion"], "tilt.dev/v1alpha1");
        assert_eq!(json["items"][0]["spec"]["matchExact"], true);
        let yaml: Value = imagemap_core::yaml::from_str(&list(&maps, Output::Yaml, now(), false)).expect("yaml");
        assert_eq!(yaml, json);
        assert_eq!(list(&maps, Output::Name, now(), false), "imagemap.tilt.dev/api\nimagemap.tilt.dev/web\n");
        let one: Value = imagemap_core::yaml::from_str(&object(&maps[0], ObjectOutput::Yaml)).expect("yaml");
        assert_eq!(one["status"]["image"], "localhost:5000/my-apiserver:tilt-1");
        assert_eq!(object(&maps[1], ObjectOutput::Name), "imagemap.tilt.dev/web\n");
    }

    #[test]
    fn empty_table_prints_nothing() {
        assert_eq!(table(&[], now(), false, false), "");
    }

    #[test]
    fn usability_explains_why_not() {
        let maps = sample();
        assert_eq!(usability(&maps[0]), Ok("localhost:5000/my-apiserver:tilt-1".into()));
        assert!(usability(&maps[1]).expect_err("unbuilt").contains("no built image"));
    }
}
