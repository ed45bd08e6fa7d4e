//! Reading ImageMaps from text: a single ImageMap, a `List` or `ImageMapList` with `items`, or
//! multi-document YAML (JSON is YAML too). Used for `--imagemaps-file` and the plugin's `--maps`.

use serde_json::Value;

use crate::types::ImageMap;

/// Why a maps file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MapsFileError {
    /// A document is not valid YAML or JSON.
    #[error("{source_name}: document {index} is not valid YAML/JSON: {error}")]
    Syntax {
        /// The file name, for the message.
        source_name: String,
        /// 1-based document number.
        index: usize,
        /// The parser's message.
        error: String,
    },
    /// A document is not an ImageMap (or a list of them).
    #[error("{source_name}: document {index}{item}: {error}; expected kind ImageMap (apiVersion tilt.dev/v1alpha1), ImageMapList or List")]
    NotAnImageMap {
        /// The file name, for the message.
        source_name: String,
        /// 1-based document number.
        index: usize,
        /// ` item N` when inside a list.
        item: String,
        /// What is wrong.
        error: String,
    },
}

/// Parses every ImageMap in `text`; `source_name` names the file in errors.
pub fn parse_maps(text: &str, source_name: &str) -> Result<Vec<ImageMap>, MapsFileError> {
    let mut maps = Vec::new();
    for (i, doc) in crate::yaml::documents(text).into_iter().enumerate() {
        let index = i + 1;
        let value = doc.map_err(|e| MapsFileError::Syntax {
            source_name: source_name.to_string(),
            index,
            error: e.to_string(),
        })?;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || kind == "ImageMapList" {
            let items = value.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                maps.push(one(item, source_name, index, format!(" item {}", j + 1))?);
            }
        } else {
            maps.push(one(value, source_name, index, String::new())?);
        }
    }
    Ok(maps)
}

fn one(value: Value, source_name: &str, index: usize, item: String) -> Result<ImageMap, MapsFileError> {
    let fail = |error: String| MapsFileError::NotAnImageMap {
        source_name: source_name.to_string(),
        index,
        item: item.clone(),
        error,
    };
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind != "ImageMap" || !api.starts_with("tilt.dev/") {
        return Err(fail(format!("found kind {kind:?} apiVersion {api:?}")));
    }
    serde_json::from_value(value).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "apiVersion: tilt.dev/v1alpha1\nkind: ImageMap\nmetadata: {name: a}\nspec: {selector: app}\n";

    #[test]
    fn reads_a_single_map_multi_document_yaml_lists_and_json() {
        assert_eq!(parse_maps(ONE, "f").expect("one").len(), 1);
        let multi = format!("{ONE}---\n{ONE}---\n");
        assert_eq!(parse_maps(&multi, "f").expect("multi").len(), 2);
        let list = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"tilt.dev/v1alpha1","kind":"ImageMap","metadata":{"name":"a"},"spec":{"selector":"a"}},
            {"apiVersion":"tilt.dev/v1alpha1","kind":"ImageMap","metadata":{"name":"b"},"spec":{"selector":"b"},
             "status":{"image":"b:1"}}]}"#;
        let maps = parse_maps(list, "f").expect("list");
        assert_eq!(maps[1].status.as_ref().map(|s| s.image.as_str()), Some("b:1"));
        let typed = list.replace("\"kind\":\"List\"", "\"kind\":\"ImageMapList\"");
        assert_eq!(parse_maps(&typed, "f").expect("ImageMapList").len(), 2);
    }

    #[test]
    fn empty_file_has_no_maps() {
        assert!(parse_maps("", "f").expect("empty").is_empty());
        assert!(parse_maps("---\n", "f").expect("empty doc").is_empty());
    }

    #[test]
    fn other_kinds_and_bad_syntax_are_errors_naming_the_file() {
        let e = parse_maps("apiVersion: v1\nkind: Pod\n", "maps.yaml").expect_err("not a map");
        assert!(e.to_string().contains("maps.yaml: document 1") && e.to_string().contains("Pod"), "{e}");
        let e = parse_maps("{", "maps.json").expect_err("syntax");
        assert!(e.to_string().starts_with("maps.json: document 1 is not valid"), "{e}");
        let e = parse_maps("apiVersion: tilt.dev/v1alpha1\nkind: ImageMap\nmetadata: {name: a}\nspec: {}\n", "m")
            .expect_err("no selector");
        assert!(e.to_string().contains("selector"), "{e}");
    }
}
