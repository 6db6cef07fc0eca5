//! Analyses of Memray captures (format version 13, read with `memray_capture`).
//!
//! * [`analyze_file`] / [`Analyzer`]: one streaming pass giving totals, the allocation
//!   size and allocator distributions, per-location and per-stack figures, the heap's
//!   high-water mark with what was live at it, and what was live at the end. Aggregated
//!   captures (`--aggregate`) yield their stored high-water-mark and leak rows.
//! * [`StackTable`]: Python stacks rebuilt from FRAME_PUSH/FRAME_POP and interned in a
//!   trie; line numbers come from `cpython::linetable`.
//! * [`Stats`]: `memray stats`, text and JSON as Memray 1.20 writes them.

pub mod compat;
pub mod engine;
mod error;
pub mod model;
pub mod render;
mod structures;

pub use compat::modules::{ModuleKind, ModuleResolver};
pub use engine::analysis::{analyze, analyze_file, Analysis, AnalyzeOptions, Analyzer, LocationKey, LocationUsage, StackTotals, Usage};
pub use error::ReportError;
pub use model::stacks::{FrameId, FrameKey, Location, LocationId, StackId, StackTable};
pub use render::stats::{ModuleTotals, Stats};
