//! `memray stats`: the figures, text layout and JSON keys of Memray 1.20's
//! `StatsReporter`.

use std::cmp::Reverse;

use memray_capture::{Allocator, FileFormat, PythonAllocator};

use crate::compat::localtime::format_millis;
use crate::compat::modules::ModuleResolver;
use crate::compat::pyjson::{dumps, Ordered};
use crate::engine::analysis::Analysis;
use crate::error::ReportError;
use crate::model::stacks::Location;
use crate::render::format::{allocator_type_name, format_location, python_allocator_label, sampling_notice, size_fmt};
use serde::Serialize;

/// Bins of the allocation size histogram.
pub const HISTOGRAM_BINS: usize = 10;
/// Length of the histogram's longest bar.
pub const HISTOGRAM_SCALE: usize = 25;

/// Allocations and bytes of one top-level module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleTotals {
    pub module: String,
    pub num_allocations: u64,
    pub total_bytes: u64,
}

/// The `metadata` object of the JSON output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    /// ALLOCATION records read, deallocations included.
    pub total_allocations: u64,
    pub total_frames: u64,
    pub peak_memory: u64,
    pub command_line: String,
    pub pid: i32,
    pub main_thread_id: u64,
    pub python_allocator: PythonAllocator,
    pub has_native_traces: bool,
    pub trace_python_allocators: bool,
    pub file_format: FileFormat,
    /// 0: every allocation recorded (merged: the largest of the captures').
    pub sampling_interval: u64,
}

/// Everything `memray stats` prints.
#[derive(Clone, Debug)]
pub struct Stats {
    pub num_largest: usize,
    pub total_num_allocations: u64,
    pub total_bytes_allocated: u64,
    /// (size, count), by size.
    pub allocation_count_by_size: Vec<(u64, u64)>,
    /// Most used first; ties in Memray's order.
    pub allocator_distribution: Vec<(Allocator, u64)>,
    /// Innermost locations by bytes allocated; `None` is "no Python stack".
    pub top_allocations_by_size: Vec<(Option<Location>, u64)>,
    pub top_allocations_by_count: Vec<(Option<Location>, u64)>,
    pub top_modules_by_allocation_size: Vec<ModuleTotals>,
    pub top_modules_by_allocation_count: Vec<ModuleTotals>,
    pub metadata: Metadata,
    /// The processes whose captures were merged ([`Stats::merge`]); empty for one capture.
    pub merged_pids: Vec<i32>,
    /// Each capture's sampling interval (0: not sampled), for the estimates' notice.
    pub sampling_intervals: Vec<u64>,
}

impl Stats {
    /// Computes the statistics of a (non-aggregated) capture. `num_largest` is the
    /// length of the top-N lists (at least 1).
    pub fn compute(analysis: &Analysis, num_largest: usize) -> Result<Stats, ReportError> {
        if analysis.is_aggregated() {
            return Err(ReportError::AggregatedStats);
        }
        let num_largest = num_largest.max(1);
        let allocation_count_by_size = analysis.count_by_size.clone();

        // Memray sorts its C++ map's entries with Python's stable sort.
        let mut allocator_distribution = analysis.allocators_in_memray_order();
        allocator_distribution.sort_by_key(|&(_, count)| Reverse(count));

        // Memray keeps the largest (value, location id) pairs: ties go to the location
        // first seen later, and "no stack" (an empty optional) loses every tie.
        let top = |value: fn(&crate::engine::analysis::Usage) -> u64| -> Vec<(Option<Location>, u64)> {
            let mut v: Vec<(u64, Option<u32>)> = analysis.by_location.iter().map(|(loc, u)| (value(u), *loc)).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.truncate(num_largest);
            v.into_iter().map(|(n, loc)| (loc.map(|id| analysis.stacks.location(id).clone()), n)).collect()
        };
        let top_allocations_by_size = top(|u| u.bytes);
        let top_allocations_by_count = top(|u| u.count);

        let mut resolver = ModuleResolver::from_header(&analysis.header);
        let mut modules: Vec<ModuleTotals> = Vec::new();
        for totals in analysis.stacks_in_memray_order() {
            let filenames: Vec<std::rc::Rc<str>> =
                analysis.stacks.frames(totals.stack).map(|f| analysis.stacks.resolve(f).filename).collect();
            let module = resolver.module_for_stack(filenames.iter().map(|f| &**f));
            match modules.iter_mut().find(|m| m.module == module) {
                Some(m) => {
                    m.num_allocations += totals.count;
                    m.total_bytes = m.total_bytes.wrapping_add(totals.bytes);
                }
                None => modules.push(ModuleTotals { module, num_allocations: totals.count, total_bytes: totals.bytes }),
            }
        }
        let mut by_count = modules.clone();
        by_count.sort_by_key(|m| Reverse(m.num_allocations));
        by_count.truncate(num_largest);
        let mut by_size = modules;
        by_size.sort_by_key(|m| Reverse(m.total_bytes));
        by_size.truncate(num_largest);

        let h = &analysis.header;
        Ok(Stats {
            num_largest,
            total_num_allocations: analysis.total_allocations,
            total_bytes_allocated: analysis.total_bytes_allocated,
            allocation_count_by_size,
            allocator_distribution,
            top_allocations_by_size,
            top_allocations_by_count,
            top_modules_by_allocation_size: by_size,
            top_modules_by_allocation_count: by_count,
            metadata: Metadata {
                start_time_ms: h.start_time_ms,
                end_time_ms: h.end_time_ms,
                total_allocations: analysis.n_allocation_records,
                total_frames: h.sampling_interval,
                peak_memory: analysis.peak_memory,
                command_line: h.command_line.clone(),
                pid: h.pid,
                main_thread_id: h.main_tid,
                python_allocator: h.python_allocator,
                has_native_traces: h.native_traces,
                trace_python_allocators: h.trace_python_allocators,
                file_format: h.file_format,
                sampling_interval: h.sampling_interval,
            },
            merged_pids: Vec::new(),
            sampling_intervals: vec![h.sampling_interval],
        })
    }

    /// The statistics of several captures (a process tree's: one per process) as one:
    /// counts and bytes summed, per size, allocator, location and module. The peak is the
    /// sum of each process's own peak (they need not have happened at once). Each part
    /// must hold its full lists (computed with `num_largest` = usize::MAX).
    pub fn merge(parts: &[Stats], num_largest: usize) -> Stats {
        fn add<K: PartialEq + Clone>(into: &mut Vec<(K, u64)>, key: &K, n: u64) {
            match into.iter_mut().find(|(k, _)| k == key) {
                Some((_, total)) => *total = total.wrapping_add(n),
                None => into.push((key.clone(), n)),
            }
        }
        // Largest first; ties by location (a stable order across runs), no stack last.
        fn top(mut v: Vec<(Option<Location>, u64)>, n: usize) -> Vec<(Option<Location>, u64)> {
            let key = |l: &Option<Location>| l.as_ref().map(|l| (l.function.clone(), l.filename.clone(), l.lineno));
            v.sort_by(|a, b| {
                b.1.cmp(&a.1).then_with(|| key(&b.0).is_some().cmp(&key(&a.0).is_some())).then_with(|| key(&a.0).cmp(&key(&b.0)))
            });
            v.truncate(n);
            v
        }
        let num_largest = num_largest.max(1);
        let mut sizes: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        let (mut by_size, mut by_count, mut allocators) = (Vec::new(), Vec::new(), Vec::new());
        let mut module_bytes: Vec<(String, u64)> = Vec::new();
        let mut module_count: Vec<(String, u64)> = Vec::new();
        for p in parts {
            for &(size, n) in &p.allocation_count_by_size {
                *sizes.entry(size).or_default() += n;
            }
            for (a, n) in &p.allocator_distribution {
                add(&mut allocators, a, *n);
            }
            for (l, n) in &p.top_allocations_by_size {
                add(&mut by_size, l, *n);
            }
            for (l, n) in &p.top_allocations_by_count {
                add(&mut by_count, l, *n);
            }
            for m in &p.top_modules_by_allocation_size {
                add(&mut module_bytes, &m.module, m.total_bytes);
                add(&mut module_count, &m.module, m.num_allocations);
            }
        }
        allocators.sort_by_key(|&(_, n)| Reverse(n));
        let modules: Vec<ModuleTotals> = module_bytes
            .iter()
            .map(|(module, bytes)| ModuleTotals {
                module: module.clone(),
                total_bytes: *bytes,
                num_allocations: module_count.iter().find(|(m, _)| m == module).map_or(0, |(_, n)| *n),
            })
            .collect();
        let mut modules_by_size = modules.clone();
        modules_by_size.sort_by(|a, b| b.total_bytes.cmp(&a.total_bytes).then_with(|| a.module.cmp(&b.module)));
        modules_by_size.truncate(num_largest);
        let mut modules_by_count = modules;
        modules_by_count.sort_by(|a, b| b.num_allocations.cmp(&a.num_allocations).then_with(|| a.module.cmp(&b.module)));
        modules_by_count.truncate(num_largest);
        let sum = |f: fn(&Stats) -> u64| parts.iter().fold(0u64, |t, p| t.wrapping_add(f(p)));
        let first = parts.first().map(|p| p.metadata.clone());
        let metadata = Metadata {
            start_time_ms: parts.iter().map(|p| p.metadata.start_time_ms).min().unwrap_or(0),
            end_time_ms: parts.iter().map(|p| p.metadata.end_time_ms).max().unwrap_or(0),
            total_allocations: sum(|p| p.metadata.total_allocations),
            total_frames: sum(|p| p.metadata.total_frames),
            peak_memory: sum(|p| p.metadata.peak_memory),
            sampling_interval: parts.iter().map(|p| p.metadata.sampling_interval).max().unwrap_or(0),
            ..first.unwrap_or(Metadata {
                start_time_ms: 0,
                end_time_ms: 0,
                total_allocations: 0,
                total_frames: 0,
                peak_memory: 0,
                command_line: String::new(),
                pid: 0,
                main_thread_id: 0,
                python_allocator: PythonAllocator::Other,
                has_native_traces: false,
                trace_python_allocators: false,
                file_format: FileFormat::AllAllocations,
                sampling_interval: 0,
            })
        };
        Stats {
            num_largest,
            total_num_allocations: sum(|p| p.total_num_allocations),
            total_bytes_allocated: sum(|p| p.total_bytes_allocated),
            allocation_count_by_size: sizes.into_iter().collect(),
            allocator_distribution: allocators,
            top_allocations_by_size: top(by_size, num_largest),
            top_allocations_by_count: top(by_count, num_largest),
            top_modules_by_allocation_size: modules_by_size,
            top_modules_by_allocation_count: modules_by_count,
            metadata,
            merged_pids: parts.iter().map(|p| p.metadata.pid).collect(),
            sampling_intervals: parts.iter().flat_map(|p| p.sampling_intervals.iter().copied()).collect(),
        }
    }

    /// The text `memray stats` prints; `styled` (for a terminal) adds bold headings.
    pub fn render_text(&self, styled: bool) -> String {
        let heading = |text: &str| if styled { format!("\x1b[1m{text}\x1b[0m") } else { text.to_string() };
        // Memray's progress display leaves an empty line before the report when the
        // output is not a terminal.
        let mut out = if styled { String::new() } else { "\n".to_string() };
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        if !self.merged_pids.is_empty() {
            let pids: Vec<String> = self.merged_pids.iter().map(|p| p.to_string()).collect();
            line(format!("🗂  {}", heading(&format!("{} captures merged (processes {}):", pids.len(), pids.join(", ")))));
            line("\tfigures are summed over the processes; the peak is the sum of each process's own peak".to_string());
            line(String::new());
        }
        if let Some(notice) = sampling_notice(&self.sampling_intervals) {
            line(notice);
            line(String::new());
        }
        line(format!("📏 {}", heading("Total allocations:")));
        line(format!("\t{}", self.total_num_allocations));
        line(String::new());
        line(format!("📦 {}", heading("Total memory allocated:")));
        line(format!("\t{}", size_fmt(self.total_bytes_allocated)));
        line(String::new());
        line(format!("📈 {}", heading("Peak memory usage:")));
        line(format!("\t{}", size_fmt(self.metadata.peak_memory)));
        line(String::new());
        line(format!("📊 {}", heading("Histogram of allocation size:")));
        line(format!("\t{}", draw_histogram(&self.allocation_count_by_size, HISTOGRAM_BINS, HISTOGRAM_SCALE)));
        line(String::new());
        line(format!("📂 {}", heading("Allocator type distribution:")));
        for (allocator, count) in &self.allocator_distribution {
            line(format!("\t {}: {count}", allocator_type_name(*allocator)));
        }
        line(String::new());
        line(format!("🥇 {}", heading(&format!("Top {} largest allocating locations (by size):", self.num_largest))));
        for (location, size) in &self.top_allocations_by_size {
            line(format!("\t- {} -> {}", format_location(location.as_ref()), size_fmt(*size)));
        }
        line(String::new());
        line(format!("🥇 {}", heading(&format!("Top {} largest allocating locations (by number of allocations):", self.num_largest))));
        for (location, count) in &self.top_allocations_by_count {
            line(format!("\t- {} -> {count}", format_location(location.as_ref())));
        }
        for (modules, label) in
            [(&self.top_modules_by_allocation_size, "by size"), (&self.top_modules_by_allocation_count, "by number of allocations")]
        {
            if modules.is_empty() {
                continue;
            }
            line(String::new());
            line(format!("🥇 {}", heading(&format!("Top {} allocating modules ({label}):", self.num_largest))));
            for m in modules {
                line(format!("\t- {}: {} total | {} allocations", m.module, size_fmt(m.total_bytes), m.num_allocations));
            }
        }
        out
    }

    /// The JSON document `memray stats --json` writes (`json.dump(..., indent=2)`).
    pub fn to_json(&self) -> String {
        let histogram = histogram_bins(&self.allocation_count_by_size, HISTOGRAM_BINS)
            .map(|bins| {
                let mut start = 0u64;
                let last = bins.len().saturating_sub(1);
                bins.iter()
                    .enumerate()
                    .map(|(i, &(end, count))| {
                        // The last bin's upper bound is inclusive.
                        let max = if i == last { end } else { end.wrapping_sub(1) };
                        let bin = HistogramBin { min_bytes: start, max_bytes: max, count };
                        start = end;
                        bin
                    })
                    .collect()
            })
            .unwrap_or_default();
        let top = |list: &[(Option<Location>, u64)], by_size: bool| -> Vec<TopEntry> {
            list.iter()
                .map(|(l, n)| TopEntry {
                    location: format_location(l.as_ref()),
                    size: by_size.then_some(*n),
                    count: (!by_size).then_some(*n),
                })
                .collect()
        };
        let md = &self.metadata;
        let doc = StatsDocument {
            total_num_allocations: self.total_num_allocations,
            total_bytes_allocated: self.total_bytes_allocated,
            allocation_size_histogram: histogram,
            allocator_type_distribution: Ordered(self.allocator_distribution.iter().map(|(a, n)| (allocator_type_name(*a), *n)).collect()),
            top_allocations_by_size: top(&self.top_allocations_by_size, true),
            top_allocations_by_count: top(&self.top_allocations_by_count, false),
            top_modules_by_allocation_size: &self.top_modules_by_allocation_size,
            top_modules_by_allocation_count: &self.top_modules_by_allocation_count,
            metadata: MetadataDocument {
                start_time: format_millis(md.start_time_ms),
                end_time: format_millis(md.end_time_ms),
                total_allocations: md.total_allocations,
                total_frames: md.total_frames,
                peak_memory: md.peak_memory,
                command_line: &md.command_line,
                pid: md.pid,
                main_thread_id: md.main_thread_id,
                python_allocator: python_allocator_label(md.python_allocator),
                has_native_traces: md.has_native_traces,
                trace_python_allocators: md.trace_python_allocators,
                file_format: md.file_format as u8,
                sampling_interval: md.sampling_interval,
            },
            // Merged captures say so (a key Memray's single-capture document never has).
            merged_pids: (!self.merged_pids.is_empty()).then_some(&self.merged_pids),
        };
        dumps(&doc, Some(2))
    }
}

/// `memray stats --json`, key for key as Memray writes it.
#[derive(Serialize)]
struct StatsDocument<'a> {
    total_num_allocations: u64,
    total_bytes_allocated: u64,
    allocation_size_histogram: Vec<HistogramBin>,
    allocator_type_distribution: Ordered<String, u64>,
    top_allocations_by_size: Vec<TopEntry>,
    top_allocations_by_count: Vec<TopEntry>,
    top_modules_by_allocation_size: &'a [ModuleTotals],
    top_modules_by_allocation_count: &'a [ModuleTotals],
    metadata: MetadataDocument<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    merged_pids: Option<&'a Vec<i32>>,
}

#[derive(Serialize)]
struct HistogramBin {
    min_bytes: u64,
    max_bytes: u64,
    count: u64,
}

/// A top location: `size` or `count`, whichever the list ranks by.
#[derive(Serialize)]
struct TopEntry {
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

#[derive(Serialize)]
struct MetadataDocument<'a> {
    start_time: String,
    end_time: String,
    total_allocations: u64,
    total_frames: u64,
    peak_memory: u64,
    command_line: &'a str,
    pid: i32,
    main_thread_id: u64,
    python_allocator: &'static str,
    has_native_traces: bool,
    trace_python_allocators: bool,
    file_format: u8,
    /// Not Memray's: only in sampled captures' documents.
    #[serde(skip_serializing_if = "is_zero")]
    sampling_interval: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Python's `float // float` (CPython `float_floor_div`), which the histogram uses.
fn py_floordiv(vx: f64, wx: f64) -> f64 {
    let m = vx % wx;
    let mut div = (vx - m) / wx;
    // The remainder takes the divisor's sign.
    if m != 0.0 && (wx < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floordiv = div.floor();
        if div - floordiv > 0.5 {
            floordiv += 1.0;
        }
        floordiv
    } else {
        0.0f64.copysign(vx / wx)
    }
}

/// Memray's `get_histogram_databins`: `bins` logarithmic bins between the smallest
/// non-zero size and the largest size, as (upper bound, count). `None` when there is no
/// non-zero size (Memray raises there).
pub fn histogram_bins(count_by_size: &[(u64, u64)], bins: usize) -> Option<Vec<(u64, u64)>> {
    if bins == 0 {
        return None;
    }
    let min_nonzero = count_by_size.iter().map(|&(s, _)| s).filter(|&s| s != 0).min()?;
    let max = count_by_size.iter().map(|&(s, _)| s).max()?;
    let mut low = (min_nonzero as f64).ln();
    let high = (max as f64).ln();
    if low == high {
        low /= 2.0;
    }
    let step = (high - low) / bins as f64;
    let steps: Vec<u64> = (0..bins).map(|i| (low + step * (i + 1) as f64).exp() as u64).collect();
    let mut dist = vec![0u64; bins];
    for &(size, count) in count_by_size {
        let bucket = if size == 0 || step == 0.0 {
            // Memray divides by zero when every size is 1; everything lands in bin 0.
            0
        } else {
            let b = py_floordiv((size as f64).ln() - low, step);
            (b.max(0.0) as usize).min(bins - 1)
        };
        dist[bucket] += count;
    }
    Some(steps.into_iter().zip(dist).collect())
}

/// Memray's `draw_histogram`.
pub fn draw_histogram(count_by_size: &[(u64, u64)], bins: usize, scale: usize) -> String {
    if count_by_size.is_empty() {
        return "<no data for histogram>".to_string();
    }
    let Some(data_bins) = histogram_bins(count_by_size, bins) else {
        return "<no data for histogram>".to_string();
    };
    let max_bin = data_bins.iter().map(|b| b.1).max().unwrap_or(0);
    let scaled: Vec<usize> = data_bins
        .iter()
        .map(|&(_, v)| if max_bin == 0 { 0 } else { ((v as f64 / max_bin as f64) * scale as f64).ceil() as usize })
        .collect();
    let size_width = 9;
    let freq_width = data_bins.iter().map(|b| b.1.to_string().len()).max().unwrap_or(1);
    let total_width = 2 + size_width + 2 + freq_width + 1 + scale;
    let min = count_by_size.iter().map(|b| b.0).min().unwrap_or(0);
    let max = count_by_size.iter().map(|b| b.0).max().unwrap_or(0);
    let mut out = format!("min: {}\n\t{}\n\t", size_fmt(min), "-".repeat(total_width));
    for (i, (&(bound, count), bar)) in data_bins.iter().zip(&scaled).enumerate() {
        let rel = if i == data_bins.len() - 1 { "<=" } else { "< " };
        out.push_str(&format!("{rel}{:<size_width$}:", size_fmt(bound)));
        out.push_str(&format!(" {count:>freq_width$} "));
        out.push_str(&"▇".repeat(*bar));
        out.push_str("\n\t");
    }
    out.push_str(&"-".repeat(total_width));
    out.push_str(&format!("\n\tmax: {}", size_fmt(max)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::analysis::{analyze, AnalyzeOptions};
    use crate::engine::estimates::test_capture;

    #[test]
    fn sampled_captures_say_once_that_figures_are_estimates() {
        for (interval, notices) in [(64 * 1024, 1), (0, 0)] {
            let bytes = test_capture(interval);
            let analysis = analyze(memray_capture::Reader::new(&bytes[..]).unwrap(), AnalyzeOptions::default()).unwrap();
            let stats = Stats::compute(&analysis, 5).unwrap();
            let text = stats.render_text(false);
            assert_eq!(text.matches("Sampled capture: one allocation recorded per 64.0KiB").count(), notices, "{text}");
            // JSON: a key of our own, only when sampled (Memray's document otherwise).
            let json = stats.to_json();
            assert_eq!(json.contains("\"sampling_interval\": 65536"), notices == 1, "{json}");
            assert_eq!(json.contains("sampling_interval"), notices == 1);
            let merged = Stats::merge(&[stats.clone(), stats], 5);
            assert_eq!(merged.render_text(false).matches("Sampled capture").count(), notices);
        }
    }

    #[test]
    fn size_fmt_like_memray() {
        assert_eq!(size_fmt(0), "0.000B");
        assert_eq!(size_fmt(1), "1.000B");
        assert_eq!(size_fmt(1_777_000), "1.777MB");
        assert_eq!(size_fmt(155_556), "155.556kB");
        assert_eq!(size_fmt(999_999), "999.999kB");
        assert_eq!(size_fmt(1_000_000), "1.000MB");
    }

    #[test]
    fn floordiv_matches_python() {
        assert_eq!(py_floordiv(7.0, 2.0), 3.0);
        assert_eq!(py_floordiv(-7.0, 2.0), -4.0);
        assert_eq!(py_floordiv(0.3, 0.1), 2.0); // Python: 0.3 // 0.1 == 2.0
        assert_eq!(py_floordiv(1.0, 0.1), 9.0); // Python: 1.0 // 0.1 == 9.0
    }

    #[test]
    fn histogram_of_memray_capture() {
        // Sizes from a Memray 1.20 capture whose `stats --json` reported these bins.
        let data = [(0u64, 10u64), (1, 0), (24, 11), (300, 67), (1500, 36), (5000, 6), (20000, 6), (1_048_576, 1)];
        let bins = histogram_bins(&data, 10).unwrap();
        let uppers: Vec<u64> = bins.iter().map(|b| b.0).collect();
        assert_eq!(uppers, vec![4, 15, 63, 255, 1024, 4095, 16383, 65535, 262143, 1048576]);
        assert!(histogram_bins(&[(0, 3)], 10).is_none());
        assert_eq!(histogram_bins(&[(1, 3)], 10).unwrap()[0], (1, 3));
    }
}
