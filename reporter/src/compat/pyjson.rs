//! JSON text as Python's `json.dump(obj, f, indent=2)` writes it (Memray's `--json`
//! files): two-space indentation, `", "`/`": "` separators, `[]`/`{}` for empty
//! containers, and non-ASCII characters escaped as `\uXXXX`.

use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i128),
    Str(String),
    List(Vec<Json>),
    /// Keys in insertion order (Python dicts keep it).
    Dict(Vec<(String, Json)>),
}

impl Json {
    pub fn dict<K: Into<String>>(items: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Dict(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn int(v: impl Into<i128>) -> Json {
        Json::Int(v.into())
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// The text `json.dump(value, f, indent=2)` writes.
    pub fn to_python_string(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, level: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Str(s) => write_str(out, s),
            Json::List(items) if items.is_empty() => out.push_str("[]"),
            Json::Dict(items) if items.is_empty() => out.push_str("{}"),
            Json::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    item.write(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push(']');
            }
            Json::Dict(items) => {
                out.push('{');
                for (i, (key, value)) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    write_str(out, key);
                    out.push_str(": ");
                    value.write(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push('}');
            }
        }
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// `json.encoder.py_encode_basestring_ascii`.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_layout() {
        let v = Json::dict([
            ("a", Json::int(1)),
            ("b", Json::List(vec![])),
            ("c", Json::List(vec![Json::dict([("x", Json::str("é\"\n😀\u{1}"))]), Json::Null])),
            ("d", Json::Dict(vec![])),
            ("e", Json::Bool(false)),
        ]);
        let expected = "{\n  \"a\": 1,\n  \"b\": [],\n  \"c\": [\n    {\n      \"x\": \"\\u00e9\\\"\\n\\ud83d\\ude00\\u0001\"\n    },\n    null\n  ],\n  \"d\": {},\n  \"e\": false\n}";
        assert_eq!(v.to_python_string(), expected);
    }
}
