//! How Memray names the source files of an object's DWARF line tables.
//!
//! blazesym reports a source file as a directory (the unit's compilation directory
//! joined with the file's recorded directory) and a name. Memray (libbacktrace) shows
//! the file as the line table records it: on DWARF 5, a file of directory 0 (the
//! compilation directory) by its name alone, any other as its recorded directory (not
//! made absolute) joined with its name; on DWARF 2-4, directory 0 is the compilation
//! directory, joined. [`FileNames`] maps blazesym's (directory, name) to that.
//!
//! The DWARF is read from the object itself or from its separate debug file, looked up
//! the way debuggers do: by build id under `/usr/lib/debug/.build-id/`, then by
//! `.gnu_debuglink` next to the object, in its `.debug/` folder and under
//! `/usr/lib/debug/`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

const DEBUG_ROOT: &str = "/usr/lib/debug";

/// (directory as blazesym renders it, file name) to the file as Memray shows it.
#[derive(Default)]
pub struct FileNames {
    map: HashMap<(String, String), String>,
}

impl FileNames {
    /// `None` when the object's line tables do not name this file.
    pub fn get(&self, dir: &str, name: &str) -> Option<&str> {
        self.map.get(&(dir.to_string(), name.to_string())).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The file names of `object`'s line tables (empty when it has no readable DWARF).
pub fn file_names(object: &Path) -> FileNames {
    let Ok(data) = std::fs::read(object) else { return FileNames::default() };
    let Ok(file) = object::File::parse(&*data) else { return FileNames::default() };
    if file.section_by_name(".debug_info").is_some() {
        return read_file_names(&file);
    }
    for candidate in debug_file_candidates(object, &file) {
        if let Ok(debug) = std::fs::read(&candidate) {
            if let Ok(debug_file) = object::File::parse(&*debug) {
                if debug_file.section_by_name(".debug_info").is_some() {
                    return read_file_names(&debug_file);
                }
            }
        }
    }
    FileNames::default()
}

/// Where a separate debug file for `object` may be, most specific first.
fn debug_file_candidates(object: &Path, file: &object::File<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(Some(id)) = file.build_id() {
        if id.len() >= 2 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            out.push(Path::new(DEBUG_ROOT).join(".build-id").join(&hex[..2]).join(format!("{}.debug", &hex[2..])));
        }
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = object.parent().unwrap_or(Path::new("/"));
        out.push(dir.join(&name));
        out.push(dir.join(".debug").join(&name));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        out.push(Path::new(DEBUG_ROOT).join(rel).join(&name));
    }
    out
}

/// `dir` joined with `rel` as blazesym (`Path::push`) joins them.
fn push(dir: &str, rel: &str) -> String {
    let mut p = PathBuf::from(dir);
    p.push(rel);
    p.to_string_lossy().into_owned()
}

fn read_file_names(file: &object::File<'_>) -> FileNames {
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, object::Error> {
        match file.section_by_name(id.name()) {
            Some(section) => section.uncompressed_data(),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let mut out = FileNames::default();
    let Ok(sections) = gimli::DwarfSections::load(load) else { return out };
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let text = |unit: &gimli::Unit<_>, v| -> Option<String> {
        dwarf.attr_string(unit, v).ok().map(|s| String::from_utf8_lossy(s.slice()).into_owned())
    };
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        // A unit that cannot be read (e.g. strings in a dwz supplementary file) is
        // skipped: its files keep blazesym's rendering.
        let Ok(unit) = dwarf.unit(header) else { continue };
        let Some(program) = unit.line_program.as_ref() else { continue };
        let lh = program.header();
        let comp_dir = unit.comp_dir.map(|d| String::from_utf8_lossy(d.slice()).into_owned()).unwrap_or_default();
        for entry in lh.file_names() {
            let Some(name) = text(&unit, entry.path_name()) else { continue };
            let index = entry.directory_index();
            let raw_dir = if index == 0 { None } else { entry.directory(lh).and_then(|d| text(&unit, d)) };
            let blaze_dir = match &raw_dir {
                Some(raw) => push(&comp_dir, raw),
                None => comp_dir.clone(),
            };
            let shown = if name.starts_with('/') {
                name.clone()
            } else {
                match (&raw_dir, lh.version() >= 5) {
                    (Some(raw), _) => format!("{raw}/{name}"),
                    (None, true) => name.clone(),
                    (None, false) if !comp_dir.is_empty() => format!("{comp_dir}/{name}"),
                    (None, false) => name.clone(),
                }
            };
            out.map.entry((blaze_dir, name)).or_insert(shown);
        }
    }
    out
}
