//! Writing the response review's JSON directly into one buffer: strings are escaped with the
//! reader's sixteen-byte scan, and the base64 patch is written without an escaping pass (its
//! alphabet needs none). The output is the same JSON serde_json writes.

use std::io::Write as _;

use serde_json::Value;

use super::scan::find_string_end;

/// Appends `s` as a JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut from = 0;
    while let Some(at) = find_string_end(bytes, from, true) {
        out.extend_from_slice(&bytes[from..at]);
        match bytes[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            control => {
                let _ = write!(out, "\\u{control:04x}");
            }
        }
        from = at + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// Appends `value` as compact JSON, object members in their map order (as serde_json).
pub fn value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                self::value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, key);
                out.push(b':');
                self::value(out, item);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn written(v: &Value) -> String {
        let mut out = Vec::new();
        value(&mut out, v);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let v = json!({"a": [null, true, false, 1, -2, 2.5, 1e300], "q\"uote": "back\\slash/\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀",
            "long": "x".repeat(40) + "\"" + &"y".repeat(20), "": {}, "e": []});
        assert_eq!(written(&v), serde_json::to_string(&v).expect("json"));
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in ".{0,60}|[\"\\\\\\x00-\\x1f a-z]{0,60}") {
            let mut out = Vec::new();
            string(&mut out, &s);
            proptest::prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), serde_json::to_string(&s).expect("json"));
        }
    }
}
