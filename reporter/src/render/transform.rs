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
    let mut functions = Interner::new();
    let mut function_json: Vec<String> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    for r in &set.records {
        let mut chain = Vec::new();
        for l in set.report_stack(r) {
            let (i, new) = functions.get((l.function.to_string(), l.filename.to_string()));
            if new {
                function_json.push(format!("{{\"name\": {}, \"module\": {}}}", json_str(&l.function), json_str(&l.filename)));
            }
            chain.push(i.to_string());
        }
        if chain.is_empty() {
            continue;
        }
        events.push(format!("{{\"callchain\": [{}], \"cost\": [{}]}}", chain.join(", "), r.size));
    }
    format!(
        "{{\"version\": 0, \"costs\": [{{\"description\": \"Memory\", \"unit\": \"bytes\"}}], \"events\": [{}], \"functions\": [{}]}}",
        events.join(", "),
        function_json.join(", ")
    )
}

/// A speedscope sample: frame indices root first, bytes, allocations.
type Sample = (Vec<usize>, u64, u64);

fn speedscope(set: &RecordSet, name: &str, version: &str) -> String {
    let mut frames = Interner::new();
    let mut frame_json: Vec<String> = Vec::new();
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
            let (i, new) = frames.get((l.function.to_string(), l.filename.to_string(), l.lineno));
            if new {
                let mut f = format!("{{\"name\": {}", json_str(&l.function));
                if !l.filename.is_empty() {
                    let _ = write!(f, ", \"file\": {}", json_str(&l.filename));
                }
                if l.lineno > 0 {
                    let _ = write!(f, ", \"line\": {}", l.lineno);
                }
                f.push('}');
                frame_json.push(f);
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
    let profile = |name: &str, unit: &str, weight: &dyn Fn(&Sample) -> u64| {
        let kept: Vec<&Sample> = weights.iter().filter(|w| weight(w) > 0).collect();
        let total: u128 = kept.iter().map(|w| weight(w) as u128).sum();
        let samples: Vec<String> =
            kept.iter().map(|w| format!("[{}]", w.0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))).collect();
        let values: Vec<String> = kept.iter().map(|w| weight(w).to_string()).collect();
        format!(
            "{{\"type\": \"sampled\", \"name\": {}, \"unit\": {}, \"startValue\": 0, \"endValue\": {total}, \"samples\": [{}], \"weights\": [{}]}}",
            json_str(name),
            json_str(unit),
            samples.join(", "),
            values.join(", ")
        )
    };
    format!(
        "{{\"$schema\": \"https://www.speedscope.app/file-format-schema.json\", \"shared\": {{\"frames\": [{}]}}, \"profiles\": [{}, {}], \"name\": {}, \"activeProfileIndex\": 0, \"exporter\": {}}}",
        frame_json.join(", "),
        profile("Memory", "bytes", &|w| w.1),
        profile("Allocations", "none", &|w| w.2),
        json_str(name),
        json_str(&format!("memray@{version}"))
    )
}

/// A JSON string as Python's `json.dumps` writes it (`ensure_ascii`).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::compat::pyjson::write_str(&mut out, s);
    out
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
