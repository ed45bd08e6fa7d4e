//! Pure renderers: every output format returns a string, so output is tested without a cluster.

use imagemap_core::maps::{CompiledMap, Origin};
use imagemap_core::types::ImageMap;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::cli::{ObjectOutput, Output};

/// Text from the cluster (names, annotations, map fields, event messages) made safe to print:
/// control characters (C0 including tab, CR and LF, DEL, C1) and the Unicode bidirectional
/// overrides and isolates, which reorder what a terminal shows, are written as escapes (`\t`,
/// `\r`, `\n`, else `\u{1b}` style), so nothing read from the cluster can move the cursor,
/// clear the screen, set the window title or forge a line. Borrowed when there is nothing to
/// escape; escaping twice changes nothing.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What [`escape`] escapes.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

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
pub fn table(
    maps: &[ImageMap],
    now: Timestamp,
    wide: bool,
    namespaces: bool,
    stale: Option<&BTreeMap<String, usize>>,
) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<&str> = Vec::new();
    if namespaces {
        header.push("NAMESPACE");
    }
    header.extend(["NAME", "SELECTOR", "IMAGE", "BUILT", "READY"]);
    if stale.is_some() {
        header.push("STALE");
    }
    header.push("AGE");
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
        if let Some(stale) = stale {
            let id = format!(
                "{}/{}",
                m.metadata.namespace.as_deref().unwrap_or_default(),
                m.metadata.name.as_deref().unwrap_or_default()
            );
            row.push(stale.get(&id).copied().unwrap_or(0).to_string());
        }
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

/// Aligns rows into columns separated by three spaces, as kubectl does; every cell is
/// [`escape`]d.
pub fn align(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> =
        rows.iter().map(|row| row.iter().map(|cell| escape(cell)).collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
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
        ObjectOutput::Name => format!("imagemap.tilt.dev/{}\n", escape(map.metadata.name.as_deref().unwrap_or(""))),
        ObjectOutput::Json => json_text(&serde_json::to_value(map).unwrap_or(Value::Null)),
        ObjectOutput::Yaml => yaml_text(&serde_json::to_value(map).unwrap_or(Value::Null)),
    }
}

/// Several objects: a `List` in YAML/JSON, names one per line, or a table.
pub fn list(maps: &[ImageMap], format: Output, now: Timestamp, namespaces: bool) -> String {
    list_with_stale(maps, format, now, namespaces, None)
}

/// [`list`] with a STALE column in tables: per map (`namespace/name`), the Pods it would change
/// now; `None` leaves the column out (e.g. while watching).
pub fn list_with_stale(
    maps: &[ImageMap],
    format: Output,
    now: Timestamp,
    namespaces: bool,
    stale: Option<&BTreeMap<String, usize>>,
) -> String {
    match format {
        Output::Table => table(maps, now, false, namespaces, stale),
        Output::Wide => table(maps, now, true, namespaces, stale),
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

/// Pretty JSON with a trailing newline. serde_json escapes C0 controls in strings; DEL, C1
/// controls and bidirectional overrides are escaped here too (`\u009b`), the same JSON.
pub fn json_text(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut s = String::with_capacity(pretty.len() + 1);
    for c in pretty.chars() {
        // The only raw control character serde_json writes is its own line break.
        if c != '\n' && unsafe_char(c) {
            s.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            s.push(c);
        }
    }
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
        let text = table(&sample(), now(), false, false, None);
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
        let counts = BTreeMap::from([("dev/api".to_string(), 3)]);
        let with_stale = table(&sample(), now(), false, false, Some(&counts));
        let rows: Vec<Vec<&str>> = with_stale.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["NAME", "SELECTOR", "IMAGE", "BUILT", "READY", "STALE", "AGE"]);
        assert_eq!(rows[1][5], "3");
        assert_eq!(rows[2][5], "0", "a map with no stale Pod");
    }

    #[test]
    fn wide_table_adds_from_local_and_match_flags_and_namespace_with_all_namespaces() {
        let text = table(&sample(), now(), true, true, None);
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

    /// Text a hostile map or Pod could carry: clear the screen, return to the start of the line,
    /// a forged line, a C1 CSI, a right-to-left override, DEL.
    const HOSTILE: &str = "x\u{1b}[2J\rFAKE\nline\u{9b}31m\u{202e}txt\u{7f}";

    fn raw_controls(text: &str) -> Vec<char> {
        text.chars().filter(|&c| c != '\n' && unsafe_char(c)).collect()
    }

    fn hostile_map() -> ImageMap {
        let mut m = ImageMap::for_selector("dev", HOSTILE, HOSTILE).with_image(HOSTILE);
        m.metadata.annotations = Some([("note".to_string(), HOSTILE.to_string())].into());
        m.status.get_or_insert_with(Default::default).image_from_local = HOSTILE.into();
        m
    }

    #[test]
    fn control_characters_are_escaped_and_safe_text_is_borrowed() {
        assert_eq!(escape(HOSTILE), "x\\u{1b}[2J\\rFAKE\\nline\\u{9b}31m\\u{202e}txt\\u{7f}");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert!(matches!(escape("localhost:5000/app:tilt-1 ünïcödé"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape(&escape(HOSTILE)), escape(HOSTILE), "escaping twice changes nothing");
    }

    #[test]
    fn tables_and_names_print_cluster_text_escaped() {
        let now = now();
        for text in [
            table(&[hostile_map()], now, true, true, None),
            list(&[hostile_map()], Output::Name, now, false),
            object(&hostile_map(), ObjectOutput::Name),
        ] {
            assert!(raw_controls(&text).is_empty(), "raw control characters in {text:?}");
            assert!(text.contains("x\\u{1b}[2J\\rFAKE\\nline"), "{text}");
        }
        let table = table(&[hostile_map()], now, true, true, None);
        assert_eq!(table.lines().count(), 2, "a newline in a field forges no row: {table}");
    }

    #[test]
    fn json_and_yaml_print_cluster_text_escaped_and_read_back_unchanged() {
        let map = hostile_map();
        let want = serde_json::to_value(&map).expect("json");
        // JSON escapes everything `escape` does; YAML (the serializer's own double-quoted
        // escapes) every control character, and leaves bidirectional marks as they are.
        let json = object(&map, ObjectOutput::Json);
        assert!(raw_controls(&json).is_empty(), "raw control characters in {json:?}");
        let yaml = object(&map, ObjectOutput::Yaml);
        let controls: Vec<char> = yaml.chars().filter(|&c| c != '\n' && c.is_control()).collect();
        assert!(controls.is_empty(), "raw control characters {controls:?} in {yaml:?}");
        for text in [json, yaml] {
            let back: Value = imagemap_core::yaml::from_str(&text).expect("parses");
            assert_eq!(back, want, "reads back as the same object: {text}");
        }
        assert!(raw_controls(&list(std::slice::from_ref(&map), Output::Json, now(), false)).is_empty());
        for odd in ["a\nb\u{9b}c", "tab\tonly", "cr\ronly", "nl\nonly\n", "del\u{7f}"] {
            let yaml = yaml_text(&serde_json::json!({ "s": odd }));
            let controls: Vec<char> = yaml.chars().filter(|&c| c != '\n' && c.is_control()).collect();
            assert!(controls.is_empty(), "raw control characters {controls:?} in {yaml:?}");
        }
    }

    #[test]
    fn empty_table_prints_nothing() {
        assert_eq!(table(&[], now(), false, false, None), "");
    }

    #[test]
    fn usability_explains_why_not() {
        let maps = sample();
        assert_eq!(usability(&maps[0]), Ok("localhost:5000/my-apiserver:tilt-1".into()));
        assert!(usability(&maps[1]).expect_err("unbuilt").contains("no built image"));
    }
}
