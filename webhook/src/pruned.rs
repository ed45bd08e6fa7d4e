//! Reading a Pod spec as JSON, keeping only what the engine looks at. Building a full
//! `serde_json::Value` of an 8 KB spec (resources, ports, mounts, probes...) was most of the
//! admission cost; here every other field is skipped while parsing and never allocated. Values
//! of kept fields are read whatever their type, so an odd review still parses (and the engine
//! then ignores what it does not understand), exactly as with a full `Value`.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

thread_local! {
    /// Whether env values are kept (only when some map swaps env values). Set by
    /// [`with_env`] around one parse on this thread.
    static KEEP_ENV: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` (a parse) with env values kept or skipped.
pub fn with_env<R>(keep: bool, f: impl FnOnce() -> R) -> R {
    let before = KEEP_ENV.with(|k| k.replace(keep));
    let out = f();
    KEEP_ENV.with(|k| k.set(before));
    out
}

/// What to keep of a JSON value at one place in a Pod spec.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Everything.
    Any,
    /// The spec: container lists, volumes, scheduling gates.
    Spec,
    /// A list of containers, or of volumes.
    ListOf(Item),
    /// One container or one volume or one env var.
    One(Item),
}

#[derive(Clone, Copy, Debug)]
enum Item {
    Container,
    Env,
    Volume,
}

impl Shape {
    /// The shape of the member `key` of an object of this shape; `None` skips it.
    fn member(self, key: &str) -> Option<Shape> {
        match self {
            Shape::Any => Some(Shape::Any),
            Shape::Spec => match key {
                "containers" | "initContainers" => Some(Shape::ListOf(Item::Container)),
                "volumes" => Some(Shape::ListOf(Item::Volume)),
                "schedulingGates" => Some(Shape::Any),
                _ => None,
            },
            Shape::One(Item::Container) => match key {
                "name" | "image" | "command" | "args" => Some(Shape::Any),
                "env" if KEEP_ENV.with(Cell::get) => Some(Shape::ListOf(Item::Env)),
                _ => None,
            },
            Shape::One(Item::Env) => matches!(key, "name" | "value").then_some(Shape::Any),
            Shape::One(Item::Volume) => matches!(key, "name" | "image").then_some(Shape::Any),
            Shape::ListOf(_) => None,
        }
    }

    /// The shape of the elements of an array of this shape.
    fn element(self) -> Shape {
        match self {
            Shape::ListOf(item) => Shape::One(item),
            _ => Shape::Any,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Shape {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(self.element())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.member(&key) {
                Some(shape) => {
                    let v = map.next_value_seed(shape)?;
                    out.insert(key, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Deserializes a Pod `spec`, keeping only the fields the engine reads.
pub fn spec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Shape::Spec.deserialize(deserializer).map(|v| if v.is_null() { None } else { Some(v) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str, env: bool) -> Value {
        with_env(env, || {
            let mut de = serde_json::Deserializer::from_str(text);
            spec(&mut de).expect("parses").unwrap_or(Value::Null)
        })
    }

    #[test]
    fn keeps_what_the_engine_reads_and_skips_the_rest() {
        let text = json!({"nodeName": "n", "containers": [{"name": "c", "image": "app", "command": ["x"], "args": [],
            "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "app"}, {"name": "B", "valueFrom": {"x": 1}}]}],
            "volumes": [{"name": "v", "image": {"reference": "app"}}, {"name": "e", "emptyDir": {}}],
            "schedulingGates": [{"name": "g"}], "tolerations": []})
        .to_string();
        assert_eq!(
            parse(&text, true),
            json!({"containers": [{"name": "c", "image": "app", "command": ["x"], "args": [],
                "env": [{"name": "A", "value": "app"}, {"name": "B"}]}],
                "volumes": [{"name": "v", "image": {"reference": "app"}}, {"name": "e"}], "schedulingGates": [{"name": "g"}]})
        );
        assert!(parse(&text, false)["containers"][0].get("env").is_none(), "env skipped when no map swaps env");
    }

    #[test]
    fn odd_shapes_still_parse() {
        assert_eq!(parse(r#"{"containers": "nope"}"#, true), json!({"containers": "nope"}));
        assert_eq!(
            parse(r#"{"containers": [1, null, {"image": 2}]}"#, true),
            json!({"containers": [1, null, {"image": 2}]})
        );
        assert_eq!(parse("null", true), Value::Null);
    }
}
