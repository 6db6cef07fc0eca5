//! Enumerations and plain records shared by the encoder and the decoder.

/// The allocation function a record came from (Memray's `hooks::Allocator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Allocator {
    PymallocFree = 1,
    PymallocMalloc = 2,
    PymallocCalloc = 3,
    PymallocRealloc = 4,
    Free = 5,
    Malloc = 6,
    Realloc = 7,
    Calloc = 8,
    PosixMemalign = 9,
    AlignedAlloc = 10,
    Memalign = 11,
    Valloc = 12,
    Pvalloc = 13,
    Mmap = 14,
    Munmap = 15,
}

impl Allocator {
    pub const ALL: [Allocator; 15] = [
        Allocator::PymallocFree,
        Allocator::PymallocMalloc,
        Allocator::PymallocCalloc,
        Allocator::PymallocRealloc,
        Allocator::Free,
        Allocator::Malloc,
        Allocator::Realloc,
        Allocator::Calloc,
        Allocator::PosixMemalign,
        Allocator::AlignedAlloc,
        Allocator::Memalign,
        Allocator::Valloc,
        Allocator::Pvalloc,
        Allocator::Mmap,
        Allocator::Munmap,
    ];

    pub const fn from_u8(v: u8) -> Option<Allocator> {
        if v >= 1 && v <= 15 {
            Some(Allocator::ALL[v as usize - 1])
        } else {
            None
        }
    }

    /// `free` and `PyMem_Free`: no size and no native stack on the wire.
    #[inline]
    pub const fn is_simple_deallocator(self) -> bool {
        matches!(self, Allocator::Free | Allocator::PymallocFree)
    }

    /// Releases memory (simple deallocators and `munmap`).
    #[inline]
    pub const fn is_deallocator(self) -> bool {
        matches!(self, Allocator::Free | Allocator::PymallocFree | Allocator::Munmap)
    }

    /// `mmap`/`munmap`: an address range, which may be released piecewise.
    #[inline]
    pub const fn is_ranged(self) -> bool {
        matches!(self, Allocator::Mmap | Allocator::Munmap)
    }

    /// Allocators served by pymalloc (`--trace-python-allocators`).
    #[inline]
    pub const fn is_pymalloc(self) -> bool {
        (self as u8) <= 4
    }

    /// The lower-case name Memray prints (`malloc`, `pymalloc_free`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Allocator::PymallocFree => "pymalloc_free",
            Allocator::PymallocMalloc => "pymalloc_malloc",
            Allocator::PymallocCalloc => "pymalloc_calloc",
            Allocator::PymallocRealloc => "pymalloc_realloc",
            Allocator::Free => "free",
            Allocator::Malloc => "malloc",
            Allocator::Realloc => "realloc",
            Allocator::Calloc => "calloc",
            Allocator::PosixMemalign => "posix_memalign",
            Allocator::AlignedAlloc => "aligned_alloc",
            Allocator::Memalign => "memalign",
            Allocator::Valloc => "valloc",
            Allocator::Pvalloc => "pvalloc",
            Allocator::Mmap => "mmap",
            Allocator::Munmap => "munmap",
        }
    }
}

/// Which kind of capture follows the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileFormat {
    #[default]
    AllAllocations = 0,
    AggregatedAllocations = 1,
}

impl FileFormat {
    pub const fn from_u8(v: u8) -> Option<FileFormat> {
        match v {
            0 => Some(FileFormat::AllAllocations),
            1 => Some(FileFormat::AggregatedAllocations),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            FileFormat::AllAllocations => "ALL_ALLOCATIONS",
            FileFormat::AggregatedAllocations => "AGGREGATED_ALLOCATIONS",
        }
    }
}

/// The interpreter's allocator (`_PyMem_GetCurrentAllocatorName`) when tracking began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PythonAllocator {
    #[default]
    Pymalloc = 1,
    PymallocDebug = 2,
    Malloc = 3,
    Other = 4,
    Mimalloc = 5,
    MimallocDebug = 6,
}

impl PythonAllocator {
    pub const fn from_u8(v: u8) -> Option<PythonAllocator> {
        match v {
            1 => Some(PythonAllocator::Pymalloc),
            2 => Some(PythonAllocator::PymallocDebug),
            3 => Some(PythonAllocator::Malloc),
            4 => Some(PythonAllocator::Other),
            5 => Some(PythonAllocator::Mimalloc),
            6 => Some(PythonAllocator::MimallocDebug),
            _ => None,
        }
    }

    /// The name as `_PyMem_GetCurrentAllocatorName` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            PythonAllocator::Pymalloc => "pymalloc",
            PythonAllocator::PymallocDebug => "pymalloc_debug",
            PythonAllocator::Malloc => "malloc",
            PythonAllocator::Other => "other",
            PythonAllocator::Mimalloc => "mimalloc",
            PythonAllocator::MimallocDebug => "mimalloc_debug",
        }
    }

    /// Inverse of [`PythonAllocator::name`]; anything unknown is `Other`, as in Memray.
    pub fn from_name(name: &str) -> PythonAllocator {
        match name {
            "pymalloc" => PythonAllocator::Pymalloc,
            "pymalloc_debug" => PythonAllocator::PymallocDebug,
            "malloc" => PythonAllocator::Malloc,
            "mimalloc" => PythonAllocator::Mimalloc,
            "mimalloc_debug" => PythonAllocator::MimallocDebug,
            _ => PythonAllocator::Other,
        }
    }
}

/// A Python code object as recorded once per id (CODE_OBJECT).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeObject {
    pub id: u64,
    pub function: String,
    pub filename: String,
    pub firstlineno: i32,
    /// Raw `co_linetable` (3.10+) or `co_lnotab` bytes; the reader resolves lines.
    pub linetable: Vec<u8>,
}

/// One `PT_LOAD` segment of a loaded object, relative to its load address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
}

/// A loaded object (executable or shared library) and its segments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSegments {
    pub filename: String,
    pub load_addr: u64,
    pub segments: Vec<Segment>,
}

/// An RSS sample with the tracked heap size at that moment (aggregated files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemorySnapshot {
    pub ms_since_epoch: u64,
    pub rss: u64,
    pub heap: u64,
}

/// A distinct Python frame (aggregated files): frame ids are positions in this table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PythonFrame {
    pub code_object_id: u64,
    pub instruction_offset: i32,
    pub is_entry: bool,
}

/// One row of an aggregated capture: allocations sharing a location, thread and allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregatedAllocation {
    pub tid: u64,
    pub allocator: Allocator,
    pub native_frame_id: u64,
    /// Index into the Python trace tree (0 = no Python stack).
    pub frame_index: u64,
    pub native_segment_generation: u64,
    pub n_allocations_in_high_water_mark: u64,
    pub n_allocations_leaked: u64,
    pub bytes_in_high_water_mark: u64,
    pub bytes_leaked: u64,
}

impl AggregatedAllocation {
    /// On-disk size: Memray writes the C++ struct raw, with 7 padding bytes after `allocator`.
    pub const ENCODED_LEN: usize = 72;

    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..8].copy_from_slice(&self.tid.to_ne_bytes());
        b[8] = self.allocator as u8;
        let rest = [
            self.native_frame_id,
            self.frame_index,
            self.native_segment_generation,
            self.n_allocations_in_high_water_mark,
            self.n_allocations_leaked,
            self.bytes_in_high_water_mark,
            self.bytes_leaked,
        ];
        for (i, v) in rest.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// Parses the raw struct; `None` if the allocator byte is not a known allocator.
    pub fn from_bytes(b: &[u8; Self::ENCODED_LEN]) -> Option<AggregatedAllocation> {
        let word = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(AggregatedAllocation {
            tid: word(0),
            allocator: Allocator::from_u8(b[8])?,
            native_frame_id: word(16),
            frame_index: word(24),
            native_segment_generation: word(32),
            n_allocations_in_high_water_mark: word(40),
            n_allocations_leaked: word(48),
            bytes_in_high_water_mark: word(56),
            bytes_leaked: word(64),
        })
    }
}

/// A node of the native frame tree: return address and the id of its caller's node
/// (0 = root). Node ids start at 1, in write order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NativeFrame {
    pub ip: u64,
    pub parent: u64,
}

/// A node of the Python trace tree (aggregated files): a frame id and its parent node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceNode {
    pub frame_id: u64,
    pub parent_index: u64,
}

/// An object still alive at exit (aggregated files with object lifetime tracking).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SurvivingObject {
    pub address: u64,
    pub native_frame_id: u64,
}

#[cfg(test)]
mod tests {
    use super::Allocator;

    /// The numbering is defined here; the Python package's `AllocatorType` (and through
    /// it the end-to-end tests) must say the same, name for name.
    #[test]
    fn python_allocator_type_matches() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/memray/_allocators.py");
        let text = std::fs::read_to_string(path).expect("python/memray/_allocators.py");
        let python: Vec<(String, u8)> = text
            .lines()
            .filter_map(|l| l.trim().split_once(" = "))
            .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
            .collect();
        let ours: Vec<(String, u8)> = Allocator::ALL.iter().map(|a| (a.name().to_ascii_uppercase(), *a as u8)).collect();
        assert_eq!(python, ours);
    }
}
