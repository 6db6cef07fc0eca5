//! JSON text as Python's `json.dumps` writes it (Memray's `--json` files and transforms):
//! `", "`/`": "` separators, with `indent=2` one item per line and `[]`/`{}` for empty
//! containers, and (`ensure_ascii`) every character outside `' '..='~'` escaped as
//! `\uXXXX`. A serde_json [`Formatter`], so documents are plain `Serialize` values.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

/// Python's `json` layout; `indent: None` is `json.dumps(obj)`, `Some(2)` is
/// `json.dump(obj, f, indent=2)`.
pub struct PythonFormatter {
    indent: Option<usize>,
    level: usize,
    has_value: bool,
}

impl PythonFormatter {
    pub fn new(indent: Option<usize>) -> Self {
        PythonFormatter { indent, level: 0, has_value: false }
    }

    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(n) = self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level * n {
                w.write_all(b" ")?;
            }
        }
        Ok(())
    }

    /// Before an array item or an object key.
    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match (first, self.indent) {
            (true, _) => self.newline(w),
            (false, Some(_)) => {
                w.write_all(b",")?;
                self.newline(w)
            }
            (false, None) => w.write_all(b", "),
        }
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }
}

impl Formatter for PythonFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    /// `json.encoder.py_encode_basestring_ascii`: serde_json escapes quotes, backslashes
    /// and control characters as Python does; the rest of the non-printable-ASCII range
    /// is escaped here.
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(i) = rest.find(|c: char| !(' '..='~').contains(&c)) {
            w.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..].chars().next().unwrap_or(' ');
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            rest = &rest[i + c.len_utf8()..];
        }
        w.write_all(rest.as_bytes())
    }

    fn write_char_escape<W: ?Sized + io::Write>(&mut self, w: &mut W, escape: CharEscape) -> io::Result<()> {
        let text: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(w, "\\u{byte:04x}"),
        };
        w.write_all(text)
    }
}

/// `json.dumps(value, indent=indent)`.
pub fn dumps<T: Serialize + ?Sized>(value: &T, indent: Option<usize>) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter::new(indent));
    // Serializing to memory fails only for maps with non-string keys, which no caller has.
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    // The formatter writes ASCII only.
    String::from_utf8(out).unwrap_or_default()
}

/// A map serialized in the order given (Python dicts keep insertion order).
pub struct Ordered<K, V>(pub Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Ordered<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct X {
        x: &'static str,
    }

    #[derive(Serialize)]
    struct Doc {
        a: u64,
        b: Vec<u8>,
        c: (X, Option<u8>),
        d: Ordered<String, u8>,
        e: bool,
    }

    fn doc() -> Doc {
        Doc { a: 1, b: vec![], c: (X { x: "é\"\n😀\u{1}\u{7f}" }, None), d: Ordered(vec![]), e: false }
    }

    #[test]
    fn python_layout_indented() {
        let expected = "{\n  \"a\": 1,\n  \"b\": [],\n  \"c\": [\n    {\n      \"x\": \"\\u00e9\\\"\\n\\ud83d\\ude00\\u0001\\u007f\"\n    },\n    null\n  ],\n  \"d\": {},\n  \"e\": false\n}";
        assert_eq!(dumps(&doc(), Some(2)), expected);
    }

    #[test]
    fn python_layout_compact() {
        let expected =
            "{\"a\": 1, \"b\": [], \"c\": [{\"x\": \"\\u00e9\\\"\\n\\ud83d\\ude00\\u0001\\u007f\"}, null], \"d\": {}, \"e\": false}";
        assert_eq!(dumps(&doc(), None), expected);
        assert_eq!(dumps("a\"b\\c\n/", None), "\"a\\\"b\\\\c\\n/\"");
    }
}
