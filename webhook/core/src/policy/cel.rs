//! CEL building blocks: literals of what the compiler decided (strings, lists, map tables), a
//! value bound once, the table lookup that decides a value, and the swap records the policy
//! writes and reads back.

use std::collections::BTreeMap;

/// A tag and/or digest as §3 allows them, after the written name.
const SUFFIX_PATTERN: &str =
    "^(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}))?$";

/// A CEL string literal for `s` (JSON's escapes are a subset of CEL's).
pub(super) fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a string always serializes"))
}

/// A CEL map literal of `table`, its keys as strings and its values written by `value`.
pub(super) fn map<V>(table: &BTreeMap<String, V>, value: impl Fn(&V) -> String) -> String {
    let entries: Vec<String> = table.iter().map(|(k, v)| format!("{}: {}", string(k), value(v))).collect();
    format!("{{{}}}", entries.join(", "))
}

/// A CEL list literal of `items` (each already CEL).
pub(super) fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// CEL: `body` with `name` bound to `value`, evaluated once. The API server has no `cel.bind`, so
/// a one-element list is mapped.
pub(super) fn bind(name: &str, value: &str, body: &str) -> String {
    format!("[{value}].map({name}, {body})[0]")
}

/// CEL: the index of the winning map for the string `value` (an expression), or -1: split into
/// the written name (before the first `@`, without a `:tag` after the last `/`) and the suffix,
/// check the suffix, look up the full string among exact maps, then the name.
pub(super) fn decision(value: &str, exact: &str, name: &str) -> String {
    let written = bind(
        "b",
        &format!("{value}.split('@')[0]"),
        &bind("t", "b.lastIndexOf(':')", "t > b.lastIndexOf('/') ? b.substring(0, t) : b"),
    );
    let lookup = bind(
        "k",
        "variables.spell[n]",
        &bind(
            "f",
            &format!("k + {value}.substring(n.size())"),
            &format!(
                "f in variables.{exact} ? variables.{exact}[f] : (k in variables.{name} ? variables.{name}[k] : -1)"
            ),
        ),
    );
    bind(
        "n",
        &written,
        &format!("n in variables.spell && {value}.substring(n.size()).matches('{SUFFIX_PATTERN}') ? {lookup} : -1"),
    )
}

/// A piece of a CEL string built at admission: literal text or a CEL string expression.
#[derive(Clone, Copy)]
pub(super) enum Piece<'a> {
    /// Written as a single-quoted CEL literal (no `'` or `\` in it).
    Text(&'a str),
    /// A CEL expression of type string.
    Cel(&'a str),
}

/// CEL: the concatenation of `pieces` (`'text' + expr + ...`), adjacent texts joined into one
/// literal.
pub(super) fn concat(pieces: &[Piece<'_>]) -> String {
    let mut terms: Vec<String> = Vec::new();
    let mut text: Option<String> = None;
    for piece in pieces {
        match piece {
            Piece::Text(t) => {
                debug_assert!(!t.contains(['\'', '\\']), "a literal piece needs no escape: {t}");
                text.get_or_insert_with(String::new).push_str(t);
            }
            Piece::Cel(expr) => {
                if let Some(t) = text.take() {
                    terms.push(format!("'{t}'"));
                }
                terms.push((*expr).to_string());
            }
        }
    }
    if let Some(t) = text {
        terms.push(format!("'{t}'"));
    }
    terms.join(" + ")
}

/// CEL: true when the swaps annotation records that `field` (a CEL string expression) was
/// swapped to `value`: a value one of our maps wrote is never matched again (no chaining on
/// reinvocation, DESIGN §4), as the engine leaves a recorded value alone.
pub(super) fn recorded(field: &str, value: &str) -> String {
    format!(
        "variables.recorded.exists(r, r.contains('\"field\":\"' + {field} + '\"') && r.contains('\"image\":\"' + {value} + '\"'))"
    )
}

/// CEL: one swap record as the engine writes it (`crate::inject::SwapRecord`, compact JSON): the
/// `field` (pieces of its path), the `original` value, and the target and map id of winner `d`
/// (an index expression). Field and values are JSON-safe: names and references need no escape,
/// and an env var's name is escaped by the field's pieces.
pub(super) fn swap_record(field: &[Piece<'_>], original: &str, d: &str) -> String {
    let (image, map_id) = (format!("variables.targets[{d}]"), format!("variables.mapIds[{d}]"));
    let mut pieces = vec![Piece::Text("{\"field\":\"")];
    pieces.extend_from_slice(field);
    pieces.extend([
        Piece::Text("\",\"original\":\""),
        Piece::Cel(original),
        Piece::Text("\",\"image\":\""),
        Piece::Cel(&image),
        Piece::Text("\",\"imageMap\":\""),
        Piece::Cel(&map_id),
        Piece::Text("\"}"),
    ]);
    concat(&pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_from_maps_are_escaped_for_cel() {
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn adjacent_texts_are_one_literal() {
        let pieces = [Piece::Text("a"), Piece::Text("b"), Piece::Cel("x.y"), Piece::Text("c")];
        assert_eq!(concat(&pieces), "'ab' + x.y + 'c'");
        assert_eq!(concat(&[Piece::Cel("x")]), "x");
    }

    #[test]
    fn a_swap_record_is_the_engines_json() {
        let field = [Piece::Text("spec.volumes{"), Piece::Cel("v.name"), Piece::Text("}.image.reference")];
        assert_eq!(
            swap_record(&field, "v.image.reference", "d"),
            r#"'{"field":"spec.volumes{' + v.name + '}.image.reference","original":"' + v.image.reference + '","image":"' + variables.targets[d] + '","imageMap":"' + variables.mapIds[d] + '"}'"#
        );
    }
}
