//! Native stacks of captures made with `--native`: the native frame tree
//! (NATIVE_TRACE_INDEX records), the memory maps (MEMORY_MAP_START, SEGMENT_HEADER,
//! SEGMENT) and their symbolization, done here in the reporter from the object files
//! the maps name (so reports must be made on the machine that ran the program, or one
//! with the same files).
//!
//! * [`maps`]: which object holds an address in a given memory-map generation;
//! * [`filenames`]: source file names as Memray shows them (from the line tables);
//! * [`symbolize`]: object addresses to frames (DWARF with inlined frames, else the
//!   symbol table), cached per address;
//! * [`hybrid`]: Python and native stacks merged as Memray merges them.
//!
//! [`NativeStacks`] ties them together. It symbolizes each distinct instruction pointer
//! once: reports ask for the stacks of distinct (native node, generation) keys, not of
//! records, and [`NativeStacks::prepare`] symbolizes all their addresses in one batch
//! per object.

pub mod filenames;
pub mod hybrid;
pub mod maps;
pub mod symbolize;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use memray_capture::{NativeFrame, Record};

use crate::model::stacks::Location;
use maps::MemoryMaps;
use symbolize::Symbolizer;

/// The native frame tree, the memory maps, and what has been symbolized so far.
#[derive(Default)]
pub struct NativeStacks {
    /// Node `i` (1-based) is `nodes[i - 1]`; 0 is the root (no frame).
    nodes: Vec<NativeFrame>,
    maps: RefCell<MemoryMaps>,
    symbolizer: RefCell<Option<Symbolizer>>,
}

impl NativeStacks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes what concerns native stacks from a record; returns whether it did.
    // Inlined into read loops: the common records are told apart without being handed
    // over in memory.
    #[inline(always)]
    pub fn observe(&mut self, record: &Record) -> bool {
        match record {
            Record::NativeFrame(_) | Record::MemoryMapStart | Record::SegmentHeader { .. } | Record::Segment(_) => self.take(record),
            _ => false,
        }
    }

    #[inline(never)]
    fn take(&mut self, record: &Record) -> bool {
        match record {
            Record::NativeFrame(f) => self.nodes.push(*f),
            Record::MemoryMapStart => self.maps.get_mut().start_generation(),
            Record::SegmentHeader { filename, load_addr, .. } => self.maps.get_mut().object(filename, *load_addr),
            Record::Segment(s) => self.maps.get_mut().segment(*s),
            _ => return false,
        }
        true
    }

    /// Adds a node of the frame tree (ids are 1, 2, ... in call order).
    pub fn add_node(&mut self, frame: NativeFrame) {
        self.nodes.push(frame);
    }

    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn n_generations(&self) -> u64 {
        self.maps.borrow().n_generations()
    }

    /// Instruction pointers of `node`'s stack, innermost first.
    pub fn ips(&self, node: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut id = node;
        while id != 0 {
            let Some(f) = self.nodes.get(id as usize - 1) else { break };
            out.push(f.ip);
            // Parents are written before their children; anything else would loop.
            if f.parent >= id {
                break;
            }
            id = f.parent;
        }
        out
    }

    /// The caller's node of `node` (0: the outermost), or `None` for an unknown node.
    pub fn parent(&self, node: u64) -> Option<u64> {
        let f = self.nodes.get((node as usize).checked_sub(1)?)?;
        // Parents are written before their children; anything else is cut here.
        Some(if f.parent < node { f.parent } else { 0 })
    }

    /// The frames of `node`'s own address in `generation`, innermost first (several
    /// when calls were inlined; none when no loaded object covers the address).
    pub fn node_frames(&self, node: u64, generation: u64) -> Vec<Location> {
        let Some(f) = (node as usize).checked_sub(1).and_then(|i| self.nodes.get(i)) else { return Vec::new() };
        let mut maps = self.maps.borrow_mut();
        let Some((image, addr)) = maps.lookup(generation, f.ip) else { return Vec::new() };
        let mut symbolizer = self.symbolizer.borrow_mut();
        let symbolizer = symbolizer.get_or_insert_with(Symbolizer::new);
        let object: Rc<str> = maps.image(image).filename.clone();
        symbolizer.frames(&object, addr, f.ip).to_vec()
    }

    /// Symbolizes, in one batch per object, every address of the stacks of `keys`
    /// ((native node, generation) pairs) not symbolized yet.
    pub fn prepare(&self, keys: impl IntoIterator<Item = (u64, u64)>) {
        let mut maps = self.maps.borrow_mut();
        let mut symbolizer = self.symbolizer.borrow_mut();
        let symbolizer = symbolizer.get_or_insert_with(Symbolizer::new);
        let mut seen = memray_capture::fasthash::FastMap::default();
        let mut by_object: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for (node, generation) in keys {
            if node == 0 || seen.insert((node, generation), ()).is_some() {
                continue;
            }
            for ip in self.ips(node) {
                if let Some((image, addr)) = maps.lookup(generation, ip) {
                    let object = &maps.image(image).filename;
                    if !symbolizer.is_cached(object, addr) {
                        by_object.entry(image).or_default().push((addr, ip));
                    }
                }
            }
        }
        for (image, mut addrs) in by_object {
            addrs.sort_unstable();
            addrs.dedup_by_key(|a| a.0);
            let object = maps.image(image).filename.clone();
            symbolizer.symbolize_batch(&object, &addrs);
        }
    }

    /// The native stack of `node` in memory-map `generation`, innermost first, inlined
    /// frames included; `max_ips` limits the number of addresses walked (Memray's
    /// `native_stack_trace(max_stacks)`). Addresses no loaded object covers are left out.
    pub fn stack(&self, node: u64, generation: u64, max_ips: Option<usize>) -> Vec<Location> {
        let mut maps = self.maps.borrow_mut();
        let mut symbolizer = self.symbolizer.borrow_mut();
        let symbolizer = symbolizer.get_or_insert_with(Symbolizer::new);
        let mut out = Vec::new();
        for ip in self.ips(node).into_iter().take(max_ips.unwrap_or(usize::MAX)) {
            if let Some((image, addr)) = maps.lookup(generation, ip) {
                let object: Rc<str> = maps.image(image).filename.clone();
                out.extend(symbolizer.frames(&object, addr, ip).iter().cloned());
            }
        }
        out
    }

    /// Objects the maps name that could not be read, for the one warning a report
    /// prints (their frames show raw addresses).
    pub fn missing_objects(&self) -> Vec<String> {
        self.symbolizer.borrow().as_ref().map(|s| s.missing().map(String::from).collect()).unwrap_or_default()
    }

    /// The warning line for [`NativeStacks::missing_objects`], if any.
    pub fn missing_warning(&self) -> Option<String> {
        let missing = self.missing_objects();
        (!missing.is_empty()).then(|| {
            format!(
                "warning: could not read {} object file{} named in the capture's memory maps, so {} native frames show addresses: {}",
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                if missing.len() == 1 { "its" } else { "their" },
                missing.join(", ")
            )
        })
    }
}
