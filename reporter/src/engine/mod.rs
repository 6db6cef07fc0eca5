//! Reading a capture and computing from it: the streaming pass and its two-thread split
//! (`analysis`, `pipeline`), counts in sampled captures (`estimates`), Memray's
//! allocation records (`records`), memory over time (`temporal`, `temporal_records`) and
//! temporary allocations (`temporary`). Uses the model, the structures and the compat
//! reproductions; knows nothing of output.

pub mod analysis;
pub mod estimates;
mod pipeline;
pub mod records;
pub mod temporal;
pub mod temporal_records;
pub mod temporary;
