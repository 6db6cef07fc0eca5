//! Analyses and renderers of memray captures.
