//! YAML in and out (serde-saphyr), set up once for the maps file, the CRD and the plugin.
//!
//! Reading follows the YAML 1.2 core schema for untyped values: `yes`, `on`, `0123` and `1_000`
//! stay strings; a repeated key is left to the receiving type (the last one wins in a JSON
//! value, a derived struct refuses it); `.inf` and `.nan` become what the type makes of them.
//! Files are trusted input (the operator's maps file, the user's own manifests), so there is no
//! cap on their size or number of documents; nesting stays bounded. Writing keeps long strings
//! on one line and quotes any string a YAML 1.1 reader would take for something else.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use serde_saphyr::{Budget, DuplicateKeyPolicy, NonFiniteFloatPolicy, Options, SerializerOptions};

pub use serde_saphyr::{Error, SerializeError};

/// Deepest nesting read, as deep as serde_json reads JSON.
const MAX_DEPTH: usize = 128;

fn read_options() -> Options {
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = None;
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    budget.max_depth = MAX_DEPTH;
    serde_saphyr::options! {
        budget: Some(budget),
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
        with_snippet: false,
    }
}

/// Reads one YAML (or JSON) document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options(text, read_options())
}

/// Reads every document of a multi-document YAML text (JSON is YAML too), in order, skipping
/// empty ones (a lone `---`, a trailing separator, `null`). Stops after the first error, which
/// is then the last item; its position is the 1-based number of the failing document among the
/// non-empty ones.
pub fn documents(text: &str) -> Vec<Result<Value, Error>> {
    let mut input = text.as_bytes();
    let mut out = Vec::new();
    for doc in serde_saphyr::read_with_options::<_, Value>(&mut input, read_options()) {
        let failed = doc.is_err();
        out.push(doc);
        if failed {
            break;
        }
    }
    out
}

/// Writes `value` as one YAML document (block style, two-space indent, sequences not indented
/// under their key, as kubectl prints them), ending with a newline.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, SerializeError> {
    let mut options = SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untyped_scalars_follow_yaml_1_2() {
        let v: Value =
            from_str("[yes, on, No, '1', 0123, 1_000, 0o17, 0x1F, 1e3, true, ~, null, 2026-01-01]").expect("reads");
        assert_eq!(v, json!(["yes", "on", "No", "1", "0123", "1_000", 15, 31, 1000.0, true, null, null, "2026-01-01"]));
        let v: Value = from_str("a: 1\na: 2\n").expect("repeated key");
        assert_eq!(v, json!({"a": 2}));
        let v: Value = from_str("[.inf, -.inf, .nan]").expect("non-finite");
        assert_eq!(v, json!([null, null, null]));
    }

    #[test]
    fn documents_skip_empty_ones_and_stop_at_the_first_error() {
        let docs = documents("---\na: 1\n---\n---\nb: 2\n---\n");
        let values: Vec<Value> = docs.into_iter().map(|d| d.expect("valid")).collect();
        assert_eq!(values, vec![json!({"a": 1}), json!({"b": 2})]);
        assert!(documents("").is_empty());
        assert!(documents("---\n").is_empty());
        let docs = documents("a: 1\n---\nb: [\n---\nc: 3\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_ok());
        let e = docs[1].as_ref().expect_err("broken");
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn written_yaml_reads_back_and_keeps_ambiguous_strings_strings() {
        let v = json!({
            "s": ["yes", "no", "on", "true", "null", "~", "", "1", "1.0", "0123", "1_000", "0x10", "- a", "a: b",
                  "#x", "'q'", "\"d\"", "multi\nline\n", "multi\nline", "trail ", "2026-01-01", "12:30", "tab\there"],
            "empty": {}, "none": [], "nested": [{"a": 1, "b": [1, 2]}], "n": null, "f": 1.5, "i": -3,
            "long": "word ".repeat(40).trim_end(),
        });
        let text = to_string(&v).expect("writes");
        assert_eq!(from_str::<Value>(&text).expect("reads back"), v);
        assert!(text.contains("\nnested:\n- a: 1\n  b:\n  - 1\n"), "{text}");
        assert!(text.contains(&format!("long: {}\n", "word ".repeat(40).trim_end())), "one line:\n{text}");
        assert!(text.ends_with('\n'));
    }
}
