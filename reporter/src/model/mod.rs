//! What a capture describes, rebuilt from its records: Python stacks and locations
//! (`stacks`), native stacks and their symbols (`native`).

pub mod native;
pub mod stacks;
