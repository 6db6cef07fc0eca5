//! Memray 1.20 capture format (header version 13): encoder and streaming decoder.
//!
//! * [`StreamEncoder`] writes the ALL_ALLOCATIONS record stream into any [`ByteSink`]
//!   without allocating, for use on the allocation hot path.
//! * [`AggregatedCapture`] / [`AggregatedEncoder`] write an AGGREGATED_ALLOCATIONS file.
//! * [`Reader`] decodes either format, plain or LZ4-framed, into [`Record`]s.
//!
//! The format is described in `docs/format.md`. Multi-byte raw fields are native-endian,
//! as Memray writes them.
#![forbid(unsafe_code)]

pub mod cut;
mod decompress;
pub mod dump;
mod encoder;
mod error;
pub mod fasthash;
mod header;
mod input;
mod progress;
pub mod ranges;
mod reader;
pub mod sampling;
mod types;
mod varint;

pub use encoder::{lz4_frame_encoder, AggregatedCapture, AggregatedEncoder, ByteSink, StreamEncoder, ADDRESS_CACHE_LEN};
pub use error::CaptureError;
pub use header::Header;
pub use progress::{set_progress_sink, ProgressSink};
pub use reader::{Reader, Record};
pub use types::{
    AggregatedAllocation, Allocator, CodeObject, FileFormat, ImageSegments, MemorySnapshot, NativeFrame, PythonAllocator, PythonFrame,
    Segment, SurvivingObject, TraceNode,
};
pub use varint::{unzigzag, zigzag};

/// `"memray"` and its NUL: the first 7 bytes of every capture.
pub const MAGIC: &[u8; 7] = b"memray\0";
/// The only header version this crate reads and writes (Memray 1.20).
pub const VERSION: i32 = 13;
/// An LZ4 frame starts with these bytes; Memray's compressed captures are one frame.
pub const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
/// Longest string or line table the reader accepts, so a corrupt length cannot make it
/// allocate without bound.
pub const MAX_STRING_LEN: usize = 16 << 20;

/// Record type bytes of the ALL_ALLOCATIONS stream. The four highest ones carry flags in
/// their low bits: ALLOCATION `1ppppaaa`, FRAME_PUSH `01uuuuue`, OBJECT_RECORD
/// `001ppppc`, FRAME_POP `0001nnnn`.
pub mod tag {
    pub const FILLER: u8 = 0;
    pub const TRAILER: u8 = 1;
    pub const MEMORY_RECORD: u8 = 2;
    pub const NATIVE_TRACE_INDEX: u8 = 5;
    pub const MEMORY_MAP_START: u8 = 6;
    pub const SEGMENT_HEADER: u8 = 7;
    pub const SEGMENT: u8 = 8;
    pub const THREAD_RECORD: u8 = 10;
    pub const CONTEXT_SWITCH: u8 = 12;
    pub const CODE_OBJECT: u8 = 14;
    pub const FRAME_POP: u8 = 16;
    pub const OBJECT_RECORD: u8 = 32;
    pub const FRAME_PUSH: u8 = 64;
    pub const ALLOCATION: u8 = 128;
}

/// Record type bytes of an AGGREGATED_ALLOCATIONS file (no flag bits).
pub mod agg_tag {
    pub const MEMORY_SNAPSHOT: u8 = 1;
    pub const AGGREGATED_ALLOCATION: u8 = 2;
    pub const PYTHON_TRACE_INDEX: u8 = 3;
    pub const PYTHON_FRAME_INDEX: u8 = 4;
    pub const NATIVE_TRACE_INDEX: u8 = 5;
    pub const MEMORY_MAP_START: u8 = 6;
    pub const SEGMENT_HEADER: u8 = 7;
    pub const SEGMENT: u8 = 8;
    pub const THREAD_RECORD: u8 = 10;
    pub const CONTEXT_SWITCH: u8 = 12;
    pub const SURVIVING_OBJECT: u8 = 13;
    pub const CODE_OBJECT: u8 = 14;
    pub const AGGREGATED_TRAILER: u8 = 15;
}
