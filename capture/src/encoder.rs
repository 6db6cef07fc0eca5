//! Writers: the ALL_ALLOCATIONS stream encoder used on the allocation hot path, and the
//! AGGREGATED_ALLOCATIONS file writer.

use crate::header::Header;
use crate::types::{
    AggregatedAllocation, Allocator, CodeObject, FileFormat, ImageSegments, MemorySnapshot, NativeFrame, PythonFrame, SurvivingObject,
    TraceNode,
};
use crate::varint::Scratch;
use crate::{agg_tag, tag};

/// Where encoded bytes go. The payload implements it on a fixed buffer flushed with
/// write(2); implementations on the hot path must not allocate.
pub trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
    #[inline]
    fn put_u8(&mut self, b: u8) {
        self.put(&[b])
    }
    /// Puts `buf[..len]`, where `buf[len..]` is all zeros: a sink with room may copy the
    /// whole array (one copy of a known size, no call) when zeros past its data change
    /// nothing. The hot-path records come this way.
    #[inline]
    fn put_zero_padded<const N: usize>(&mut self, buf: &[u8; N], len: usize) {
        self.put(&buf[..len])
    }
}

impl ByteSink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn put_u8(&mut self, b: u8) {
        self.push(b);
    }
}

impl<T: ByteSink + ?Sized> ByteSink for &mut T {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        (**self).put(bytes)
    }
    #[inline]
    fn put_u8(&mut self, b: u8) {
        (**self).put_u8(b)
    }
    #[inline]
    fn put_zero_padded<const N: usize>(&mut self, buf: &[u8; N], len: usize) {
        (**self).put_zero_padded(buf, len)
    }
}

/// Writes `bytes` up to its first NUL, then the terminating NUL: an interior NUL would
/// otherwise end the string early and desynchronise every later record.
#[inline]
pub(crate) fn put_cstr(s: &mut impl ByteSink, bytes: &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    s.put(&bytes[..end]);
    s.put_u8(0);
}

/// `new - prev` as the writer's `int64_t` delta, updating `prev`.
#[inline]
fn delta_u64(prev: &mut u64, new: u64) -> i64 {
    let d = new.wrapping_sub(*prev) as i64;
    *prev = new;
    d
}

/// Memray keeps `firstlineno` in an `int`, so its delta wraps at 32 bits.
#[inline]
fn delta_i32(prev: &mut i32, new: i32) -> i64 {
    let d = new.wrapping_sub(*prev) as i64;
    *prev = new;
    d
}

/// Number of recent addresses an ALLOCATION/OBJECT_RECORD tag can refer to.
pub const ADDRESS_CACHE_LEN: usize = 15;

/// Recently written addresses, newest first. A hit does not reorder the cache: only a
/// miss inserts at the front (so it is insertion-ordered, not a true LRU). Kept as a ring
/// stored twice over, whose head moves down on each insert: the entries, newest first, are
/// always the one slice `buf[head..head + 15]`, and an insert moves no entries.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddressCache {
    /// `buf[i] == buf[i + ADDRESS_CACHE_LEN]` for every `i` below it.
    buf: [u64; 2 * ADDRESS_CACHE_LEN],
    head: usize,
}

impl AddressCache {
    pub const fn new() -> Self {
        AddressCache { buf: [0; 2 * ADDRESS_CACHE_LEN], head: 0 }
    }

    /// Inserts `addr` as the newest entry, in place of the oldest.
    #[inline]
    pub fn insert(&mut self, addr: u64) {
        self.head = if self.head == 0 { ADDRESS_CACHE_LEN - 1 } else { self.head - 1 };
        self.buf[self.head] = addr;
        self.buf[self.head + ADDRESS_CACHE_LEN] = addr;
    }

    /// The entry `i` inserts ago (0: the newest).
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        self.buf[self.head + i]
    }

    /// Index of `addr` (the newest if it occurs twice, as Memray's list is searched), or
    /// `None` after inserting it at the front.
    #[inline(always)]
    pub fn lookup_or_insert(&mut self, addr: u64) -> Option<usize> {
        let found = self.buf[self.head..self.head + ADDRESS_CACHE_LEN].iter().position(|&a| a == addr);
        if found.is_none() {
            self.insert(addr);
        }
        found
    }
}

/// Stateful encoder for the ALL_ALLOCATIONS stream: the per-field delta bases and the
/// 15-entry recent-address cache. No method allocates; each record is assembled on the
/// stack and handed to the sink in one `put` (strings and line tables in their own).
///
/// The encoder does not track threads: the caller writes [`StreamEncoder::context_switch`]
/// before thread-specific records (ALLOCATION, FRAME_PUSH/POP, THREAD, OBJECT) whenever
/// the writing thread differs from the previous one. Memray's writer starts with thread
/// id 0 as "current", so a thread with tid 0 would never get a CONTEXT_SWITCH and its
/// records would be rejected by readers: use tids from 1.
#[derive(Clone, Debug)]
pub struct StreamEncoder {
    recent: AddressCache,
    last_data_pointer: u64,
    last_ip: u64,
    last_native_frame_id: u64,
    last_firstlineno: i32,
    current_tid: u64,
    n_allocations: u64,
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEncoder {
    pub const fn new() -> Self {
        StreamEncoder {
            recent: AddressCache::new(),
            last_data_pointer: 0,
            last_ip: 0,
            last_native_frame_id: 0,
            last_firstlineno: 0,
            current_tid: 0,
            n_allocations: 0,
        }
    }

    /// ALLOCATION records written so far, frees included: the value Memray puts in the
    /// final header's `n_allocations`.
    pub fn n_allocations(&self) -> u64 {
        self.n_allocations
    }

    /// The tid of the last CONTEXT_SWITCH written (0 before any).
    pub fn current_tid(&self) -> u64 {
        self.current_tid
    }

    /// CONTEXT_SWITCH: the following thread-specific records belong to `tid`.
    pub fn context_switch(&mut self, s: &mut impl ByteSink, tid: u64) {
        let mut r = Scratch::<16>::new();
        r.byte(tag::CONTEXT_SWITCH);
        r.raw(&tid.to_ne_bytes());
        r.put_to(s);
        self.current_tid = tid;
    }

    /// FRAME_PUSH onto the current thread's Python stack.
    pub fn frame_push(&mut self, s: &mut impl ByteSink, code_object_id: u64, instruction_offset: i32, is_entry: bool) {
        let mut r = Scratch::<32>::new();
        r.byte(tag::FRAME_PUSH | is_entry as u8);
        r.varint(code_object_id);
        r.svarint(instruction_offset as i64);
        r.put_to(s);
    }

    /// Pops `count` frames; one FRAME_POP record per 16 frames. `count == 0` writes nothing.
    pub fn frame_pop(&mut self, s: &mut impl ByteSink, mut count: u32) {
        while count > 0 {
            let n = count.min(16);
            s.put_u8(tag::FRAME_POP | (n - 1) as u8);
            count -= n;
        }
    }

    /// ALLOCATION. `native_frame_id` is written only when `native_traces` (which must match
    /// the header) and the allocator is not `free`/`PyMem_Free`; `size` is ignored for those.
    /// The low 3 bits of `address` are not stored (Memray assumes 8-byte alignment).
    pub fn allocation(
        &mut self,
        s: &mut impl ByteSink,
        address: u64,
        size: u64,
        allocator: Allocator,
        native_frame_id: u64,
        native_traces: bool,
    ) {
        let mut r = Scratch::<32>::new();
        let id = allocator as u8;
        let cached = self.recent.lookup_or_insert(address);
        let mut t = tag::ALLOCATION | if id < 8 { id } else { 0 };
        t |= (cached.unwrap_or(15) as u8) << 3;
        r.byte(t);
        if cached.is_none() {
            r.svarint(delta_u64(&mut self.last_data_pointer, address >> 3));
        }
        if id >= 8 {
            r.byte(id);
        }
        if !allocator.is_simple_deallocator() {
            if native_traces {
                r.svarint(delta_u64(&mut self.last_native_frame_id, native_frame_id));
            }
            r.varint(size);
        }
        r.put_to(s);
        self.n_allocations += 1;
    }

    /// OBJECT_RECORD (object lifetime tracking): a PyObject created or destroyed.
    pub fn object_record(&mut self, s: &mut impl ByteSink, address: u64, is_created: bool, native_frame_id: u64, native_traces: bool) {
        let mut r = Scratch::<32>::new();
        let cached = self.recent.lookup_or_insert(address);
        r.byte(tag::OBJECT_RECORD | ((cached.unwrap_or(15) as u8) << 1) | is_created as u8);
        if cached.is_none() {
            r.svarint(delta_u64(&mut self.last_data_pointer, address >> 3));
        }
        if native_traces && is_created {
            r.svarint(delta_u64(&mut self.last_native_frame_id, native_frame_id));
        }
        r.put_to(s);
    }

    /// MEMORY_RECORD: an RSS sample. Memray flushes its sink after each one.
    pub fn memory_record(&mut self, s: &mut impl ByteSink, rss: u64, ms_since_start: u64) {
        let mut r = Scratch::<32>::new();
        r.byte(tag::MEMORY_RECORD);
        r.varint(rss);
        r.varint(ms_since_start);
        r.put_to(s);
    }

    /// THREAD_RECORD: names the current thread.
    pub fn thread_record(&mut self, s: &mut impl ByteSink, name: &[u8]) {
        s.put_u8(tag::THREAD_RECORD);
        put_cstr(s, name);
    }

    /// CODE_OBJECT, written once per id before the first FRAME_PUSH that uses it.
    pub fn code_object(&mut self, s: &mut impl ByteSink, id: u64, function: &[u8], filename: &[u8], firstlineno: i32, linetable: &[u8]) {
        let mut r = Scratch::<16>::new();
        r.byte(tag::CODE_OBJECT);
        r.varint(id);
        r.put_to(s);
        put_cstr(s, function);
        put_cstr(s, filename);
        let mut r = Scratch::<32>::new();
        r.svarint(delta_i32(&mut self.last_firstlineno, firstlineno));
        r.varint(linetable.len() as u64);
        r.put_to(s);
        s.put(linetable);
    }

    /// NATIVE_TRACE_INDEX: a new node (ip, parent node id) of the native frame tree.
    /// The parent shares its delta base with ALLOCATION's native_frame_id.
    pub fn native_trace_index(&mut self, s: &mut impl ByteSink, ip: u64, parent: u64) {
        let mut r = Scratch::<32>::new();
        r.byte(tag::NATIVE_TRACE_INDEX);
        r.svarint(delta_u64(&mut self.last_ip, ip));
        r.svarint(delta_u64(&mut self.last_native_frame_id, parent));
        r.put_to(s);
    }

    /// MEMORY_MAP_START: the segment list that follows replaces the previous one.
    pub fn memory_map_start(&mut self, s: &mut impl ByteSink) {
        s.put_u8(tag::MEMORY_MAP_START);
    }

    /// SEGMENT_HEADER; exactly `num_segments` [`StreamEncoder::segment`] calls must follow.
    pub fn segment_header(&mut self, s: &mut impl ByteSink, filename: &[u8], num_segments: u64, load_addr: u64) {
        s.put_u8(tag::SEGMENT_HEADER);
        put_cstr(s, filename);
        let mut r = Scratch::<32>::new();
        r.varint(num_segments);
        r.raw(&load_addr.to_ne_bytes());
        r.put_to(s);
    }

    pub fn segment(&mut self, s: &mut impl ByteSink, vaddr: u64, memsz: u64) {
        let mut r = Scratch::<32>::new();
        r.byte(tag::SEGMENT);
        r.raw(&vaddr.to_ne_bytes());
        r.varint(memsz);
        r.put_to(s);
    }

    /// TRAILER: marks the end of valid data (what follows may be zero padding).
    pub fn trailer(&mut self, s: &mut impl ByteSink) {
        s.put_u8(tag::TRAILER);
    }
}

/// Record-by-record writer for an AGGREGATED_ALLOCATIONS file. Memray writes these in the
/// order of [`AggregatedCapture::encode`]; use that unless you stream a large capture.
#[derive(Clone, Debug, Default)]
pub struct AggregatedEncoder {
    last_firstlineno: i32,
    last_ip: u64,
    last_parent: u64,
}

impl AggregatedEncoder {
    pub const fn new() -> Self {
        AggregatedEncoder { last_firstlineno: 0, last_ip: 0, last_parent: 0 }
    }

    /// MEMORY_SNAPSHOT: raw `{u64 ms, u64 rss, u64 heap}`.
    pub fn memory_snapshot(&mut self, s: &mut impl ByteSink, snap: &MemorySnapshot) {
        let mut r = Scratch::<32>::new();
        r.byte(agg_tag::MEMORY_SNAPSHOT);
        r.raw(&snap.ms_since_epoch.to_ne_bytes());
        r.raw(&snap.rss.to_ne_bytes());
        r.raw(&snap.heap.to_ne_bytes());
        r.put_to(s);
    }

    /// CONTEXT_SWITCH + THREAD_RECORD: a thread's name.
    pub fn thread(&mut self, s: &mut impl ByteSink, tid: u64, name: &[u8]) {
        let mut r = Scratch::<16>::new();
        r.byte(agg_tag::CONTEXT_SWITCH);
        r.raw(&tid.to_ne_bytes());
        r.byte(agg_tag::THREAD_RECORD);
        r.put_to(s);
        put_cstr(s, name);
    }

    /// One memory-map generation: MEMORY_MAP_START, then each image and its segments.
    pub fn memory_map(&mut self, s: &mut impl ByteSink, images: &[ImageSegments]) {
        let mut enc = StreamEncoder::new();
        enc.memory_map_start(s);
        for image in images {
            enc.segment_header(s, image.filename.as_bytes(), image.segments.len() as u64, image.load_addr);
            for seg in &image.segments {
                enc.segment(s, seg.vaddr, seg.memsz);
            }
        }
    }

    pub fn code_object(&mut self, s: &mut impl ByteSink, code: &CodeObject) {
        let mut r = Scratch::<16>::new();
        r.byte(agg_tag::CODE_OBJECT);
        r.varint(code.id);
        r.put_to(s);
        put_cstr(s, code.function.as_bytes());
        put_cstr(s, code.filename.as_bytes());
        let mut r = Scratch::<32>::new();
        r.svarint(delta_i32(&mut self.last_firstlineno, code.firstlineno));
        r.varint(code.linetable.len() as u64);
        r.put_to(s);
        s.put(&code.linetable);
    }

    /// NATIVE_TRACE_INDEX, delta-encoded as in the stream.
    pub fn native_frame(&mut self, s: &mut impl ByteSink, frame: &NativeFrame) {
        let mut r = Scratch::<32>::new();
        r.byte(agg_tag::NATIVE_TRACE_INDEX);
        r.svarint(delta_u64(&mut self.last_ip, frame.ip));
        r.svarint(delta_u64(&mut self.last_parent, frame.parent));
        r.put_to(s);
    }

    /// PYTHON_FRAME_INDEX: frame ids must be written densely from 0 upwards.
    pub fn python_frame(&mut self, s: &mut impl ByteSink, frame_id: u64, frame: &PythonFrame) {
        let mut r = Scratch::<32>::new();
        r.byte(agg_tag::PYTHON_FRAME_INDEX);
        r.varint(frame_id);
        r.varint(frame.code_object_id);
        r.svarint(frame.instruction_offset as i64);
        r.byte(frame.is_entry as u8);
        r.put_to(s);
    }

    /// PYTHON_TRACE_INDEX: node ids are implicit (1, 2, ... in write order).
    pub fn python_trace_node(&mut self, s: &mut impl ByteSink, node: &TraceNode) {
        let mut r = Scratch::<32>::new();
        r.byte(agg_tag::PYTHON_TRACE_INDEX);
        r.varint(node.frame_id);
        r.varint(node.parent_index);
        r.put_to(s);
    }

    /// SURVIVING_OBJECT: plain varints (address >> 3, then the native id if native traces).
    pub fn surviving_object(&mut self, s: &mut impl ByteSink, obj: &SurvivingObject, native_traces: bool) {
        let mut r = Scratch::<32>::new();
        r.byte(agg_tag::SURVIVING_OBJECT);
        r.varint(obj.address >> 3);
        if native_traces {
            r.varint(obj.native_frame_id);
        }
        r.put_to(s);
    }

    /// AGGREGATED_ALLOCATION: the raw 72-byte struct.
    pub fn allocation(&mut self, s: &mut impl ByteSink, row: &AggregatedAllocation) {
        s.put_u8(agg_tag::AGGREGATED_ALLOCATION);
        s.put(&row.to_bytes());
    }

    pub fn trailer(&mut self, s: &mut impl ByteSink) {
        s.put_u8(agg_tag::AGGREGATED_TRAILER);
    }
}

/// The whole content of an AGGREGATED_ALLOCATIONS file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AggregatedCapture {
    /// Written with `file_format` forced to `AggregatedAllocations`.
    pub header: Header,
    pub memory_snapshots: Vec<MemorySnapshot>,
    /// (tid, name) of every named thread.
    pub threads: Vec<(u64, String)>,
    /// One entry per memory-map generation, oldest first.
    pub memory_maps: Vec<Vec<ImageSegments>>,
    pub code_objects: Vec<CodeObject>,
    /// Native frame tree nodes; node id `i + 1` is `native_frames[i]`.
    pub native_frames: Vec<NativeFrame>,
    /// Distinct Python frames; frame id `i` is `python_frames[i]`.
    pub python_frames: Vec<PythonFrame>,
    /// Python trace tree nodes; node index `i + 1` is `python_trace_tree[i]` (0 is the root).
    pub python_trace_tree: Vec<TraceNode>,
    pub surviving_objects: Vec<SurvivingObject>,
    /// Rows where both counts are 0 are skipped, as Memray does.
    pub allocations: Vec<AggregatedAllocation>,
}

impl AggregatedCapture {
    /// Writes header, snapshots, threads, memory maps, code objects, native frames,
    /// Python frames, the Python trace tree, surviving objects, allocations and the
    /// trailer: Memray's order.
    pub fn encode(&self, s: &mut impl ByteSink) {
        if self.header.file_format == FileFormat::AggregatedAllocations {
            self.header.encode_to(s);
        } else {
            let mut h = self.header.clone();
            h.file_format = FileFormat::AggregatedAllocations;
            h.encode_to(s);
        }
        let mut e = AggregatedEncoder::new();
        for snap in &self.memory_snapshots {
            e.memory_snapshot(s, snap);
        }
        for (tid, name) in &self.threads {
            e.thread(s, *tid, name.as_bytes());
        }
        for generation in &self.memory_maps {
            e.memory_map(s, generation);
        }
        for code in &self.code_objects {
            e.code_object(s, code);
        }
        for frame in &self.native_frames {
            e.native_frame(s, frame);
        }
        for (id, frame) in self.python_frames.iter().enumerate() {
            e.python_frame(s, id as u64, frame);
        }
        for node in &self.python_trace_tree {
            e.python_trace_node(s, node);
        }
        for obj in &self.surviving_objects {
            e.surviving_object(s, obj, self.header.native_traces);
        }
        for row in &self.allocations {
            if row.n_allocations_in_high_water_mark != 0 || row.n_allocations_leaked != 0 {
                e.allocation(s, row);
            }
        }
        e.trailer(s);
    }
}

/// An LZ4 frame encoder like the one Memray's `compress_on_exit` uses (64 KiB blocks, no
/// checksums). Call `finish()` to write the end mark.
pub fn lz4_frame_encoder<W: std::io::Write>(w: W) -> lz4_flex::frame::FrameEncoder<W> {
    let info = lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max64KB);
    lz4_flex::frame::FrameEncoder::with_frame_info(info, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_tags_match_memrays_examples() {
        let mut e = StreamEncoder::new();
        let mut out = Vec::new();
        // A new pymalloc_free: cache miss (15), allocator 1, delta of address >> 3, no size.
        e.allocation(&mut out, 0x1000, 0, Allocator::PymallocFree, 0, false);
        assert_eq!(out, [0b1111_1001, 0x80, 0x08]);
        out.clear();
        e.allocation(&mut out, 0x2000, 8, Allocator::Malloc, 0, false);
        out.clear();
        // malloc(256) at the address now in slot 1 of the cache.
        e.allocation(&mut out, 0x1000, 256, Allocator::Malloc, 0, false);
        assert_eq!(out, [0b1000_1110, 0x80, 0x02]);
        out.clear();
        // Allocators above 7 put their id in an extra byte; native ids are deltas.
        e.allocation(&mut out, 0x1000, 1, Allocator::Mmap, 5, true);
        assert_eq!(out, [0b1000_1000, 14, 10, 1]);
        assert_eq!(e.n_allocations(), 4);
    }

    #[test]
    fn cache_hits_do_not_reorder() {
        let mut c = AddressCache::new();
        assert_eq!(c.lookup_or_insert(8), None);
        assert_eq!(c.lookup_or_insert(16), None);
        assert_eq!(c.lookup_or_insert(8), Some(1));
        assert_eq!(c.lookup_or_insert(8), Some(1));
        for a in 0..14 {
            c.lookup_or_insert(100 + a * 8);
        }
        // 8 was inserted first, so it is the one dropped: insertion order, not LRU.
        assert_eq!(c.lookup_or_insert(8), None);
    }

    /// The ring gives the indices of the plain front-inserting list
    /// Memray's format is defined by, zeros (the initial fill) included.
    #[test]
    fn ring_matches_a_shifting_list() {
        let mut model = [0u64; ADDRESS_CACHE_LEN];
        let mut c = AddressCache::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct addresses, so hits, misses and evictions all happen often.
            let addr = if step % 97 == 0 { 0 } else { (x % 40) * 16 };
            let expected = model.iter().position(|&a| a == addr);
            if expected.is_none() {
                model.copy_within(0..ADDRESS_CACHE_LEN - 1, 1);
                model[0] = addr;
            }
            assert_eq!(c.lookup_or_insert(addr), expected, "step {step}");
            for (i, &a) in model.iter().enumerate() {
                assert_eq!(c.get(i), a);
            }
        }
    }

    #[test]
    fn frame_pops_split_by_sixteen() {
        let mut out = Vec::new();
        StreamEncoder::new().frame_pop(&mut out, 35);
        assert_eq!(out, [0x1f, 0x1f, 0x12]);
        out.clear();
        StreamEncoder::new().frame_pop(&mut out, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn strings_stop_at_interior_nul() {
        let mut out = Vec::new();
        StreamEncoder::new().thread_record(&mut out, b"ab\0cd");
        assert_eq!(out, [tag::THREAD_RECORD, b'a', b'b', 0]);
    }

    #[test]
    fn allocator_kinds() {
        for a in Allocator::ALL {
            assert_eq!(Allocator::from_u8(a as u8), Some(a));
            assert_eq!(a.is_simple_deallocator(), matches!(a, Allocator::Free | Allocator::PymallocFree));
        }
        assert!(Allocator::Munmap.is_deallocator() && Allocator::Munmap.is_ranged());
        assert!(!Allocator::Mmap.is_deallocator());
        assert_eq!(Allocator::from_u8(0), None);
        assert_eq!(Allocator::from_u8(16), None);
        assert_eq!(Allocator::PosixMemalign.name(), "posix_memalign");
    }
}
