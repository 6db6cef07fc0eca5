//! `memray transform`: records written in other tools' formats, as Memray 1.20's
//! `TransformReporter` writes them (threads merged, records in Memray's order).
//!
//! * `csv`: `allocator,num_allocations,size,tid,thread_name,stack_trace`, stacks as
//!   `function;file;line` innermost first joined with `|`; Python's `csv` dialect
//!   (minimal quoting, CRLF line ends).
//! * `gprof2dot`: its JSON profile format: one event per record with a stack (call
//!   chain of function indices, innermost first, cost in bytes), functions as
//!   `{"name", "module"}` where module is the file name.
//! * `speedscope`: the file-format schema's sampled profiles "Memory" (bytes) and
//!   "Allocations" (count) over stacks root first, identical stacks merged.
//!
//! JSON is written as Python's `json.dump` does (`", "`/`": "` separators, non-ASCII
//! escaped), so the files are byte-identical to Memray's.

use std::fmt::Write;

use serde::Serialize;

use crate::compat::pyjson::dumps;
use crate::engine::records::{format_thread_name, RecordSet};
use crate::render::format::allocator_type_name;

/// A supported output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gprof2dot,
    Csv,
    Speedscope,
}

impl Format {
    /// Case-insensitive, as Memray accepts it.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_lowercase().as_str() {
            "gprof2dot" => Some(Format::Gprof2dot),
            "csv" => Some(Format::Csv),
            "speedscope" => Some(Format::Speedscope),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gprof2dot => "gprof2dot",
            Format::Csv => "csv",
            Format::Speedscope => "speedscope",
        }
    }

    /// The default output file's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Gprof2dot => ".json",
            Format::Csv => ".csv",
            Format::Speedscope => ".speedscope.json",
        }
    }
}

/// The file contents for `format`. `name` is the speedscope profile's name (Memray
/// uses the capture's command line).
pub fn render(set: &RecordSet, format: Format, name: &str, version: &str) -> String {
    match format {
        Format::Csv => csv(set),
        Format::Gprof2dot => gprof2dot(set),
        Format::Speedscope => speedscope(set, name, version),
    }
}

fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

fn csv(set: &RecordSet) -> String {
    let mut out = String::from("allocator,num_allocations,size,tid,thread_name,stack_trace\r\n");
    for r in &set.records {
        let stack = set.report_stack(r);
        let trace: Vec<String> = stack.iter().map(|l| format!("{};{};{}", l.function, l.filename, l.lineno)).collect();
        let _ = write!(out, "{},{},{},{},", allocator_type_name(r.allocator), r.n_allocations, r.size, r.tid);
        csv_field(&mut out, &format_thread_name(r.tid as i64, set.thread_name(r.tid)));
        out.push(',');
        csv_field(&mut out, &trace.join("|"));
        out.push_str("\r\n");
    }
    out
}

/// Interns values in first-seen order.
struct Interner<K: std::hash::Hash + Eq> {
    index: std::collections::HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq> Interner<K> {
    fn new() -> Self {
        Interner { index: std::collections::HashMap::new() }
    }

    /// `(index, new)`.
    fn get(&mut self, key: K) -> (usize, bool) {
        let n = self.index.len();
        let i = *self.index.entry(key).or_insert(n);
        (i, i == n)
    }
}

fn gprof2dot(set: &RecordSet) -> String {
    #[derive(Serialize)]
    struct Cost {
        description: &'static str,
        unit: &'static str,
    }
    #[derive(Serialize)]
    struct Event {
        callchain: Vec<usize>,
        cost: [u64; 1],
    }
    #[derive(Serialize)]
    struct Function {
        name: String,
        module: String,
    }
    #[derive(Serialize)]
    struct Document {
        version: u32,
        costs: [Cost; 1],
        events: Vec<Event>,
        functions: Vec<Function>,
    }
    let mut interner = Interner::new();
    let mut functions = Vec::new();
    let mut events = Vec::new();
    for r in &set.records {
        let mut callchain = Vec::new();
        for l in set.report_stack(r) {
            let (i, new) = interner.get((l.function.to_string(), l.filename.to_string()));
            if new {
                functions.push(Function { name: l.function.to_string(), module: l.filename.to_string() });
            }
            callchain.push(i);
        }
        if !callchain.is_empty() {
            events.push(Event { callchain, cost: [r.size] });
        }
    }
    let doc = Document { version: 0, costs: [Cost { description: "Memory", unit: "bytes" }], events, functions };
    dumps(&doc, None)
}

/// A speedscope sample: frame indices root first, bytes, allocations.
type Sample = (Vec<usize>, u64, u64);

fn speedscope(set: &RecordSet, name: &str, version: &str) -> String {
    #[derive(Serialize)]
    struct Frame {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<i32>,
    }
    #[derive(Serialize)]
    struct Shared {
        frames: Vec<Frame>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Profile<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        name: &'static str,
        unit: &'static str,
        start_value: u64,
        end_value: u128,
        samples: Vec<&'a [usize]>,
        weights: Vec<u64>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Document<'a> {
        #[serde(rename = "$schema")]
        schema: &'static str,
        shared: Shared,
        profiles: [Profile<'a>; 2],
        name: &'a str,
        active_profile_index: u32,
        exporter: String,
    }
    let mut interner = Interner::new();
    let mut frames = Vec::new();
    let mut samples = Interner::new();
    // (stack, bytes, allocations) per distinct sample, in first-seen order.
    let mut weights: Vec<Sample> = Vec::new();
    for r in &set.records {
        let stack = set.report_stack(r);
        if stack.is_empty() {
            continue;
        }
        let mut sample = Vec::with_capacity(stack.len());
        for l in stack.iter().rev() {
            let (i, new) = interner.get((l.function.to_string(), l.filename.to_string(), l.lineno));
            if new {
                frames.push(Frame {
                    name: l.function.to_string(),
                    file: (!l.filename.is_empty()).then(|| l.filename.to_string()),
                    line: (l.lineno > 0).then_some(l.lineno),
                });
            }
            sample.push(i);
        }
        let (i, new) = samples.get(sample.clone());
        if new {
            weights.push((sample, 0, 0));
        }
        let w = &mut weights[i];
        w.1 = w.1.wrapping_add(r.size);
        w.2 += r.n_allocations;
    }
    let profile = |name: &'static str, unit: &'static str, weight: &dyn Fn(&Sample) -> u64| {
        let kept: Vec<&Sample> = weights.iter().filter(|w| weight(w) > 0).collect();
        Profile {
            kind: "sampled",
            name,
            unit,
            start_value: 0,
            end_value: kept.iter().map(|w| weight(w) as u128).sum(),
            samples: kept.iter().map(|w| w.0.as_slice()).collect(),
            weights: kept.iter().map(|w| weight(w)).collect(),
        }
    };
    let doc = Document {
        schema: "https://www.speedscope.app/file-format-schema.json",
        shared: Shared { frames },
        profiles: [profile("Memory", "bytes", &|w| w.1), profile("Allocations", "none", &|w| w.2)],
        name,
        active_profile_index: 0,
        exporter: format!("memray@{version}"),
    };
    dumps(&doc, None)
}

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii`).
pub fn json_str(s: &str) -> String {
    crate::compat::pyjson::dumps(s, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_like_python() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(json_str("é😀"), "\"\\u00e9\\ud83d\\ude00\"");
        assert_eq!(json_str("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn csv_quoting_like_python() {
        let mut s = String::new();
        csv_field(&mut s, "plain;x|y");
        csv_field(&mut s, "a,b");
        csv_field(&mut s, "say \"hi\"");
        assert_eq!(s, "plain;x|y\"a,b\"\"say \"\"hi\"\"\"");
        assert_eq!(Format::parse("CSV"), Some(Format::Csv));
        assert_eq!(Format::parse("dot"), None);
    }
}
