//! GOT/PLT rewriting: points the relocation slots of the allocator functions in every
//! loaded object at our intercepts, and puts the saved entries back on stop.
//!
//! This is the only module that writes into other objects' memory. It is called at
//! start, after each `dlopen`, and at stop, never from an allocation hook.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Mutex;

use libc::{c_char, c_int, c_void, dl_phdr_info, size_t};

use crate::arch::RELOC_TYPES;

// ELF constants (x86_64 / aarch64 are both RELA, 64-bit).
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_HASH: i64 = 4;
const DT_GNU_HASH: i64 = 0x6fff_fef5;
const SHN_UNDEF: u16 = 0;
const STT_GNU_IFUNC: u8 = 10;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_STRSZ: i64 = 10;
const DT_PLTREL: i64 = 20;
const DT_JMPREL: i64 = 23;

#[repr(C)]
struct Elf64Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Elf64Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Elf64Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// A symbol to redirect: its name and the address of our intercept.
#[derive(Clone, Copy)]
pub struct Redirect {
    pub name: &'static CStr,
    pub hook: usize,
}

/// Slot address -> the value it held before we wrote it.
static SAVED: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);

enum Mode<'a> {
    Patch(&'a [Redirect]),
    Restore(&'a [Redirect]),
    /// Find the first object in load order that defines the symbol.
    Resolve(&'a CStr, Option<usize>),
}

struct WalkCtx<'a> {
    mode: Mode<'a>,
    own_base: usize,
    saved: &'a mut HashMap<usize, usize>,
    slots_touched: usize,
}

/// Redirect every matching slot of every loaded object (the payload, ld.so and the vdso
/// excepted). Idempotent: slots already pointing at a hook keep their saved original.
pub fn patch_all(redirects: &[Redirect]) -> usize {
    walk(Mode::Patch(redirects))
}

/// Put back the saved value of every slot that still points at one of our hooks, in the
/// objects loaded now (objects unloaded since were patched, but their slots are gone).
pub fn restore_all(redirects: &[Redirect]) -> usize {
    let n = walk(Mode::Restore(redirects));
    if let Ok(mut saved) = SAVED.lock() {
        if let Some(map) = saved.as_mut() {
            map.clear();
        }
    }
    n
}

fn walk(mode: Mode<'_>) -> usize {
    let mut guard = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    let saved = guard.get_or_insert_with(HashMap::new);
    let mut ctx = WalkCtx { mode, own_base: own_base(), saved, slots_touched: 0 };
    // SAFETY: dl_iterate_phdr holds the loader lock while calling us, so the objects it
    // reports stay mapped for the duration of each callback; the callback does not call
    // dlopen/dlclose (which would deadlock on that lock).
    unsafe {
        libc::dl_iterate_phdr(Some(visit_object), &mut ctx as *mut WalkCtx as *mut c_void);
    }
    ctx.slots_touched
}

/// The address of the first definition of `name` in load order (our payload excepted):
/// what the program's own calls reach. Not dlsym: a non-PIE executable that takes the
/// address of `malloc` owns its canonical address, a PLT stub that jumps through the
/// executable's own (patched) slot, so dlsym would hand us our own hook.
pub fn find_definition(name: &CStr) -> Option<usize> {
    let mut guard = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    let saved = guard.get_or_insert_with(HashMap::new);
    let mut ctx = WalkCtx { mode: Mode::Resolve(name, None), own_base: own_base(), saved, slots_touched: 0 };
    // SAFETY: as in `walk`.
    unsafe {
        libc::dl_iterate_phdr(Some(visit_object), &mut ctx as *mut WalkCtx as *mut c_void);
    }
    match ctx.mode {
        Mode::Resolve(_, found) => found,
        _ => None,
    }
}

/// Load address of this payload, found through one of its own functions.
fn own_base() -> usize {
    // SAFETY: Dl_info is plain data (pointers and integers); all zeros is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let ok = unsafe { libc::dladdr(own_base as *const c_void, &mut info) };
    if ok == 0 {
        0
    } else {
        info.dli_fbase as usize
    }
}

fn should_skip(name: &[u8], base: usize, own_base: usize) -> bool {
    if base == own_base && own_base != 0 {
        return true;
    }
    let contains = |needle: &[u8]| name.windows(needle.len()).any(|w| w == needle);
    contains(b"/ld-linux") || contains(b"/ld-musl") || contains(b"linux-vdso") || contains(b"linux-gate")
}

unsafe extern "C" fn visit_object(info: *mut dl_phdr_info, _size: size_t, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the &mut WalkCtx passed by `walk`, alive for the whole iteration; `info`
    // and the program headers it points at are valid for this callback per dl_iterate_phdr's
    // contract, and `Object::process` gets this object's own PT_DYNAMIC.
    unsafe {
        let ctx = &mut *(data as *mut WalkCtx);
        if let Mode::Resolve(_, Some(_)) = ctx.mode {
            return 1; // found: stop iterating
        }
        let info = &*info;
        let name: &[u8] = if info.dlpi_name.is_null() { b"" } else { CStr::from_ptr(info.dlpi_name).to_bytes() };
        let base = info.dlpi_addr as usize;
        if should_skip(name, base, ctx.own_base) || info.dlpi_phdr.is_null() {
            return 0;
        }
        let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
        let mut dynamic = None;
        let mut relro = None;
        let mut load_ranges = [(0usize, 0usize); 16];
        let mut n_loads = 0;
        for ph in phdrs {
            match ph.p_type {
                PT_DYNAMIC => dynamic = Some(base + ph.p_vaddr as usize),
                PT_GNU_RELRO => relro = Some((base + ph.p_vaddr as usize, ph.p_memsz as usize)),
                PT_LOAD if n_loads < load_ranges.len() => {
                    load_ranges[n_loads] = (base + ph.p_vaddr as usize, ph.p_memsz as usize);
                    n_loads += 1;
                }
                _ => {}
            }
        }
        let Some(dynamic) = dynamic else { return 0 };
        let obj = Object { base, relro, loads: &load_ranges[..n_loads] };
        obj.process(dynamic as *const Elf64Dyn, ctx);
        0
    }
}

/// One loaded object, as seen from inside a dl_iterate_phdr callback.
///
/// # Safety (every `unsafe fn` on Object and Tables, and the hash lookups)
/// The addresses they read come from the object's own program headers and dynamic
/// section, reported by dl_iterate_phdr while it holds the loader lock, so the object
/// stays mapped for the call and its tables are the well-formed ELF that ld.so itself
/// relocated. Reads are bounded by the tables' declared sizes (relocation counts, string
/// table size, hash chain ends) and slot writes by the object's PT_LOAD ranges.
struct Object<'a> {
    base: usize,
    relro: Option<(usize, usize)>,
    loads: &'a [(usize, usize)],
}

impl Object<'_> {
    fn contains(&self, addr: usize, len: usize) -> bool {
        self.loads.iter().any(|&(start, size)| addr >= start && addr + len <= start + size)
    }

    /// glibc relocates most d_ptr entries in place; other loaders (and the vdso) do not.
    fn ptr(&self, value: u64) -> usize {
        let v = value as usize;
        if v < self.base {
            v + self.base
        } else {
            v
        }
    }

    /// SAFETY (caller): `dynamic` points at this object's mapped PT_DYNAMIC array.
    unsafe fn process(&self, dynamic: *const Elf64Dyn, ctx: &mut WalkCtx) {
        // SAFETY: the caller passes this object's PT_DYNAMIC; every table it names is read under
        // the contract on `Object` (mapped while the loader lock is held, reads bounded by the
        // declared sizes).
        unsafe {
            let (mut strtab, mut strsz, mut symtab) = (0usize, 0usize, 0usize);
            let (mut rela, mut relasz, mut jmprel, mut pltrelsz, mut pltrel) = (0usize, 0usize, 0usize, 0usize, 0i64);
            let (mut gnu_hash, mut sysv_hash) = (0usize, 0usize);
            let mut d = dynamic;
            for _ in 0..4096 {
                let entry = &*d;
                match entry.tag {
                    DT_NULL => break,
                    DT_STRTAB => strtab = self.ptr(entry.val),
                    DT_STRSZ => strsz = entry.val as usize,
                    DT_SYMTAB => symtab = self.ptr(entry.val),
                    DT_RELA => rela = self.ptr(entry.val),
                    DT_RELASZ => relasz = entry.val as usize,
                    DT_JMPREL => jmprel = self.ptr(entry.val),
                    DT_PLTRELSZ => pltrelsz = entry.val as usize,
                    DT_PLTREL => pltrel = entry.val as i64,
                    DT_GNU_HASH => gnu_hash = self.ptr(entry.val),
                    DT_HASH => sysv_hash = self.ptr(entry.val),
                    _ => {}
                }
                d = d.add(1);
            }
            if strtab == 0 || symtab == 0 {
                return;
            }
            let tables = Tables { strtab, strsz, symtab };
            if let Mode::Resolve(name, _) = ctx.mode {
                if let Some(addr) = self.lookup(&tables, name.to_bytes(), gnu_hash, sysv_hash) {
                    ctx.mode = Mode::Resolve(name, Some(addr));
                }
                return;
            }
            if rela != 0 {
                self.process_relocs(rela, relasz, &tables, ctx);
            }
            // DT_PLTREL says whether DT_JMPREL holds REL or RELA entries; 64-bit Linux uses RELA.
            if jmprel != 0 && pltrel == DT_RELA {
                self.process_relocs(jmprel, pltrelsz, &tables, ctx);
            }
        }
    }

    unsafe fn process_relocs(&self, table: usize, size: usize, tables: &Tables, ctx: &mut WalkCtx) {
        // SAFETY: `table`/`size` are this object's DT_RELA or DT_JMPREL as `process` read them;
        // slots are written only inside its PT_LOAD ranges (`contains`); see `Object`.
        unsafe {
            let count = size / std::mem::size_of::<Elf64Rela>();
            let relocs = std::slice::from_raw_parts(table as *const Elf64Rela, count);
            for r in relocs {
                let rtype = (r.info & 0xffff_ffff) as u32;
                if !RELOC_TYPES.contains(&rtype) {
                    continue;
                }
                let sym_index = (r.info >> 32) as usize;
                if sym_index == 0 {
                    continue;
                }
                let Some(name) = tables.symbol_name(sym_index) else { continue };
                let slot = self.base + r.offset as usize;
                if !self.contains(slot, 8) {
                    continue;
                }
                match ctx.mode {
                    Mode::Patch(redirects) => {
                        if let Some(rd) = redirects.iter().find(|rd| rd.name.to_bytes() == name) {
                            self.patch_slot(slot, rd.hook, redirects, ctx);
                        }
                    }
                    Mode::Restore(redirects) => {
                        if let Some(rd) = redirects.iter().find(|rd| rd.name.to_bytes() == name) {
                            self.restore_slot(slot, rd.hook, ctx);
                        }
                    }
                    Mode::Resolve(..) => {}
                }
            }
        }
    }

    /// Looks `name` up in this object's dynamic symbol table through its GNU or SysV hash
    /// table; only a definition counts (not an undefined or canonical-PLT entry).
    unsafe fn lookup(&self, tables: &Tables, name: &[u8], gnu_hash: usize, sysv_hash: usize) -> Option<usize> {
        // SAFETY: the hash and symbol tables are this object's, mapped for the call (see `Object`);
        // an IFUNC resolver is called as ld.so calls it.
        unsafe {
            let index = if gnu_hash != 0 {
                gnu_lookup(gnu_hash, tables, name)?
            } else if sysv_hash != 0 {
                sysv_lookup(sysv_hash, tables, name)?
            } else {
                return None;
            };
            let sym = &*((tables.symtab + index * std::mem::size_of::<Elf64Sym>()) as *const Elf64Sym);
            if sym.shndx == SHN_UNDEF || sym.value == 0 {
                return None;
            }
            let addr = self.base + sym.value as usize;
            if sym.info & 0xf == STT_GNU_IFUNC {
                // An IFUNC's value is its resolver: call it to get the implementation. Sound
                // as ld.so does the same (resolvers take no arguments we must supply here).
                let resolver: extern "C" fn() -> usize = std::mem::transmute(addr);
                return Some(resolver());
            }
            Some(addr)
        }
    }

    unsafe fn patch_slot(&self, slot: usize, hook: usize, redirects: &[Redirect], ctx: &mut WalkCtx) {
        // SAFETY: `slot` is an aligned GOT slot inside this object's PT_LOAD ranges (checked by the
        // caller with `contains`).
        unsafe {
            let current = std::ptr::read_volatile(slot as *const usize);
            if redirects.iter().any(|rd| rd.hook == current) {
                return; // already ours
            }
            if self.write_slot(slot, hook) {
                ctx.saved.insert(slot, current);
                ctx.slots_touched += 1;
            }
        }
    }

    unsafe fn restore_slot(&self, slot: usize, hook: usize, ctx: &mut WalkCtx) {
        // SAFETY: `slot` is an aligned GOT slot inside this object's PT_LOAD ranges (checked by the
        // caller with `contains`).
        unsafe {
            let current = std::ptr::read_volatile(slot as *const usize);
            if current != hook {
                return;
            }
            if let Some(&original) = ctx.saved.get(&slot) {
                if self.write_slot(slot, original) {
                    ctx.slots_touched += 1;
                }
            }
        }
    }

    /// Writes one pointer-sized, aligned slot. An aligned 8-byte store is atomic, so a
    /// thread calling through the slot concurrently sees either the old or the new target.
    unsafe fn write_slot(&self, slot: usize, value: usize) -> bool {
        // SAFETY: `slot` is an aligned slot inside a mapped PT_LOAD segment of this object (checked
        // by `contains`); making its page writable only widens access for the duration of the
        // write, and RELRO protection is put back.
        unsafe {
            let page = page_size();
            let page_start = slot & !(page - 1);
            let in_relro = self.relro.is_some_and(|(start, len)| slot >= start && slot < start + len);
            // SAFETY: the page belongs to a mapped PT_LOAD segment of this object (checked by
            // `contains`); making it writable only widens access for the duration of the write.
            if libc::mprotect(page_start as *mut c_void, page, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return false;
            }
            std::ptr::write_volatile(slot as *mut usize, value);
            if in_relro {
                // RELRO pages were read-only before relocation finished; put that back.
                libc::mprotect(page_start as *mut c_void, page, libc::PROT_READ);
            }
            true
        }
    }
}

struct Tables {
    strtab: usize,
    strsz: usize,
    symtab: usize,
}

impl Tables {
    unsafe fn symbol_name(&self, index: usize) -> Option<&[u8]> {
        // SAFETY: `index` comes from this object's relocations or hash chains, so it names an entry
        // of its symbol table; the name offset is checked against DT_STRSZ and the string is NUL-
        // terminated ELF string-table data.
        unsafe {
            let sym = &*((self.symtab + index * std::mem::size_of::<Elf64Sym>()) as *const Elf64Sym);
            let off = sym.name as usize;
            if off == 0 || (self.strsz != 0 && off >= self.strsz) {
                return None;
            }
            Some(CStr::from_ptr((self.strtab + off) as *const c_char).to_bytes())
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn gnu_hash(name: &[u8]) -> u32 {
    name.iter().fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(c as u32))
}

/// SAFETY (caller): `table` is the object's mapped DT_GNU_HASH section.
unsafe fn gnu_lookup(table: usize, tables: &Tables, name: &[u8]) -> Option<usize> {
    // SAFETY: the caller passes the object's mapped DT_GNU_HASH; indexes stay within its buckets
    // and chains (bucket = hash % nbuckets, chains end at a set low bit, bounded for corrupt
    // tables).
    unsafe {
        let words = table as *const u32;
        let (nbuckets, symoffset, bloom_size) = (*words, *words.add(1), *words.add(2));
        if nbuckets == 0 {
            return None;
        }
        let buckets = (table + 16 + bloom_size as usize * 8) as *const u32;
        let chains = buckets.add(nbuckets as usize);
        let h = gnu_hash(name);
        let first = *buckets.add((h % nbuckets) as usize);
        if first < symoffset {
            return None;
        }
        // A chain ends at an entry with the low bit set; the bound only guards corrupt tables.
        for i in (first..).take(1_000_000) {
            let h2 = *chains.add((i - symoffset) as usize);
            if (h | 1) == (h2 | 1) && tables.symbol_name(i as usize) == Some(name) {
                return Some(i as usize);
            }
            if h2 & 1 != 0 {
                return None;
            }
        }
        None
    }
}

fn sysv_hash(name: &[u8]) -> u32 {
    name.iter().fold(0u32, |h, &c| {
        let h = (h << 4).wrapping_add(c as u32);
        let g = h & 0xf000_0000;
        (h ^ (g >> 24)) & !g
    })
}

/// SAFETY (caller): `table` is the object's mapped DT_HASH section.
unsafe fn sysv_lookup(table: usize, tables: &Tables, name: &[u8]) -> Option<usize> {
    // SAFETY: the caller passes the object's mapped DT_HASH; indexes stay below nbucket and nchain.
    unsafe {
        let words = table as *const u32;
        let (nbucket, nchain) = (*words, *words.add(1));
        if nbucket == 0 {
            return None;
        }
        let buckets = words.add(2);
        let chains = buckets.add(nbucket as usize);
        let mut i = *buckets.add((sysv_hash(name) % nbucket) as usize);
        let mut steps = 0;
        while i != 0 && i < nchain && steps < nchain {
            if tables.symbol_name(i as usize) == Some(name) {
                return Some(i as usize);
            }
            i = *chains.add(i as usize);
            steps += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_malloc_definition() {
        let found = find_definition(c"malloc").expect("malloc is defined somewhere");
        // SAFETY: dlsym on libc's own handle returns libc's definition.
        let libc_malloc = unsafe {
            let h = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_NOW);
            libc::dlsym(h, c"malloc".as_ptr()) as usize
        };
        assert_eq!(found, libc_malloc);
    }

    #[test]
    fn hashes_match_the_elf_specs() {
        assert_eq!(gnu_hash(b""), 5381);
        assert_eq!(gnu_hash(b"printf"), 0x156b_2bb8);
        assert_eq!(sysv_hash(b"printf"), 0x077905a6);
    }

    #[test]
    fn unknown_symbols_are_not_found() {
        assert_eq!(find_definition(c"memray_no_such_symbol_anywhere"), None);
    }
}
