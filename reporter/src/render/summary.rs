//! `memray summary`: a table of the functions that allocated the most, as Memray 1.20
//! prints it (its `SummaryReporter`, drawn by `rich`).
//!
//! Figures: records are taken in Memray's order until their running total reaches 95 %
//! of the whole (Memray stops there); each record adds its size and count to every
//! distinct (function, file) of its stack ("total") and its size to the innermost one
//! ("own"); records without a stack go to `??? at ???`. Rows are sorted on the chosen
//! column (stable, ties in first-seen order) and cut to `max_rows`.
//!
//! Layout: `rich`'s table with a heavy head, columns sharing the console width 5:1:1:1:1:1
//! whatever their content, cells word-wrapped (long words cut with `…`), numbers
//! right-aligned, header cells aligned to the bottom.

use std::fmt::Write;

use crate::engine::records::RecordSet;
use crate::render::format::{sampling_notice, size_fmt};

/// Memray stops adding records once they reach this share of the total.
pub const MAX_MEMORY_RATIO: f64 = 0.95;
/// Number of sortable columns (`-s 1` to `-s 5`).
pub const N_COLUMNS: usize = 5;

/// Figures of one (function, file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub function: String,
    pub file: String,
    /// A native frame (captures with native traces): marked in the table.
    pub native: bool,
    pub own_memory: u64,
    pub total_memory: u64,
    pub n_allocations: u64,
}

pub struct Summary {
    /// In first-seen order.
    pub entries: Vec<Entry>,
    /// Bytes of all records (the percentages' base).
    pub current_memory_size: u64,
    pub total_allocations: u64,
    /// Each capture's sampling interval (0: not sampled), for the estimates' notice.
    pub sampling_intervals: Vec<u64>,
}

impl Summary {
    /// Memray's `aggregate_allocations` over the records of `set`.
    pub fn build(set: &RecordSet) -> Summary {
        let current_memory_size = set.records.iter().fold(0u64, |a, r| a.wrapping_add(r.size));
        let total_allocations = set.records.iter().map(|r| r.n_allocations).sum();
        let threshold = MAX_MEMORY_RATIO * current_memory_size as f64;
        let mut entries: Vec<Entry> = Vec::new();
        let mut index: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
        let mut slot = |entries: &mut Vec<Entry>, function: &str, file: &str| -> usize {
            *index.entry((function.to_string(), file.to_string())).or_insert_with(|| {
                entries.push(Entry { function: function.into(), file: file.into(), ..Entry::default() });
                entries.len() - 1
            })
        };
        let mut current_total = 0u64;
        set.prepare_native();
        for record in &set.records {
            if current_total as f64 >= threshold {
                break;
            }
            current_total = current_total.wrapping_add(record.size);
            let stack = set.report_stack(record);
            if stack.is_empty() {
                let at = slot(&mut entries, "???", "???");
                let e = &mut entries[at];
                e.total_memory = e.total_memory.wrapping_add(record.size);
                e.own_memory = e.own_memory.wrapping_add(record.size);
                e.n_allocations += record.n_allocations;
                continue;
            }
            let mut visited: Vec<usize> = Vec::new();
            for (i, loc) in stack.iter().enumerate() {
                let at = slot(&mut entries, &loc.function, &loc.filename);
                entries[at].native |= loc.native;
                if visited.contains(&at) {
                    continue;
                }
                visited.push(at);
                let e = &mut entries[at];
                if i == 0 {
                    e.own_memory = e.own_memory.wrapping_add(record.size);
                }
                e.total_memory = e.total_memory.wrapping_add(record.size);
                e.n_allocations += record.n_allocations;
            }
        }
        Summary { entries, current_memory_size, total_allocations, sampling_intervals: vec![set.header.sampling_interval] }
    }

    /// Several processes' summaries as one (`memray summary a.bin b.bin ...`): each built
    /// over its own capture (its own peak, its own 95% cut), then the figures of each
    /// (function, file) summed, rows in first-seen order across the parts.
    pub fn merge(parts: Vec<Summary>) -> Summary {
        use std::collections::hash_map::Entry;
        let mut merged = Summary { entries: Vec::new(), current_memory_size: 0, total_allocations: 0, sampling_intervals: Vec::new() };
        let mut index: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
        for part in parts {
            merged.current_memory_size = merged.current_memory_size.wrapping_add(part.current_memory_size);
            merged.total_allocations += part.total_allocations;
            merged.sampling_intervals.extend(part.sampling_intervals);
            for e in part.entries {
                match index.entry((e.function.clone(), e.file.clone())) {
                    Entry::Occupied(at) => {
                        let m = &mut merged.entries[*at.get()];
                        m.native |= e.native;
                        m.own_memory = m.own_memory.wrapping_add(e.own_memory);
                        m.total_memory = m.total_memory.wrapping_add(e.total_memory);
                        m.n_allocations += e.n_allocations;
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(merged.entries.len());
                        merged.entries.push(e);
                    }
                }
            }
        }
        merged
    }

    /// The rows shown: sorted on `sort_column` (1-5), at most `max_rows` (Python's
    /// `[:max_rows]`, so a negative count drops rows from the end).
    pub fn rows(&self, sort_column: usize, max_rows: i64) -> Vec<&Entry> {
        let mut rows: Vec<&Entry> = self.entries.iter().collect();
        let key = |e: &Entry| match sort_column {
            1 | 2 => e.total_memory,
            3 | 4 => e.own_memory,
            _ => e.n_allocations,
        };
        rows.sort_by_key(|e| std::cmp::Reverse(key(e)));
        let keep = if max_rows >= 0 {
            (max_rows as u64).min(rows.len() as u64) as usize
        } else {
            rows.len().saturating_sub(max_rows.unsigned_abs() as usize)
        };
        rows.truncate(keep);
        rows
    }

    /// The table for a console `width` cells wide; `styled` adds terminal colours.
    pub fn render(&self, sort_column: usize, max_rows: i64, width: usize, styled: bool) -> String {
        let mut headers: Vec<String> = ["Location", "Total Memory", "Total Memory %", "Own Memory", "Own Memory % ", "Allocation Count"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if (1..=N_COLUMNS).contains(&sort_column) {
            headers[sort_column] = format!("<{}>", headers[sort_column]);
        }
        let base = self.current_memory_size;
        let pct = |v: u64| if base == 0 { 0.0 } else { v as f64 / base as f64 * 100.0 };
        let mut body: Vec<Vec<Cell>> = Vec::new();
        for e in self.rows(sort_column, max_rows) {
            let total_colour = size_colour(ratio(e.total_memory, base));
            let own_colour = size_colour(ratio(e.own_memory, base));
            let count_colour = size_colour(ratio(e.n_allocations, self.total_allocations));
            body.push(vec![
                Cell::location(&e.function, &e.file, e.native),
                Cell::plain(size_fmt(e.total_memory), total_colour),
                Cell::plain(format!("{:.2}%", pct(e.total_memory)), total_colour),
                Cell::plain(size_fmt(e.own_memory), own_colour),
                Cell::plain(format!("{:.2}%", pct(e.own_memory)), own_colour),
                Cell::plain(e.n_allocations.to_string(), count_colour),
            ]);
        }
        let table = render_table(&headers, &body, width, styled);
        match sampling_notice(&self.sampling_intervals) {
            Some(notice) => format!("{notice}\n{table}"),
            None => table,
        }
    }
}

fn ratio(v: u64, base: u64) -> f64 {
    if base == 0 {
        0.0
    } else {
        v as f64 / base as f64
    }
}

/// Memray's `_size_to_color`, as SGR codes.
fn size_colour(proportion: f64) -> &'static str {
    if proportion > 0.6 {
        "31"
    } else if proportion > 0.2 {
        "33"
    } else if proportion > 0.05 {
        "32"
    } else {
        "92"
    }
}

/// A cell's plain text with styled spans (byte ranges and SGR codes).
struct Cell {
    text: String,
    spans: Vec<(usize, usize, &'static str)>,
}

impl Cell {
    fn plain(text: String, sgr: &'static str) -> Cell {
        let n = text.len();
        Cell { text, spans: vec![(0, n, sgr)] }
    }

    fn location(function: &str, file: &str, native: bool) -> Cell {
        let mut text = format!("{function} at {file}");
        let f = function.len();
        let mut spans = vec![(0, f, "1;35"), (f + 4, text.len(), "36")];
        if native {
            let start = text.len() + 1;
            text.push(' ');
            text.push_str(crate::render::tree::NATIVE_MARKER);
            spans.push((start, text.len(), "33"));
        }
        Cell { spans, text }
    }
}

/// Cells a character takes in a terminal (rich's `cell_len`, for the common cases).
fn char_width(c: char) -> usize {
    let u = c as u32;
    if u == 0 || (0x300..=0x36f).contains(&u) || (0x200b..=0x200f).contains(&u) {
        return 0;
    }
    let wide = (0x1100..=0x115f).contains(&u)
        || (0x2e80..=0x303e).contains(&u)
        || (0x3041..=0x33ff).contains(&u)
        || (0x3400..=0x4dbf).contains(&u)
        || (0x4e00..=0x9fff).contains(&u)
        || (0xa000..=0xa4cf).contains(&u)
        || (0xac00..=0xd7a3).contains(&u)
        || (0xf900..=0xfaff).contains(&u)
        || (0xfe30..=0xfe4f).contains(&u)
        || (0xff00..=0xff60).contains(&u)
        || (0xffe0..=0xffe6).contains(&u)
        || (0x1f300..=0x1f64f).contains(&u)
        || (0x1f900..=0x1f9ff).contains(&u)
        || (0x20000..=0x3fffd).contains(&u);
    if wide {
        2
    } else {
        1
    }
}

fn cell_len(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// rich's `set_cell_size`: cut (or pad) to exactly `width` cells.
fn set_cell_size(s: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    while used < width {
        out.push(' ');
        used += 1;
    }
    out
}

/// rich's `divide_line` without folding: byte offsets where wrapped lines start.
fn divide_line(text: &str, width: usize) -> Vec<usize> {
    let mut breaks = Vec::new();
    let mut offset = 0usize;
    for (start, word) in words(text) {
        let word_len = cell_len(word.trim_end());
        if width as i64 - offset as i64 >= word_len as i64 {
            offset += cell_len(word);
        } else if word_len > width {
            if start > 0 {
                breaks.push(start);
            }
            offset = cell_len(word);
        } else if offset > 0 && start > 0 {
            breaks.push(start);
            offset = cell_len(word);
        }
    }
    breaks
}

/// `re.finditer(r"\s*\S+\s*")` as consecutive matches from the start.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let lead = rest.len() - rest.trim_start().len();
        let after_lead = &rest[lead..];
        let word_end = after_lead.find(char::is_whitespace).unwrap_or(after_lead.len());
        if word_end == 0 {
            break;
        }
        let after_word = &after_lead[word_end..];
        let trail = after_word.len() - after_word.trim_start().len();
        let len = lead + word_end + trail;
        out.push((pos, &text[pos..pos + len]));
        pos += len;
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Justify {
    Left,
    Right,
}

/// rich's `Text.wrap` then `Lines.justify` and `truncate` (overflow "ellipsis"):
/// lines of exactly `width` cells, as (start byte in `text`, line text).
fn wrap(text: &str, width: usize, justify: Justify) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    for (line_start, line) in split_lines(text) {
        let breaks = divide_line(line, width);
        let mut bounds = vec![0];
        bounds.extend(breaks);
        bounds.push(line.len());
        for pair in bounds.windows(2) {
            let mut piece = line[pair[0]..pair[1]].to_string();
            // rstrip_end: drop trailing whitespace beyond the width.
            let len = piece.chars().count();
            if len > width {
                let ws = piece.chars().rev().take_while(|c| c.is_whitespace()).count();
                for _ in 0..ws.min(len - width) {
                    piece.pop();
                }
            }
            let fitted = match justify {
                Justify::Left => truncate(&piece, width, true),
                Justify::Right => {
                    let t = truncate(piece.trim_end(), width, false);
                    format!("{}{}", " ".repeat(width.saturating_sub(cell_len(&t))), t)
                }
            };
            lines.push((line_start + pair[0], fitted));
        }
    }
    lines
}

fn split_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == '\n' {
            out.push((start, &text[start..i]));
            start = i + 1;
        }
    }
    out.push((start, &text[start..]));
    out
}

/// `Text.truncate(width, overflow="ellipsis", pad)`.
fn truncate(s: &str, width: usize, pad: bool) -> String {
    let len = cell_len(s);
    if len > width {
        if width == 0 {
            return String::new();
        }
        let mut t = set_cell_size(s, width - 1);
        t.push('…');
        return t;
    }
    if pad {
        format!("{s}{}", " ".repeat(width - len))
    } else {
        s.to_string()
    }
}

/// Column widths: rich's `ratio_distribute` of the space inside the borders.
fn column_widths(console_width: usize) -> Vec<usize> {
    let ratios = [5usize, 1, 1, 1, 1, 1];
    let extra = 2 + ratios.len() - 1;
    let mut remaining = console_width.saturating_sub(extra) as i64;
    let mut total_ratio: i64 = ratios.iter().sum::<usize>() as i64;
    let mut widths = Vec::new();
    for &r in &ratios {
        let r = r as i64;
        // ceil(r * remaining / total_ratio), at least the padding plus one cell.
        let share = (r * remaining + total_ratio - 1).div_euclid(total_ratio);
        let w = share.max(3);
        widths.push(w as usize);
        total_ratio -= r;
        remaining -= w;
    }
    widths
}

fn render_table(headers: &[String], body: &[Vec<Cell>], console_width: usize, styled: bool) -> String {
    let widths = column_widths(console_width);
    let mut out = String::new();
    let rule = |out: &mut String, l: &str, h: &str, m: &str, r: &str| {
        out.push_str(l);
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                out.push_str(m);
            }
            out.push_str(&h.repeat(*w));
        }
        out.push_str(r);
        out.push('\n');
    };
    rule(&mut out, "┏", "━", "┳", "┓");
    // Header: bottom-aligned, Location left, the rest right.
    let header_cells: Vec<Vec<String>> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let j = if i == 0 { Justify::Left } else { Justify::Right };
            wrap(h, widths[i] - 2, j).into_iter().map(|(_, l)| paint_all(&l, "1", styled)).collect()
        })
        .collect();
    let height = header_cells.iter().map(Vec::len).max().unwrap_or(1);
    for line in 0..height {
        out.push('┃');
        for (i, cell) in header_cells.iter().enumerate() {
            if i > 0 {
                out.push('┃');
            }
            let pad = height - cell.len();
            let text = if line >= pad { cell[line - pad].clone() } else { " ".repeat(widths[i] - 2) };
            let _ = write!(out, " {text} ");
        }
        out.push_str("┃\n");
    }
    rule(&mut out, "┡", "━", "╇", "┩");
    for row in body {
        let cells: Vec<Vec<String>> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let j = if i == 0 { Justify::Left } else { Justify::Right };
                wrap(&c.text, widths[i] - 2, j).into_iter().map(|(start, l)| if styled { style_line(c, start, &l) } else { l }).collect()
            })
            .collect();
        let height = cells.iter().map(Vec::len).max().unwrap_or(1);
        for line in 0..height {
            out.push('│');
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push('│');
                }
                let text = cell.get(line).cloned().unwrap_or_else(|| " ".repeat(widths[i] - 2));
                let _ = write!(out, " {text} ");
            }
            out.push_str("│\n");
        }
    }
    rule(&mut out, "└", "─", "┴", "┘");
    out
}

fn paint_all(s: &str, sgr: &str, styled: bool) -> String {
    if styled && !s.trim().is_empty() {
        format!("\x1b[{sgr}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// Colours a wrapped line by the spans of its cell (`start`: where the line begins in
/// the cell's text; padding and the ellipsis keep the colour of what they follow).
fn style_line(cell: &Cell, start: usize, line: &str) -> String {
    let trimmed = line.trim_start();
    let lead = line.len() - trimmed.len();
    let mut out = line[..lead].to_string();
    let mut pos = start;
    let mut current: Option<&str> = None;
    for c in trimmed.chars() {
        let sgr = cell.spans.iter().find(|(a, b, _)| pos >= *a && pos < *b).map(|s| s.2);
        let sgr = if c == ' ' && sgr.is_none() { None } else { sgr.or(current) };
        if sgr != current {
            if current.is_some() {
                out.push_str("\x1b[0m");
            }
            if let Some(code) = sgr {
                let _ = write!(out, "\x1b[{code}m");
            }
            current = sgr;
        }
        out.push(c);
        pos += c.len_utf8();
    }
    if current.is_some() {
        out.push_str("\x1b[0m");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::estimates::test_capture;
    use crate::engine::records::leaked_record_set;

    #[test]
    fn sampled_captures_say_once_that_figures_are_estimates() {
        for (interval, notices) in [(64 * 1024, 1), (0, 0)] {
            let summary = Summary::build(&leaked_record_set(&test_capture(interval)));
            let text = summary.render(1, 10, 120, false);
            assert_eq!(text.matches("Sampled capture: one allocation recorded per 64.0KiB").count(), notices, "{text}");
            // Merging keeps one notice.
            let merged = Summary::merge(vec![summary, Summary::build(&leaked_record_set(&test_capture(interval)))]);
            assert_eq!(merged.render(1, 10, 120, false).matches("Sampled capture").count(), notices);
        }
    }

    #[test]
    fn odd_text_does_not_panic() {
        for w in [1, 2, 5, 9] {
            for t in ["a\u{3000}\u{3000}\u{3000}b", "日本語のテキスト 長い", "x\ny z", "", "   ", "a  b"] {
                for j in [Justify::Left, Justify::Right] {
                    assert!(wrap(t, w, j).iter().all(|(_, l)| cell_len(l) <= w.max(1)));
                }
            }
        }
        let e = Entry { function: "f\u{3000}".into(), file: "x".into(), ..Entry::default() };
        let s = Summary { entries: vec![e], current_memory_size: 0, total_allocations: 0, sampling_intervals: vec![0] };
        for width in [0, 10, 30, 200] {
            assert!(!s.render(1, 10, width, true).is_empty());
        }
    }

    #[test]
    fn merge_sums_each_location_in_first_seen_order() {
        let e = |function: &str, own, total, n| Entry {
            function: function.into(),
            file: "a.py".into(),
            native: false,
            own_memory: own,
            total_memory: total,
            n_allocations: n,
        };
        let a = Summary {
            entries: vec![e("f", 10, 30, 1), e("main", 0, 30, 1)],
            current_memory_size: 30,
            total_allocations: 1,
            sampling_intervals: vec![0],
        };
        let b = Summary {
            entries: vec![e("g", 5, 5, 2), e("main", 0, 5, 2), e("f", 1, 1, 1)],
            current_memory_size: 6,
            total_allocations: 3,
            sampling_intervals: vec![0],
        };
        let m = Summary::merge(vec![a, b]);
        assert_eq!(m.entries, vec![e("f", 11, 31, 2), e("main", 0, 35, 3), e("g", 5, 5, 2)]);
        assert_eq!((m.current_memory_size, m.total_allocations), (36, 4));
    }

    #[test]
    fn widths_follow_rich() {
        assert_eq!(column_widths(80), vec![37, 8, 7, 7, 7, 7]);
        assert_eq!(column_widths(160), vec![77, 16, 15, 15, 15, 15]);
    }

    #[test]
    fn wrapping_like_rich() {
        let l = |t: &str, w: usize, j: Justify| wrap(t, w, j).into_iter().map(|x| x.1).collect::<Vec<_>>();
        assert_eq!(l("<Total Memory>", 6, Justify::Right), vec!["<Total", "Memor…"]);
        assert_eq!(l("Total Memory %", 5, Justify::Right), vec!["Total", "Memo…", "    %"]);
        assert_eq!(l("1.114MB", 6, Justify::Right), vec!["1.114…"]);
        assert_eq!(l("Location", 35, Justify::Left), vec![format!("Location{}", " ".repeat(27))]);
        assert_eq!(
            l("_run_tracker at /srv/app01/.venvs/oracle-3.12/lib/python3.12/x.py", 35, Justify::Left),
            vec!["_run_tracker at                    ".to_string(), "/srv/app01/.venvs/oracle-3.12/lib/…".to_string()]
        );
        assert_eq!(
            l("exec_module at <frozen importlib._bootstrap_external>", 35, Justify::Left),
            vec!["exec_module at <frozen             ", "importlib._bootstrap_external>     "]
        );
    }
}
