//! The capture header: raw native-endian fields and NUL-terminated strings.

use crate::encoder::{put_cstr, ByteSink};
use crate::types::{FileFormat, PythonAllocator};
use crate::{MAGIC, VERSION};

/// Everything before the first record. Its encoded length depends only on the strings,
/// so the payload can rewrite it in place at exit with the final counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version; 13 for Memray 1.20. Only 13 is read back.
    pub version: i32,
    /// `PY_VERSION_HEX` of the tracked interpreter (selects the line-table decoder).
    pub python_version: u32,
    pub native_traces: bool,
    pub file_format: FileFormat,
    /// ALLOCATION records written, frees included (Memray's streaming writer counts every
    /// record; its aggregating writer leaves this 0).
    pub n_allocations: u64,
    /// The wire's `n_frames`, which Memray 1.20 leaves 0: a sampled capture keeps its
    /// sampling interval (bytes) here, 0 meaning every allocation was recorded.
    pub sampling_interval: u64,
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    pub command_line: String,
    pub pid: i32,
    pub main_tid: u64,
    /// Frames above `Tracker.__enter__` on `main_tid` that reporters hide.
    pub skipped_frames_on_main_tid: u64,
    pub python_allocator: PythonAllocator,
    pub trace_python_allocators: bool,
    pub track_object_lifetimes: bool,
    /// `sysconfig.get_path("stdlib")` of the tracked process.
    pub libdest: String,
    /// Entries must be non-empty: an empty string ends the list on the wire.
    pub site_packages: Vec<String>,
    pub sys_path: Vec<String>,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            version: VERSION,
            python_version: 0,
            native_traces: false,
            file_format: FileFormat::AllAllocations,
            n_allocations: 0,
            sampling_interval: 0,
            start_time_ms: 0,
            end_time_ms: 0,
            command_line: String::new(),
            pid: -1,
            main_tid: 0,
            skipped_frames_on_main_tid: 0,
            python_allocator: PythonAllocator::default(),
            trace_python_allocators: false,
            track_object_lifetimes: false,
            libdest: String::new(),
            site_packages: Vec::new(),
            sys_path: Vec::new(),
        }
    }
}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_to(out);
    }

    /// Writes the encoded header to any sink. Strings are cut at an interior NUL, and
    /// empty path entries are skipped, so the result always parses.
    pub fn encode_to(&self, s: &mut impl ByteSink) {
        s.put(MAGIC);
        s.put(&self.version.to_ne_bytes());
        s.put(&self.python_version.to_ne_bytes());
        s.put_u8(self.native_traces as u8);
        s.put_u8(self.file_format as u8);
        s.put(&self.n_allocations.to_ne_bytes());
        s.put(&self.sampling_interval.to_ne_bytes());
        s.put(&self.start_time_ms.to_ne_bytes());
        s.put(&self.end_time_ms.to_ne_bytes());
        put_cstr(s, self.command_line.as_bytes());
        s.put(&self.pid.to_ne_bytes());
        s.put(&self.main_tid.to_ne_bytes());
        s.put(&self.skipped_frames_on_main_tid.to_ne_bytes());
        s.put_u8(self.python_allocator as u8);
        s.put_u8(self.trace_python_allocators as u8);
        s.put_u8(self.track_object_lifetimes as u8);
        put_cstr(s, self.libdest.as_bytes());
        for list in [&self.site_packages, &self.sys_path] {
            for entry in list.iter().filter(|e| !e.is_empty() && e.as_bytes()[0] != 0) {
                put_cstr(s, entry.as_bytes());
            }
            s.put_u8(0);
        }
    }

    /// Length of [`Header::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let mut n = CountingSink(0);
        self.encode_to(&mut n);
        n.0
    }

    /// Decodes a header from the start of `bytes`, returning it and its encoded length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize), crate::CaptureError> {
        let mut input = crate::input::Input::new(bytes, 4096);
        let h = crate::reader::read_header(&mut input)?;
        Ok((h, input.offset() as usize))
    }
}

struct CountingSink(usize);
impl ByteSink for CountingSink {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}
