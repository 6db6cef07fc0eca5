//! `memray tree`: the biggest allocations at the peak (or the temporary allocations) as
//! a tree of call paths.
//!
//! The tree is Memray 1.20's (`TreeReporter.from_snapshot`): the records sorted by size,
//! the biggest `-b` of them walked from the outermost frame, CPython's internal native
//! frames skipped, the rest summed as "below the configured threshold". Memray shows it
//! in an interactive view; this prints that view fully expanded, with its labels
//! (`📂 size (percent %) function  module:line`), its default of hiding uninteresting
//! frames (runpy, CPython internals: their children move up) and children sorted by
//! size.

use std::fmt::Write;
use std::path::Path;

use crate::engine::records::{format_thread_name, AllocationRecord, RecordSet};
use crate::render::format::{sampling_notice, size_fmt};

/// Memray's `MAX_STACKS` with the default recursion limit (`1000 // 2.5`).
pub const MAX_STACKS: usize = 400;

const NO_ALLOCATIONS: &str = "<No allocations>";

/// `(function, file, line)`.
pub type Frame = (String, String, i32);

/// A node of the call tree.
#[derive(Clone, Debug, Default)]
pub struct Node {
    /// `None` for the root.
    pub location: Option<Frame>,
    pub value: u64,
    pub n_allocations: u64,
    /// Children in insertion order.
    pub children: Vec<Node>,
    pub thread_id: String,
    pub interesting: bool,
    pub import_system: bool,
    /// A native frame (captures with native traces): shown with [`NATIVE_MARKER`].
    pub native: bool,
}

/// Follows a native frame's location in the terminal reports.
pub const NATIVE_MARKER: &str = "[native]";

impl Node {
    fn child(&mut self, frame: &Frame, native: bool) -> usize {
        if let Some(i) = self.children.iter().position(|c| c.location.as_ref() == Some(frame)) {
            return i;
        }
        let import_system = is_frame_from_import_system(frame);
        self.children.push(Node {
            location: Some(frame.clone()),
            interesting: !import_system && is_frame_interesting(frame),
            import_system,
            native,
            ..Node::default()
        });
        self.children.len() - 1
    }
}

/// Allocations left out of the tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Elided {
    pub cutoff: i64,
    pub n_locations: u64,
    pub n_allocations: u64,
    pub n_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Tree {
    pub root: Node,
    pub elided: Elided,
    /// The capture's (0: not sampled): a sampled capture's tree says its figures are
    /// estimates.
    pub sampling_interval: u64,
}

/// Python's `seq[:n]` split point for a possibly negative `n`.
fn split_point(len: usize, n: i64) -> usize {
    if n >= 0 {
        (n as u64).min(len as u64) as usize
    } else {
        len.saturating_sub(n.unsigned_abs() as usize)
    }
}

impl Tree {
    /// Builds the tree of the `biggest_allocs` largest records of `set`.
    pub fn build(set: &RecordSet, biggest_allocs: i64) -> Tree {
        set.prepare_native();
        let mut sorted: Vec<&AllocationRecord> = set.records.iter().collect();
        // Stable, like Python's sort: equal sizes keep Memray's record order.
        sorted.sort_by_key(|r| std::cmp::Reverse(r.size));
        let split = split_point(sorted.len(), biggest_allocs);
        let mut root = Node { interesting: true, ..Node::default() };
        let mut node_ids: Vec<usize> = Vec::new();
        for record in &sorted[..split] {
            root.value = root.value.wrapping_add(record.size);
            root.n_allocations += record.n_allocations;
            let stack = set.report_stack(record);
            let thread = format_thread_name(record.tid as i64, set.thread_name(record.tid));
            node_ids.clear();
            for (index, loc) in stack.iter().rev().enumerate() {
                let frame: Frame = (loc.function.to_string(), loc.filename.to_string(), loc.lineno);
                if is_cpython_internal(&frame) {
                    continue;
                }
                let mut node = &mut root;
                for &i in &node_ids {
                    node = &mut node.children[i];
                }
                let i = node.child(&frame, loc.native);
                node_ids.push(i);
                let node = &mut node.children[i];
                node.value = node.value.wrapping_add(record.size);
                node.n_allocations += record.n_allocations;
                node.thread_id = thread.clone();
                if index > MAX_STACKS {
                    break;
                }
            }
        }
        let mut elided = Elided { cutoff: biggest_allocs, ..Elided::default() };
        for record in &sorted[split..] {
            root.value = root.value.wrapping_add(record.size);
            root.n_allocations += record.n_allocations;
            elided.n_locations += 1;
            elided.n_bytes = elided.n_bytes.wrapping_add(record.size);
            elided.n_allocations += record.n_allocations;
        }
        Tree { root, elided, sampling_interval: set.header.sampling_interval }
    }

    /// The tree as text, every node expanded. `modules` turns file names into module
    /// names; `styled` adds terminal colours.
    pub fn render(&self, modules: &ModuleNamer, styled: bool) -> String {
        let mut out = String::new();
        if let Some(notice) = sampling_notice(&[self.sampling_interval]) {
            out.push_str(&notice);
            out.push('\n');
        }
        let total = self.root.value;
        if total == 0 {
            out.push_str(NO_ALLOCATIONS);
            out.push('\n');
        } else {
            let _ = writeln!(out, "📂{}", self.label(&self.root, total, modules, styled));
        }
        // Rows of (depth guides, label); guides are fixed once siblings are known.
        let mut lines: Vec<Line> = Vec::new();
        self.add_children(&mut lines, 0, &self.root.children, total, modules, styled);
        if self.elided.n_locations > 0 {
            let pct = percent(self.elided.n_bytes, total);
            let size = format!(" {} ({pct:.2} %) ", size_fmt(self.elided.n_bytes));
            let text = format!(
                "❓{}{} allocations from {} locations below the configured threshold",
                paint(&size, size_colour(pct), styled),
                self.elided.n_allocations,
                self.elided.n_locations
            );
            lines.push(Line { depth: 0, text, has_children: false });
        }
        render_guides(&lines, &mut out);
        out
    }

    /// Memray's `add_children` with the "hide uninteresting" filter on: an
    /// uninteresting node is not shown and its children are added in its place.
    fn add_children(&self, lines: &mut Vec<Line>, depth: usize, children: &[Node], total: u64, modules: &ModuleNamer, styled: bool) {
        let mut sorted: Vec<&Node> = children.iter().collect();
        sorted.sort_by_key(|n| std::cmp::Reverse(n.value));
        for child in sorted {
            if child.interesting {
                let at = lines.len();
                lines.push(Line { depth, text: self.label(child, total, modules, styled), has_children: false });
                let before = lines.len();
                self.add_children(lines, depth + 1, &child.children, total, modules, styled);
                lines[at].has_children = lines.len() > before;
            } else {
                self.add_children(lines, depth, &child.children, total, modules, styled);
            }
        }
    }

    /// `frame_text` without the icon: ` size (pct %) function  module:line`.
    fn label(&self, node: &Node, total: u64, modules: &ModuleNamer, styled: bool) -> String {
        if node.value == 0 {
            return NO_ALLOCATIONS.into();
        }
        let pct = percent(node.value, total);
        let size = format!(" {} ({pct:.2} %) ", size_fmt(node.value));
        let mut s = paint(&size, size_colour(pct), styled);
        match &node.location {
            None => s.push_str(&paint("<ROOT>", "1", styled)),
            Some((function, file, lineno)) => {
                s.push_str(&paint(function, "1", styled));
                let position = if *lineno != 0 { format!("{}:{lineno}", modules.module_name(file)) } else { file.clone() };
                if !position.is_empty() {
                    s.push_str("  ");
                    s.push_str(&paint(&position, "2;36", styled));
                }
                if node.native {
                    s.push(' ');
                    s.push_str(&paint(NATIVE_MARKER, "33", styled));
                }
            }
        }
        s
    }
}

struct Line {
    depth: usize,
    text: String,
    has_children: bool,
}

/// Draws the tree guides (`├── `, `│   `, `└── `) and the folder/page icons.
fn render_guides(lines: &[Line], out: &mut String) {
    // For each line, whether a later sibling follows at each depth up to its own.
    let mut more_at: Vec<bool> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let has_next_sibling = lines[i + 1..].iter().take_while(|l| l.depth >= line.depth).any(|l| l.depth == line.depth);
        more_at.truncate(line.depth);
        for &more in &more_at {
            out.push_str(if more { "│   " } else { "    " });
        }
        out.push_str(if has_next_sibling { "├── " } else { "└── " });
        more_at.push(has_next_sibling);
        if !line.text.starts_with('❓') && line.text != NO_ALLOCATIONS {
            out.push_str(if line.has_children { "📂" } else { "📄" });
        }
        out.push_str(&line.text);
        out.push('\n');
    }
}

fn percent(value: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (100u128 * value as u128) as f64 / total as f64
}

/// Memray colours sizes on a green-to-red gradient; terminals get four steps of it.
fn size_colour(pct: f64) -> &'static str {
    if pct >= 60.0 {
        "31"
    } else if pct >= 40.0 {
        "33"
    } else if pct >= 20.0 {
        "93"
    } else {
        "32"
    }
}

fn paint(text: &str, sgr: &str, styled: bool) -> String {
    if styled {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Memray's `_filename_to_module_name`: a `.py` file under one of the directories of
/// `sys.path` becomes a dotted module name; anything else stays a file name.
pub struct ModuleNamer {
    dirs: Vec<Vec<String>>,
}

/// `pathlib`'s parts of an absolute path (`None` for a relative one).
fn abs_parts(path: &str) -> Option<Vec<String>> {
    if !path.starts_with('/') {
        return None;
    }
    Some(path.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect())
}

impl ModuleNamer {
    /// `dirs`: the search path, first match wins (relative entries never match).
    pub fn new<S: AsRef<str>>(dirs: &[S]) -> Self {
        ModuleNamer { dirs: dirs.iter().filter_map(|d| abs_parts(d.as_ref())).collect() }
    }

    /// The tracked interpreter's `sys.path` (from the capture) without its first entry
    /// (the script's directory), keeping directories that exist here: what Memray's own
    /// `sys.path` holds when it runs as an installed command.
    pub fn from_sys_path(sys_path: &[String]) -> Self {
        let dirs: Vec<&String> = sys_path.iter().skip(1).filter(|d| Path::new(d.as_str()).is_dir()).collect();
        Self::new(&dirs)
    }

    pub fn module_name(&self, file: &str) -> String {
        if !file.ends_with(".py") {
            return file.to_string();
        }
        let Some(parts) = abs_parts(file) else { return file.to_string() };
        for dir in &self.dirs {
            if parts.len() >= dir.len() && parts[..dir.len()] == dir[..] {
                let mut rel: Vec<String> = parts[dir.len()..].to_vec();
                if let Some(last) = rel.last_mut() {
                    // `with_suffix("")`: a name that is only ".py" has no suffix.
                    if last.len() > 3 {
                        last.truncate(last.len() - 3);
                    }
                }
                return rel.join(".").replace(".__init__", "");
            }
        }
        file.to_string()
    }
}

const SYMBOL_IGNORELIST: [&str; 19] = [
    "PyObject_Call",
    "call_function",
    "classmethoddescr_call",
    "cmpwrapper_call",
    "do_call_core",
    "fast_function",
    "function_call",
    "function_code_fastcall",
    "instance_call",
    "instancemethod_call",
    "methoddescr_call",
    "proxy_call",
    "slot_tp_call",
    "trace_call_function",
    "type_call",
    "weakref_call",
    "wrap_call",
    "wrapper_call",
    "wrapperdescr_call",
];

/// `re.search(r"(Include|Objects|Modules|Python|cpython).*\.[c|h]$", file)`.
fn is_cpython_path(file: &str) -> bool {
    let body = file.strip_suffix('\n').unwrap_or(file);
    let b = body.as_bytes();
    if b.len() < 2 || b[b.len() - 2] != b'.' || !matches!(b[b.len() - 1], b'c' | b'|' | b'h') {
        return false;
    }
    let dot = b.len() - 2;
    ["Include", "Objects", "Modules", "Python", "cpython"]
        .iter()
        .any(|w| body.match_indices(w).any(|(i, _)| i + w.len() <= dot && !body[i + w.len()..dot].contains('\n')))
}

/// Memray's `_is_cpython_internal_symbol`.
fn is_cpython_internal_symbol(symbol: &str, file: &str) -> bool {
    let candidate = symbol.contains("PyEval_EvalFrameEx")
        || symbol.contains("_PyEval_EvalFrameDefault")
        || (symbol.starts_with("_TAIL_CALL_") && symbol.contains(".llvm."))
        || symbol.starts_with("PyEval")
        || symbol.starts_with("_Py")
        || symbol.to_lowercase().contains("vectorcall")
        || SYMBOL_IGNORELIST.contains(&symbol)
        || file.contains("Objects/call.c");
    candidate && is_cpython_path(file)
}

pub fn is_cpython_internal(frame: &Frame) -> bool {
    is_cpython_internal_symbol(&frame.0, &frame.1)
}

pub fn is_frame_interesting(frame: &Frame) -> bool {
    let file = &frame.1;
    if file.ends_with("runpy.py") || file == "<frozen runpy>" {
        return false;
    }
    !is_cpython_internal_symbol(&frame.0, file)
}

pub fn is_frame_from_import_system(frame: &Frame) -> bool {
    let (function, file) = (&frame.0, &frame.1);
    file.contains("frozen importlib")
        || (matches!(function.as_str(), "import_name" | "import_from" | "import_all_from") && file.ends_with("ceval.c"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::estimates::test_capture;
    use crate::engine::records::leaked_record_set;

    #[test]
    fn sampled_captures_say_once_that_figures_are_estimates() {
        for (interval, notices) in [(64 * 1024, 1), (0, 0)] {
            let set = leaked_record_set(&test_capture(interval));
            let text = Tree::build(&set, 10).render(&ModuleNamer::new::<&str>(&[]), false);
            let notice = "Sampled capture: one allocation recorded per 64.0KiB on average; bytes and counts are estimates\n";
            assert_eq!(text.matches(notice).count(), notices, "{text}");
            assert!(text.contains("build"), "{text}");
        }
    }

    fn f(function: &str, file: &str) -> Frame {
        (function.into(), file.into(), 1)
    }

    #[test]
    fn frame_filters() {
        assert!(is_cpython_internal(&f("_PyEval_EvalFrameDefault", "Python/ceval.c")));
        assert!(is_cpython_internal(&f("PyObject_Vectorcall", "/src/cpython/Objects/call.c")));
        assert!(!is_cpython_internal(&f("_PyEval_EvalFrameDefault", "ceval.py")));
        assert!(!is_cpython_internal(&f("malloc", "Objects/obmalloc.c")));
        assert!(!is_frame_interesting(&f("_run_code", "<frozen runpy>")));
        assert!(!is_frame_interesting(&f("run_path", "/usr/lib/python3.8/runpy.py")));
        assert!(is_frame_interesting(&f("main", "app.py")));
        assert!(is_frame_from_import_system(&f("_find_and_load", "<frozen importlib._bootstrap>")));
        assert!(is_frame_from_import_system(&f("import_name", "Python/ceval.c")));
    }

    #[test]
    fn module_names() {
        let m = ModuleNamer::new(&["/usr/lib/python3.12", "relative", "/usr/lib/python3.12/site-packages"]);
        assert_eq!(m.module_name("/usr/lib/python3.12/json/__init__.py"), "json");
        assert_eq!(m.module_name("/usr/lib/python3.12/site-packages/a/b.py"), "site-packages.a.b");
        assert_eq!(m.module_name("/usr/lib/python3.12//pkg/./x.py"), "pkg.x");
        assert_eq!(m.module_name("prog.py"), "prog.py");
        assert_eq!(m.module_name("<frozen runpy>"), "<frozen runpy>");
        assert_eq!(m.module_name("/elsewhere/x.py"), "/elsewhere/x.py");
    }

    #[test]
    fn guides() {
        let lines = vec![
            Line { depth: 0, text: "a".into(), has_children: true },
            Line { depth: 1, text: "b".into(), has_children: false },
            Line { depth: 1, text: "c".into(), has_children: true },
            Line { depth: 2, text: "d".into(), has_children: false },
            Line { depth: 0, text: "e".into(), has_children: false },
        ];
        let mut out = String::new();
        render_guides(&lines, &mut out);
        assert_eq!(out, "├── 📂a\n│   ├── 📄b\n│   └── 📂c\n│       └── 📄d\n└── 📄e\n");
    }

    #[test]
    fn negative_cutoff_like_python_slices() {
        assert_eq!(split_point(5, 2), 2);
        assert_eq!(split_point(5, 9), 5);
        assert_eq!(split_point(5, -2), 3);
        assert_eq!(split_point(5, -9), 0);
    }
}
