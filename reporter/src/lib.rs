//! Analyses of Memray captures (format version 13, read with `memray_capture`).
//!
//! * [`analyze_file`] / [`Analyzer`]: one streaming pass giving totals, the allocation
//!   size and allocator distributions, per-location and per-stack figures, the heap's
//!   high-water mark with what was live at it, and what was live at the end. Aggregated
//!   captures (`--aggregate`) yield their stored high-water-mark and leak rows.
//! * [`StackTable`]: Python stacks rebuilt from FRAME_PUSH/FRAME_POP and interned in a
//!   trie; line numbers come from `cpython::linetable`.
//! * [`Stats`]: `memray stats`, text and JSON as Memray 1.20 writes them.

mod addrmap;
pub mod analysis;
mod error;
mod fasthash;
pub mod html;
pub mod live;
pub mod localtime;
pub mod modules;
pub mod native;
mod pipeline;
pub mod pyjson;
pub mod ranges;
pub mod records;
pub mod stacks;
pub mod stats;
pub mod stdhash;
pub mod stdorder;
pub mod summary;
pub mod temporal;
pub mod temporal_records;
pub mod temporary;
pub mod transform;
pub mod tree;

pub use analysis::{analyze, analyze_file, Analysis, AnalyzeOptions, Analyzer, LocationKey, LocationUsage, StackTotals, Usage};
pub use error::ReportError;
pub use modules::{ModuleKind, ModuleResolver};
pub use stacks::{FrameId, FrameKey, Location, LocationId, StackId, StackTable};
pub use stats::{ModuleTotals, Stats};
