//! Everything the payload knows about CPython's in-memory structures.
//! Owned by the layouts work: see layout.rs (per-version tables) and frames.rs (walker).
