//! A manifest's text → one generic document, within bounds.
//!
//! YAML aliases let a small file describe a huge document: the YAML
//! library replays an anchored node each time an alias (`*name`) names it,
//! and its own limit counts the replays, not the size of what they build,
//! so a 100 KB file of anchors naming anchors expands to gigabytes. Here
//! the document is built by a visitor that charges every node and every
//! byte of text to a budget proportional to the file's size, and refuses
//! the file as soon as the budget is spent, before the memory is taken.
//! Without aliases a document never costs more than about half the budget,
//! so only expansion can exhaust it. The same visitor refuses nesting
//! deeper than any Pod has, for YAML and JSON alike, so that no later
//! recursive walk of the document meets an unbounded depth.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// The deepest nesting of lists and maps accepted. A Pod's deepest field
/// (a node affinity's match expression values) is about ten levels down.
pub const MAX_DEPTH: usize = 64;

/// Budget units per byte of the file. A unit is roughly a byte of the
/// built document: each node costs [`NODE_COST`], each string its length.
/// Plain YAML costs at most about 33 units per byte (a flow map of
/// one-letter keys, `{a, b, …}`: two nodes and a letter per two bytes),
/// so twice that leaves room for modest alias use and nothing more.
pub const BUDGET_PER_BYTE: usize = 66;

/// The budget of a small file, so that a short manifest may still use
/// anchors freely: about 32 thousand nodes, a few MiB once built.
pub const MIN_BUDGET: usize = 1 << 20;

/// What one node (a scalar, list or map) costs besides its text: the size
/// of the value that holds it.
const NODE_COST: usize = std::mem::size_of::<Value>();

/// Why a manifest's text is not a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not UTF-8 text: {0}")]
    NotUtf8(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("the file is empty")]
    Empty,
    #[error("the file holds {0} YAML documents; a manifest holds exactly one Pod")]
    SeveralDocuments(usize),
    #[error(transparent)]
    Bound(#[from] Exceeded),
}

/// A bound the document broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error(
        "alias expansion too large: the document expands past {budget} bytes, \
         the limit for a {file}-byte file ({BUDGET_PER_BYTE} times its size)"
    )]
    Size { budget: usize, file: usize },
    #[error("nested too deeply: more than {MAX_DEPTH} levels of lists and maps")]
    Depth,
}

/// YAML or JSON text → one generic document, refused if it expands or
/// nests beyond the bounds above.
pub fn decode_document(bytes: &[u8]) -> Result<Value, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    let budget = Budget::for_file(bytes.len());
    let mut value = if text.trim_start().starts_with('{') {
        let mut json = serde_json::Deserializer::from_str(text);
        budget
            .seed()
            .deserialize(&mut json)
            .and_then(|value| json.end().map(|()| value))
            .map_err(|e| budget.error(e, DecodeError::Json))?
    } else {
        one_yaml_document(text, &budget)?
    };
    yaml11_octal_modes(&mut value);
    Ok(value)
}

/// The one non-empty document of a YAML stream.
fn one_yaml_document(text: &str, budget: &Budget) -> Result<Value, DecodeError> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = budget
            .seed()
            .deserialize(document)
            .map_err(|e| budget.error(e, DecodeError::Yaml))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    match documents.len() {
        0 => Err(DecodeError::Empty),
        1 => Ok(documents.remove(0)),
        n => Err(DecodeError::SeveralDocuments(n)),
    }
}

/// Kubernetes reads YAML 1.1, where `defaultMode: 0644` is octal; a YAML
/// 1.2 parser sees the string "0644". File modes are the only integer
/// fields of a Pod written this way, and a string is invalid there anyway,
/// so those strings are read as the octal numbers they mean.
fn yaml11_octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let octal = match item {
                    Value::String(text) if key == "mode" || key == "defaultMode" => text
                        .strip_prefix('0')
                        .filter(|digits| !digits.is_empty())
                        .and_then(|digits| i64::from_str_radix(digits, 8).ok()),
                    _ => None,
                };
                match octal {
                    Some(mode) => *item = Value::from(mode),
                    None => yaml11_octal_modes(item),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(yaml11_octal_modes),
        _ => {}
    }
}

/// What is left to spend on one file's documents, and the bound that
/// stopped decoding, if one did (the parser's error wraps it in text).
struct Budget {
    limit: usize,
    file: usize,
    left: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    fn for_file(file: usize) -> Budget {
        let limit = file.saturating_mul(BUDGET_PER_BYTE).max(MIN_BUDGET);
        Budget {
            limit,
            file,
            left: Cell::new(limit),
            exceeded: Cell::new(None),
        }
    }

    fn seed(&self) -> Bounded<'_> {
        Bounded {
            budget: self,
            depth: 0,
        }
    }

    fn charge<E: de::Error>(&self, units: usize) -> Result<(), E> {
        match self.left.get().checked_sub(units) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => self.refuse(Exceeded::Size {
                budget: self.limit,
                file: self.file,
            }),
        }
    }

    fn refuse<T, E: de::Error>(&self, why: Exceeded) -> Result<T, E> {
        self.exceeded.set(Some(why));
        Err(E::custom(why))
    }

    /// The decoding error: the bound, if one was broken, else the
    /// parser's own error in `wrap`.
    fn error(&self, error: impl fmt::Display, wrap: fn(String) -> DecodeError) -> DecodeError {
        match self.exceeded.get() {
            Some(why) => DecodeError::Bound(why),
            None => wrap(error.to_string()),
        }
    }
}

/// Builds one node (and what it holds) at `depth`, charging `budget`.
/// Produces what `serde_json::Value`'s own `Deserialize` would.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    budget: &'a Budget,
    depth: usize,
}

impl Bounded<'_> {
    /// The seed of the nodes inside a list or map at this level.
    fn child<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return self.budget.refuse(Exceeded::Depth);
        }
        self.budget.charge(NODE_COST)?;
        Ok(Bounded {
            depth: self.depth + 1,
            ..self
        })
    }

    fn scalar<E: de::Error>(self, value: Value) -> Result<Value, E> {
        self.budget.charge(NODE_COST)?;
        Ok(value)
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.scalar(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.scalar(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.scalar(Value::Number(value.into()))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Value, E> {
        let number = Number::deserialize(de::value::I128Deserializer::<E>::new(value))?;
        self.scalar(Value::Number(number))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Value, E> {
        let number = Number::deserialize(de::value::U128Deserializer::<E>::new(value))?;
        self.scalar(Value::Number(number))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        self.scalar(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.budget.charge(value.len())?;
        self.scalar(Value::String(value.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = self.child()?;
        let mut items = Vec::new();
        while let Some(value) = seq.next_element_seed(item)? {
            items.push(value);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let item = self.child()?;
        let mut entries = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.budget.charge(NODE_COST + key.len())?;
            let value = map.next_value_seed(item)?;
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of `base` short strings, then `levels` anchors, each a list
    /// of `width` aliases of the one before: `base * width^levels` strings
    /// from a file of a few KB. Few aliases over a wide base, so that the
    /// YAML library's own limit on alias replays does not stop it.
    fn alias_bomb(base: usize, levels: usize, width: usize) -> String {
        let strings = vec!["0123456789"; base].join(", ");
        let mut text = format!("apiVersion: v1\nkind: Pod\nl0: &l0 [{strings}]\n");
        for level in 1..=levels {
            let aliases = vec![format!("*l{}", level - 1); width].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
        }
        text
    }

    fn nested(depth: usize) -> String {
        format!(
            "{{\"apiVersion\": \"v1\", \"x\": {}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        // A million strings from 12 KB: about 100 MB if it were built.
        let bomb = alias_bomb(1000, 3, 10);
        assert!(bomb.len() < 13_000, "{}", bomb.len());
        let Err(err) = decode_document(bomb.as_bytes()) else {
            panic!("the bomb was decoded");
        };
        assert!(
            matches!(err, DecodeError::Bound(Exceeded::Size { .. })),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("alias expansion too large"),
            "{err}"
        );
    }

    #[test]
    fn one_wide_alias_of_a_long_string_is_refused() {
        // A long anchored string named many times: few nodes, much text.
        let long = "x".repeat(50_000);
        let aliases = vec!["*s"; 2_000].join(",");
        let text = format!("apiVersion: v1\ns: &s {long}\nl: [{aliases}]\n");
        let Err(err) = decode_document(text.as_bytes()) else {
            panic!("the aliases were expanded");
        };
        assert!(err.to_string().starts_with("alias expansion too large"));
    }

    #[test]
    fn modest_alias_use_is_kept() {
        let text = "apiVersion: v1\nenv: &env [{name: A, value: a}, {name: B, value: b}]\n\
                    containers:\n- {name: one, env: *env}\n- {name: two, env: *env}\n";
        let value = decode_document(text.as_bytes()).unwrap();
        assert_eq!(value["containers"][1]["env"][1]["value"], "b");
        assert_eq!(value["containers"][0]["env"], value["env"]);
    }

    #[test]
    fn plain_yaml_never_reaches_the_budget() {
        // The most nodes per byte plain YAML has: a flow map of short keys
        // and a flow list of one-letter strings, large enough to pass the
        // floor.
        let keys: Vec<String> = (0..120_000).map(|n| format!("{n:x}")).collect();
        let text = format!(
            "apiVersion: v1\nm: {{{}}}\nl: [{}]\n",
            keys.join(","),
            vec!["a"; 200_000].join(",")
        );
        assert!(text.len() as u64 > MIN_BUDGET as u64 / BUDGET_PER_BYTE as u64);
        let value = decode_document(text.as_bytes()).unwrap();
        assert_eq!(value["m"].as_object().unwrap().len(), 120_000);
        assert_eq!(value["l"].as_array().unwrap().len(), 200_000);
    }

    #[test]
    fn nesting_is_bounded_in_yaml_and_json() {
        // The top-level map is one level: 63 more fit, 64 do not.
        assert!(decode_document(nested(MAX_DEPTH - 1).as_bytes()).is_ok());
        let json = decode_document(nested(MAX_DEPTH).as_bytes()).err();
        assert_eq!(json, Some(DecodeError::Bound(Exceeded::Depth)));
        let yaml = format!(
            "apiVersion: v1\nx: {}1{}\n",
            "[".repeat(100),
            "]".repeat(100)
        );
        let Err(err) = decode_document(yaml.as_bytes()) else {
            panic!("the nested YAML was decoded");
        };
        assert_eq!(err, DecodeError::Bound(Exceeded::Depth));
        assert!(err.to_string().starts_with("nested too deeply"), "{err}");
    }

    #[test]
    fn values_are_what_serde_json_would_build() {
        let text =
            "apiVersion: v1\na: [1, -2, 2.5, true, null, ~, '', 18446744073709551615, .nan]\n\
                    b: {x: {y: z}}\n";
        let value = decode_document(text.as_bytes()).unwrap();
        let expected: Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(value, expected);
        let json = r#"{"a": [1, -2, 2.5, true, null, "s", {"k": []}]}"#;
        let expected: Value = serde_json::from_str(json).unwrap();
        assert_eq!(decode_document(json.as_bytes()).unwrap(), expected);
    }

    #[test]
    fn syntax_errors_keep_their_own_words() {
        let err = decode_document(b"{\"a\": 1} x").unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err}");
        let err = decode_document(b"a: [\n").unwrap_err();
        assert!(matches!(err, DecodeError::Yaml(_)), "{err}");
        let err = decode_document(b"a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err, DecodeError::SeveralDocuments(2));
    }
}
