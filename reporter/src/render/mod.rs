//! Output: the terminal reports (`stats`, `summary`, `tree`), other tools' formats
//! (`transform`), the HTML reports (`html`) and the live view (`live`), with the
//! formatting they share (`format`). The top layer: nothing below imports it.

pub mod format;
pub mod html;
pub mod live;
pub mod stats;
pub mod summary;
pub mod transform;
pub mod tree;
