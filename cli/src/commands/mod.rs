pub mod parse;
pub mod run;
pub mod stats;
