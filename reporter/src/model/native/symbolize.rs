//! Addresses of an object file to (function, file, line), innermost inlined frame first.
//!
//! DWARF line information with inlined frames where the object (or its separate debug
//! file, found through `.gnu_debuglink` or its build id under `/usr/lib/debug`) has it,
//! the ELF symbol table otherwise, as blazesym reads them. Names are demangled (C++ and
//! Rust). Results are cached per (object, address), so each distinct address is
//! symbolized once however many records or stacks name it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer as Blaze};

use super::filenames::{file_names, FileNames};
use crate::model::stacks::Location;

/// What a frame shows when DWARF gives no file (Memray's label).
pub const UNKNOWN_FILE: &str = "<unknown>";

/// A symbolizer over object files by path.
pub struct Symbolizer {
    blaze: Blaze,
    /// Per object path: per virtual address, the frames (innermost first).
    cache: HashMap<Rc<str>, HashMap<u64, Rc<[Location]>>>,
    /// Per object path: how its line tables name files.
    file_names: HashMap<Rc<str>, FileNames>,
    missing: BTreeSet<String>,
    unknown: Rc<str>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let blaze =
            Blaze::builder().enable_code_info(true).enable_inlined_fns(true).enable_demangling(true).enable_auto_reload(false).build();
        Symbolizer { blaze, cache: HashMap::new(), file_names: HashMap::new(), missing: BTreeSet::new(), unknown: Rc::from(UNKNOWN_FILE) }
    }

    /// Objects that could not be read (missing or not ELF): their frames show addresses.
    pub fn missing(&self) -> impl Iterator<Item = &str> {
        self.missing.iter().map(String::as_str)
    }

    /// Whether `addr` of `object` is cached.
    pub fn is_cached(&self, object: &str, addr: u64) -> bool {
        self.missing.contains(object) || self.cache.get(object).is_some_and(|m| m.contains_key(&addr))
    }

    /// Frames of `addr` (an ELF virtual address of `object`), innermost first. `ip` is
    /// the absolute address, shown when the object cannot be read.
    pub fn frames(&mut self, object: &Rc<str>, addr: u64, ip: u64) -> Rc<[Location]> {
        if let Some(found) = self.cache.get(object).and_then(|m| m.get(&addr)) {
            return found.clone();
        }
        if !self.missing.contains(&**object) {
            self.symbolize_batch(object, &[(addr, ip)]);
        }
        match self.cache.get(object).and_then(|m| m.get(&addr)) {
            Some(found) => found.clone(),
            None => address_frame(ip, object),
        }
    }

    /// Symbolizes many addresses of one object in one call (`(addr, ip)` pairs as in
    /// [`Symbolizer::frames`]); results go to the cache. An object that cannot be read
    /// is remembered as missing.
    pub fn symbolize_batch(&mut self, object: &Rc<str>, addrs: &[(u64, u64)]) {
        let todo: Vec<(u64, u64)> = addrs.iter().copied().filter(|&(a, _)| !self.is_cached(object, a)).collect();
        if todo.is_empty() {
            return;
        }
        let offsets: Vec<u64> = todo.iter().map(|&(a, _)| a).collect();
        let path = Path::new(&**object);
        let results = if path.is_file() {
            let src = Source::from(Elf::new(path));
            self.blaze.symbolize(&src, Input::VirtOffset(&offsets)).ok()
        } else {
            None
        };
        match results {
            Some(results) => {
                let names = self.file_names.entry(object.clone()).or_insert_with(|| file_names(path));
                let entry = self.cache.entry(object.clone()).or_default();
                for (&(addr, _), sym) in todo.iter().zip(results.iter()) {
                    entry.insert(addr, frames_of(sym, names, &self.unknown));
                }
            }
            // Its frames are shown as addresses (see `frames`).
            None => {
                self.missing.insert(object.to_string());
            }
        }
    }
}

/// The frame of an address that could not be symbolized: its value, in its object.
fn address_frame(ip: u64, object: &Rc<str>) -> Rc<[Location]> {
    Rc::from(vec![Location { function: Rc::from(format!("0x{ip:x}")), filename: object.clone(), lineno: 0, native: true }])
}

/// The file name as Memray shows it (libbacktrace's rendering of DWARF line tables):
/// a file named relative to its unit's compilation directory is shown as named, one in
/// an include directory as that directory (as recorded, not made absolute) joined with
/// the name. blazesym gives the directory already joined to the compilation directory;
/// `names` (the object's line-table files, see [`super::filenames`]) undoes that join.
/// For a file they do not name, the shape decides: a `.` or `..` component marks where a recorded relative directory
/// starts, a name with a directory part is taken as relative to the compilation
/// directory, and a bare name is joined to its directory.
pub fn display_path(names: &FileNames, dir: Option<&str>, file: &str) -> String {
    if let Some(shown) = names.get(dir.unwrap_or(""), file) {
        return shown.to_string();
    }
    if file.starts_with('/') {
        return file.to_string();
    }
    let Some(dir) = dir.filter(|d| !d.is_empty()) else { return file.to_string() };
    let comps: Vec<&str> = dir.split('/').collect();
    let first = usize::from(comps.first() == Some(&"."));
    if let Some(i) = comps.iter().skip(first).position(|c| *c == "." || *c == "..") {
        let rest = comps[first + i..].join("/");
        return format!("{rest}/{file}");
    }
    if file.contains('/') {
        return file.to_string();
    }
    format!("{}/{file}", dir.trim_end_matches('/'))
}

fn location(name: &str, code: Option<&CodeInfo<'_>>, names: &FileNames, unknown: &Rc<str>) -> Location {
    let (filename, lineno) = match code {
        Some(c) => {
            let dir = c.dir.as_ref().map(|d| d.to_string_lossy());
            let path = display_path(names, dir.as_deref(), &c.file.to_string_lossy());
            (Rc::from(path), c.line.map_or(0, |l| l as i32))
        }
        None => (unknown.clone(), 0),
    };
    Location { function: Rc::from(name), filename, lineno, native: true }
}

/// A symbolized address as frames, innermost (the deepest inlined call) first.
fn frames_of(sym: &Symbolized<'_>, names: &FileNames, unknown: &Rc<str>) -> Rc<[Location]> {
    let Symbolized::Sym(sym) = sym else {
        // Inside a readable object but covered by no symbol.
        return Rc::from(vec![Location { function: Rc::from("<unknown>"), filename: unknown.clone(), lineno: 0, native: true }]);
    };
    // blazesym gives the containing function with the line of its (outermost) inlined
    // call, then each inlined function with the line of the next call in it; the
    // innermost one carries the address's own line.
    let mut out = Vec::with_capacity(sym.inlined.len() + 1);
    for f in sym.inlined.iter().rev() {
        out.push(location(&f.name, f.code_info.as_ref(), names, unknown));
    }
    out.push(location(&sym.name, sym.code_info.as_deref(), names, unknown));
    Rc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_by_shape_without_line_tables() {
        let none = FileNames::default();
        assert_eq!(display_path(&none, Some("/b/Py/./Include"), "a.h"), "./Include/a.h");
        assert_eq!(display_path(&none, Some("./csu/../sysdeps/nptl"), "x.h"), "../sysdeps/nptl/x.h");
        assert_eq!(display_path(&none, Some("/b/Py"), "Objects/call.c"), "Objects/call.c");
        assert_eq!(display_path(&none, Some("/usr/include"), "stdio.h"), "/usr/include/stdio.h");
        assert_eq!(display_path(&none, Some("/w"), "/w/tests/ext.c"), "/w/tests/ext.c");
        assert_eq!(display_path(&none, None, "ext.c"), "ext.c");
    }

    use std::path::PathBuf;
    use std::process::Command;

    use object::{Object, ObjectSymbol};

    const SOURCE: &str = "int probe_global;\n\
__attribute__((noinline)) int probe_leaf(int x) {\n\
    probe_global += x;\n\
    return probe_global * 3;\n\
}\n\
static inline __attribute__((always_inline)) int probe_inlined(int x) {\n\
    return probe_leaf(x + 1);\n\
}\n\
int probe_entry(int x) {\n\
    return probe_inlined(x) + 1;\n\
}\n";

    /// A fresh directory with `probe.so` built from SOURCE (-g, -O1 so that
    /// `probe_inlined` is inlined into `probe_entry`).
    fn build_probe(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("memray-symbolize-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("probe.c");
        std::fs::write(&src, SOURCE).unwrap();
        let so = dir.join("probe.so");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer", "-o"])
            .arg(&so)
            .arg(&src)
            .current_dir(&dir)
            .status()
            .expect("cc must be installed (scripts/setup-test-env)");
        assert!(st.success());
        (dir, so)
    }

    fn symbol(so: &Path, name: &str) -> u64 {
        let data = std::fs::read(so).unwrap();
        let file = object::File::parse(&*data).unwrap();
        file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).expect("symbol in probe.so")
    }

    /// The first address in `probe_entry` whose frames include the inlined call.
    fn inlined_call_site(sym: &mut Symbolizer, object: &Rc<str>, start: u64) -> Rc<[Location]> {
        (start..start + 64)
            .map(|a| sym.frames(object, a, a))
            .find(|f| f.len() == 2)
            .expect("an address of probe_entry inside the inlined probe_inlined")
    }

    /// probe_leaf's lines (its first address may belong to its opening or first line).
    fn leaf_lines() -> std::ops::RangeInclusive<i32> {
        line_of("probe_leaf(int x)")..=line_of("return probe_global * 3")
    }

    fn line_of(text: &str) -> i32 {
        SOURCE.split("\n").position(|l| l.contains(text)).unwrap() as i32 + 1
    }

    #[test]
    fn dwarf_lines_and_inlined_frames() {
        let (dir, so) = build_probe("dwarf");
        let object: Rc<str> = Rc::from(so.to_str().unwrap());
        let mut sym = Symbolizer::new();
        let leaf = symbol(&so, "probe_leaf");
        let f = sym.frames(&object, leaf, leaf);
        assert_eq!(f.len(), 1);
        assert_eq!(&*f[0].function, "probe_leaf");
        assert!(leaf_lines().contains(&f[0].lineno), "line {} not in probe_leaf", f[0].lineno);
        assert!(f[0].native);
        assert_eq!(&*f[0].filename, dir.join("probe.c").to_str().unwrap(), "source named by absolute path");
        let entry = symbol(&so, "probe_entry");
        let f = inlined_call_site(&mut sym, &object, entry);
        assert_eq!(&*f[0].function, "probe_inlined", "innermost (inlined) frame first");
        assert_eq!(f[0].lineno, line_of("return probe_leaf(x + 1)"));
        assert_eq!(&*f[1].function, "probe_entry");
        assert_eq!(f[1].lineno, line_of("return probe_inlined(x) + 1"));
        assert!(sym.missing().next().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn separate_debug_file_through_gnu_debuglink() {
        let (dir, so) = build_probe("debuglink");
        let debug = dir.join("probe.so.debug");
        let run = |args: &[&std::ffi::OsStr]| {
            let st = Command::new("objcopy").args(args).current_dir(&dir).status().expect("objcopy (binutils)");
            assert!(st.success());
        };
        run(&["--only-keep-debug".as_ref(), so.as_os_str(), debug.as_os_str()]);
        run(&["--strip-debug".as_ref(), so.as_os_str()]);
        run(&["--add-gnu-debuglink=probe.so.debug".as_ref(), so.as_os_str()]);
        let object: Rc<str> = Rc::from(so.to_str().unwrap());
        let leaf = symbol(&so, "probe_leaf");
        let mut sym = Symbolizer::new();
        let f = sym.frames(&object, leaf, leaf);
        assert_eq!(&*f[0].function, "probe_leaf");
        assert!(leaf_lines().contains(&f[0].lineno), "line {} not in probe_leaf", f[0].lineno);
        assert!(f[0].filename.ends_with("probe.c"));
        // Without the debug file: the symbol table only.
        std::fs::remove_file(&debug).unwrap();
        let mut sym = Symbolizer::new();
        let f = sym.frames(&object, leaf, leaf);
        assert_eq!((&*f[0].function, &*f[0].filename, f[0].lineno), ("probe_leaf", UNKNOWN_FILE, 0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_object_shows_the_address() {
        let object: Rc<str> = Rc::from("/nonexistent/libgone.so");
        let mut sym = Symbolizer::new();
        sym.symbolize_batch(&object, &[(0x1234, 0x7f0000001234)]);
        let f = sym.frames(&object, 0x1234, 0x7f0000001234);
        assert_eq!((&*f[0].function, &*f[0].filename, f[0].lineno), ("0x7f0000001234", "/nonexistent/libgone.so", 0));
        assert_eq!(sym.missing().collect::<Vec<_>>(), ["/nonexistent/libgone.so"]);
    }
}
