//! Symbols of the objects mapped in the target, read from the target's own files.
//!
//! A file is opened through /proc/PID/root (or /proc/PID/map_files when it was deleted or
//! replaced since it was mapped), mapped read-only here and parsed with goblin. Only the
//! dynamic symbol table is used: it is what the target's own dynamic linker sees.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use goblin::elf::{program_header::PT_LOAD, sym, Elf};

use crate::error::{Error, Result};
use crate::proc::{self, Mapping};

/// A read-only private mapping of a whole file.
struct FileMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl FileMap {
    fn open(path: &Path) -> std::io::Result<FileMap> {
        let file = File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty file"));
        }
        // SAFETY: maps `len` bytes of an open regular file read-only; the result is checked.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileMap { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`. A file
        // truncated under us could fault; these are shared libraries in use, not written.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in open().
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A defined dynamic symbol, relocated to the target's address space.
#[derive(Debug, Clone, Copy)]
pub struct Symbol {
    pub addr: u64,
    pub kind: u8,
}

impl Symbol {
    pub fn is_function(&self) -> bool {
        self.kind == sym::STT_FUNC
    }
}

/// One ELF object as the target mapped it.
pub struct Object {
    /// The file as the target names it.
    pub path: String,
    /// Load bias: a symbol's address is `base + st_value`.
    pub base: u64,
    map: FileMap,
    /// Where each executable segment's content ends, as mapped in the target.
    pub exec_ends: Vec<u64>,
    /// The program interpreter (PT_INTERP) an executable names: its dynamic loader.
    pub interpreter: Option<String>,
}

impl Object {
    /// Opens the object that the target mapped from `path`.
    pub fn open(pid: i32, path: &str, maps: &[Mapping]) -> Result<Object> {
        let mine: Vec<&Mapping> = maps.iter().filter(|m| m.path == path).collect();
        let first = mine
            .iter()
            .min_by_key(|m| m.start)
            .ok_or_else(|| Error::Elf { path: PathBuf::from(path), detail: "not mapped by the process".into() })?;
        let start = first.start;
        let clean = path.strip_suffix(" (deleted)").unwrap_or(path);
        let map = FileMap::open(&proc::target_path(pid, clean))
            .or_else(|_| FileMap::open(Path::new(&format!("/proc/{pid}/map_files/{:x}-{:x}", first.start, first.end))))
            .map_err(|e| Error::Elf { path: PathBuf::from(path), detail: e.to_string() })?;
        let bad = |e: goblin::error::Error| Error::Elf { path: PathBuf::from(path), detail: e.to_string() };
        let header = Elf::parse_header(map.bytes()).map_err(bad)?;
        let ctx = goblin::container::Ctx::new(
            if header.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64 {
                goblin::container::Container::Big
            } else {
                goblin::container::Container::Little
            },
            scroll_le(),
        );
        let phdrs = goblin::elf::ProgramHeader::parse(map.bytes(), header.e_phoff as usize, header.e_phnum as usize, ctx).map_err(bad)?;
        // The mapping of file offset 0 holds the first PT_LOAD segment.
        let first_load = phdrs
            .iter()
            .filter(|ph| ph.p_type == PT_LOAD)
            .min_by_key(|ph| ph.p_vaddr)
            .ok_or_else(|| Error::Elf { path: PathBuf::from(path), detail: "no loadable segment".into() })?;
        let page = 4096u64;
        let seg_offset = first_load.p_offset & !(page - 1);
        let seg_vaddr = first_load.p_vaddr & !(page - 1);
        let at = mine.iter().filter(|m| m.offset == seg_offset).map(|m| m.start).min().unwrap_or(start);
        let base = at.wrapping_sub(seg_vaddr);
        let exec_ends = phdrs
            .iter()
            .filter(|ph| ph.p_type == PT_LOAD && ph.p_flags & goblin::elf::program_header::PF_X != 0)
            .map(|ph| base.wrapping_add(ph.p_vaddr).wrapping_add(ph.p_filesz.max(ph.p_memsz)))
            .collect();
        let interpreter = phdrs.iter().find(|ph| ph.p_type == goblin::elf::program_header::PT_INTERP).and_then(|ph| {
            let bytes = map.bytes().get(ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize)?;
            let text = bytes.split(|&b| b == 0).next()?;
            Some(String::from_utf8_lossy(text).into_owned())
        });
        Ok(Object { path: path.to_string(), base, map, exec_ends, interpreter })
    }

    /// Looks up several defined dynamic symbols at once. Where a name has several
    /// versions, the default one (not hidden) wins.
    pub fn lookup(&self, names: &[&str]) -> Result<HashMap<String, Symbol>> {
        let elf = Elf::parse(self.map.bytes()).map_err(|e| Error::Elf { path: PathBuf::from(&self.path), detail: e.to_string() })?;
        let mut out: HashMap<String, (Symbol, bool)> = HashMap::new();
        for (i, s) in elf.dynsyms.iter().enumerate() {
            if s.st_shndx == goblin::elf::section_header::SHN_UNDEF as usize || s.st_value == 0 {
                continue;
            }
            let Some(name) = elf.dynstrtab.get_at(s.st_name) else { continue };
            if !names.contains(&name) {
                continue;
            }
            let hidden = elf.versym.as_ref().and_then(|v| v.get_at(i)).is_some_and(|v| v.is_hidden());
            let symbol = Symbol { addr: self.base.wrapping_add(s.st_value), kind: s.st_type() };
            match out.get(name) {
                Some((_, was_hidden)) if !*was_hidden || hidden => {}
                _ => {
                    out.insert(name.to_string(), (symbol, hidden));
                }
            }
        }
        Ok(out.into_iter().map(|(k, (s, _))| (k, s)).collect())
    }
}

/// The distinct file-backed objects of a maps listing, in address order.
pub fn object_paths(maps: &[Mapping]) -> Vec<String> {
    let mut seen = Vec::new();
    for m in maps {
        if m.is_file() && !seen.contains(&m.path) {
            seen.push(m.path.clone());
        }
    }
    seen
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn scroll_le() -> goblin::container::Endian {
    goblin::container::Endian::Little
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Symbols resolved from our own maps and files match what our dynamic linker bound.
    #[test]
    fn resolves_own_libc_symbols() {
        let pid = std::process::id() as i32;
        let maps = proc::maps(pid).expect("maps");
        let libc_path = object_paths(&maps)
            .into_iter()
            .find(|p| basename(p).starts_with("libc.so") || basename(p).starts_with("libc-2."))
            .expect("libc mapped");
        let obj = Object::open(pid, &libc_path, &maps).expect("open libc");
        let syms = obj.lookup(&["malloc", "free", "no_such_symbol"]).expect("lookup");
        assert_eq!(syms["malloc"].addr, libc::malloc as *const () as usize as u64);
        assert_eq!(syms["free"].addr, libc::free as *const () as usize as u64);
        assert!(syms["malloc"].is_function());
        assert!(!syms.contains_key("no_such_symbol"));
    }
}
