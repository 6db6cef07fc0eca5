//! The interpreter's description of itself: `_Py_DebugOffsets`, at the start of
//! `_PyRuntime` from CPython 3.13 on (PEP 768's companion for out-of-process tools).
//!
//! The block is a cookie (`xdebugpy`), `PY_VERSION_HEX`, a free-threaded flag, then
//! sections of `uint64_t` offsets. Which sections and fields exist changes between minor
//! versions, so each known version's declaration is kept below as data, copied from its
//! `internal/pycore_debug_offsets.h` (3.14+) or `internal/pycore_runtime.h` (3.13).
//! A version newer than all of them is read with the newest declaration, and what is
//! read is then checked for plausibility (every offset inside its struct's size).
//!
//! Nothing here touches memory: callers read the bytes (the payload in-process, the
//! injector through `/proc/PID/mem`) and hand them over.

use crate::layout::{layout_for, FrameRoot, InstrPos, Layout};
use crate::version::{Version, NEWEST_TABLE_MINOR};
use crate::Error;

pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Sections of `_Py_DebugOffsets` in order, each `name: field field …`; every field a
/// `uint64_t`. Sections without a `size` field describe no struct of their own.
const SCHEMA_313: &str = "
runtime_state: size finalizing interpreters_head
interpreter_state: size id next threads_head gc imports_modules sysdict builtins ceval_gil gil_runtime_state gil_runtime_state_enabled gil_runtime_state_locked gil_runtime_state_holder
thread_state: size prev next interp current_frame thread_id native_thread_id datastack_chunk status
interpreter_frame: size previous executable instr_ptr localsplus owner
code_object: size filename name qualname linetable firstlineno argcount localsplusnames localspluskinds co_code_adaptive
pyobject: size ob_type
type_object: size tp_name tp_repr tp_flags
tuple_object: size ob_item ob_size
list_object: size ob_item ob_size
dict_object: size ma_keys ma_values
float_object: size ob_fval
long_object: size lv_tag ob_digit
bytes_object: size ob_size ob_sval
unicode_object: size state length asciiobject_size
gc: size collecting
";

const SCHEMA_314: &str = "
runtime_state: size finalizing interpreters_head
interpreter_state: size id next threads_head threads_main gc imports_modules sysdict builtins ceval_gil gil_runtime_state gil_runtime_state_enabled gil_runtime_state_locked gil_runtime_state_holder code_object_generation tlbc_generation
thread_state: size prev next interp current_frame thread_id native_thread_id datastack_chunk status
interpreter_frame: size previous executable instr_ptr localsplus owner stackpointer tlbc_index
code_object: size filename name qualname linetable firstlineno argcount localsplusnames localspluskinds co_code_adaptive co_tlbc
pyobject: size ob_type
type_object: size tp_name tp_repr tp_flags
tuple_object: size ob_item ob_size
list_object: size ob_item ob_size
set_object: size used table mask
dict_object: size ma_keys ma_values
float_object: size ob_fval
long_object: size lv_tag ob_digit
bytes_object: size ob_size ob_sval
unicode_object: size state length asciiobject_size
gc: size collecting
gen_object: size gi_name gi_iframe gi_frame_state
llist_node: next prev
debugger_support: eval_breaker remote_debugger_support remote_debugging_enabled debugger_pending_call debugger_script_path debugger_script_path_size
";

const SCHEMA_315: &str = "
runtime_state: size finalizing interpreters_head
interpreter_state: size id next threads_head threads_main gc imports_modules sysdict builtins ceval_gil gil_runtime_state gil_runtime_state_enabled gil_runtime_state_locked gil_runtime_state_holder code_object_generation tlbc_generation
thread_state: size prev next interp current_frame base_frame last_profiled_frame last_profiled_frame_seq thread_id native_thread_id datastack_chunk status holds_gil gil_requested current_exception exc_state
err_stackitem: exc_value
interpreter_frame: size previous executable instr_ptr localsplus owner stackpointer tlbc_index
code_object: size filename name qualname linetable firstlineno argcount localsplusnames localspluskinds co_code_adaptive co_tlbc
pyobject: size ob_type
type_object: size tp_name tp_repr tp_flags tp_basicsize tp_dictoffset
heap_type_object: size ht_cached_keys
tuple_object: size ob_item ob_size
list_object: size ob_item ob_size
set_object: size used table mask
dict_object: size ma_keys ma_values
float_object: size ob_fval
long_object: size lv_tag ob_digit
bytes_object: size ob_size ob_sval
unicode_object: size state length asciiobject_size compactunicodeobject_size
gc: size collecting frame generation_stats_size generation_stats
gen_object: size gi_name gi_iframe gi_frame_state
llist_node: next prev
debugger_support: eval_breaker remote_debugger_support remote_debugging_enabled debugger_pending_call debugger_script_path debugger_script_path_size
";

/// (minor version, declaration), oldest first.
const SCHEMAS: &[(u8, &str)] = &[(13, SCHEMA_313), (14, SCHEMA_314), (15, SCHEMA_315)];

/// Cookie, version and free-threaded flag.
const PREAMBLE: usize = 24;

/// Bytes to read from the start of `_PyRuntime` to cover any known declaration, with room
/// for a newer version that adds fields (`_PyRuntime` is hundreds of KiB, so reading this
/// much never leaves it).
pub const READ_SIZE: usize = 4096;

/// Where PEP 768's remote-debugging request goes (3.14+): byte offsets within the structs
/// named, all from the block except the eval-breaker bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDebugOffsets {
    /// `_PyRuntimeState._finalizing` (non-null once the runtime shuts down).
    pub runtime_finalizing: u64,
    /// `_PyRuntimeState.interpreters.head`: the main interpreter.
    pub interpreters_head: u64,
    /// `PyInterpreterState.threads.main`: the main thread's state, which lives as long as
    /// the interpreter (another thread's may be freed while we write to it).
    pub threads_main: u64,
    /// `PyInterpreterState.config.remote_debug` (an int: 0 when disabled by
    /// `PYTHON_DISABLE_REMOTE_DEBUG`, `-X disable-remote-debug` or the build).
    pub remote_debugging_enabled: u64,
    /// `PyThreadState.eval_breaker` (a uintptr_t of event bits).
    pub eval_breaker: u64,
    /// `PyThreadState.remote_debugger_support.debugger_pending_call` (an int32).
    pub pending_call: u64,
    /// `PyThreadState.remote_debugger_support.debugger_script_path` (a char array).
    pub script_path: u64,
    pub script_path_size: u64,
    /// `_PY_EVAL_PLEASE_STOP_BIT`, the event that makes the thread look at the request
    /// (`internal/pycore_ceval.h`: bit 5 in 3.14 and 3.15; not in the block).
    pub please_stop_bit: u64,
}

/// A parsed `_Py_DebugOffsets` block.
#[derive(Debug, Clone)]
pub struct DebugOffsets {
    pub version: Version,
    pub free_threaded: bool,
    /// Read with the declaration of an older version (the interpreter is newer than
    /// every declaration we have).
    pub newer_than_known: bool,
    fields: Vec<(&'static str, &'static str, u64)>,
}

fn schema_for(minor: u8) -> Option<(u8, &'static str)> {
    SCHEMAS.iter().rev().find(|(m, _)| *m <= minor).copied()
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl DebugOffsets {
    /// Parses the first bytes of `_PyRuntime` (at least the block; `READ_SIZE` is enough).
    pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, Error> {
        let bad = |detail: String| Error::BadDebugOffsets { detail };
        if bytes.get(..8) != Some(&COOKIE[..]) {
            return Err(bad("_PyRuntime does not start with the \"xdebugpy\" cookie".into()));
        }
        let hex = u64_at(bytes, 8).ok_or_else(|| bad("the block is cut short".into()))?;
        let version = Version::from_hex(hex);
        let free_threaded = u64_at(bytes, 16).ok_or_else(|| bad("the block is cut short".into()))? != 0;
        if version.major != 3 || !version.has_debug_offsets() {
            return Err(bad(format!("its version field {hex:#x} is not a CPython 3.13 or later")));
        }
        let (schema_minor, schema) = schema_for(version.minor).ok_or_else(|| bad(format!("no declaration for {version}")))?;
        let mut fields = Vec::new();
        let mut at = PREAMBLE;
        for line in schema.lines().filter(|l| !l.trim().is_empty()) {
            let (section, names) = line.split_once(':').unwrap_or((line, ""));
            for name in names.split_whitespace() {
                let value = u64_at(bytes, at).ok_or_else(|| bad(format!("the block is cut short at {section}.{name}")))?;
                fields.push((section.trim(), name, value));
                at += 8;
            }
        }
        Ok(DebugOffsets { version, free_threaded, newer_than_known: version.minor > schema_minor, fields })
    }

    /// The value of `section.field` (`("thread_state", "current_frame")`), if declared.
    pub fn get(&self, section: &str, field: &str) -> Option<u64> {
        self.fields.iter().find(|(s, f, _)| *s == section && *f == field).map(|&(_, _, v)| v)
    }

    /// PEP 768's fields, when this interpreter has them (3.14+).
    pub fn remote_debug(&self) -> Option<RemoteDebugOffsets> {
        if !self.version.has_remote_debugging() {
            return None;
        }
        let get = |section, field| self.offset(section, field).ok().map(|v| v as u64);
        let support = get("debugger_support", "remote_debugger_support")?;
        let offsets = RemoteDebugOffsets {
            runtime_finalizing: get("runtime_state", "finalizing")?,
            interpreters_head: get("runtime_state", "interpreters_head")?,
            threads_main: get("interpreter_state", "threads_main")?,
            remote_debugging_enabled: get("debugger_support", "remote_debugging_enabled")?,
            eval_breaker: get("debugger_support", "eval_breaker")?,
            pending_call: support.checked_add(get("debugger_support", "debugger_pending_call")?)?,
            script_path: support.checked_add(get("debugger_support", "debugger_script_path")?)?,
            script_path_size: self.get("debugger_support", "debugger_script_path_size").filter(|&n| (64..=1 << 16).contains(&n))?,
            please_stop_bit: 1 << 5,
        };
        // These are written into the process: every one must lie inside the structs the
        // block says they belong to, or nothing is written at all.
        let tstate = self.get("thread_state", "size")?;
        let interp = self.get("interpreter_state", "size")?;
        let inside = |at: u64, len: u64, size: u64| at.checked_add(len).is_some_and(|end| end <= size);
        let fits = inside(offsets.eval_breaker, 8, tstate)
            && inside(offsets.pending_call, 4, tstate)
            && inside(offsets.script_path, offsets.script_path_size, tstate)
            && inside(offsets.remote_debugging_enabled, 4, interp)
            && inside(offsets.threads_main, 8, interp);
        fits.then_some(offsets)
    }

    /// An offset inside its struct: present, and below the section's `size` when it has
    /// one. Anything else means the block was misread.
    fn offset(&self, section: &'static str, field: &'static str) -> Result<usize, Error> {
        let missing = || Error::MissingField { version: self.version, field: format!("{section}.{field}") };
        let value = self.get(section, field).ok_or_else(missing)?;
        match self.get(section, "size") {
            Some(size) if value >= size || size > 1 << 20 => Err(missing()),
            _ => usize::try_from(value).map_err(|_| missing()),
        }
    }

    /// The layout to read this interpreter's memory with.
    ///
    /// Every offset the block provides is taken from it. The rest (rules and fields the
    /// block does not describe) come from the table row of the same version, and when
    /// there is such a row, each offset the block provides must equal the row's: a
    /// difference means a patched or unusual build, refused rather than misread. A
    /// version newer than the table uses the newest row for what the block lacks.
    pub fn layout(&self) -> Result<Layout, Error> {
        if self.free_threaded {
            return Err(Error::FreeThreaded { version: self.version });
        }
        let row = layout_for(self.version.major, self.version.minor);
        let mut layout = *row.or_else(|| layout_for(3, NEWEST_TABLE_MINOR)).expect("the newest row exists");
        layout.minor = self.version.minor;
        if row.is_none() {
            // Not among the debug offsets: unknown for a version newer than the table.
            layout.tstate_tracing = None;
            layout.tstate_profilefunc = None;
        }

        let mut checks: Vec<(&'static str, usize, usize)> = Vec::new();
        let mut take = |name: &'static str, slot: &mut usize, value: usize| {
            checks.push((name, *slot, value));
            *slot = value;
        };
        let current_frame = self.offset("thread_state", "current_frame")?;
        match &mut layout.tstate_frame {
            FrameRoot::Direct(o) => take("thread_state.current_frame", o, current_frame),
            FrameRoot::ViaCFrame { .. } => unreachable!("3.13+ rows keep the frame in the thread state"),
        }
        take("thread_state.interp", &mut layout.tstate_interp, self.offset("thread_state", "interp")?);
        take("interpreter_frame.previous", &mut layout.frame_back, self.offset("interpreter_frame", "previous")?);
        take("interpreter_frame.executable", &mut layout.frame_code, self.offset("interpreter_frame", "executable")?);
        if let InstrPos::Pointer(o) = &mut layout.frame_instr {
            take("interpreter_frame.instr_ptr", o, self.offset("interpreter_frame", "instr_ptr")?);
        }
        if let Some(o) = &mut layout.frame_owner {
            take("interpreter_frame.owner", o, self.offset("interpreter_frame", "owner")?);
        }
        take("code_object.filename", &mut layout.code_filename, self.offset("code_object", "filename")?);
        take("code_object.name", &mut layout.code_name, self.offset("code_object", "name")?);
        take("code_object.linetable", &mut layout.code_linetable, self.offset("code_object", "linetable")?);
        take("code_object.firstlineno", &mut layout.code_firstlineno, self.offset("code_object", "firstlineno")?);
        // co_code_adaptive is the variable-length tail: it may equal the struct's size.
        let adaptive = self.get("code_object", "co_code_adaptive").and_then(|v| usize::try_from(v).ok());
        let adaptive = adaptive
            .filter(|&v| v <= 1 << 20)
            .ok_or_else(|| Error::MissingField { version: self.version, field: "code_object.co_code_adaptive".into() })?;
        if let Some(o) = &mut layout.code_adaptive {
            take("code_object.co_code_adaptive", o, adaptive);
        }
        take("pyobject.ob_type", &mut layout.ob_type, self.offset("pyobject", "ob_type")?);
        take("bytes_object.ob_size", &mut layout.bytes_size, self.offset("bytes_object", "ob_size")?);
        take("bytes_object.ob_sval", &mut layout.bytes_data, self.offset("bytes_object", "ob_sval")?);
        take("unicode_object.state", &mut layout.str_state, self.offset("unicode_object", "state")?);
        take("unicode_object.length", &mut layout.str_length, self.offset("unicode_object", "length")?);
        let ascii_size = self.get("unicode_object", "asciiobject_size").and_then(|v| usize::try_from(v).ok());
        if let Some(size) = ascii_size.filter(|&s| s > 0 && s <= 4096) {
            take("unicode_object.asciiobject_size", &mut layout.str_ascii_data, size);
        }
        let compact_size = self.get("unicode_object", "compactunicodeobject_size").and_then(|v| usize::try_from(v).ok());
        if let Some(size) = compact_size.filter(|&s| s > 0 && s <= 4096) {
            take("unicode_object.compactunicodeobject_size", &mut layout.str_compact_data, size);
        }

        if row.is_some() {
            if let Some(&(field, table, runtime)) = checks.iter().find(|(_, table, runtime)| table != runtime) {
                return Err(Error::Mismatch { version: self.version, field, table, runtime });
            }
        }
        Ok(layout)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A block as `version`'s interpreter would write it, with the table row's offsets
    /// (`free_threaded` 0), built from the declaration so the test does not repeat it.
    pub(crate) fn block_for(minor: u8, micro: u8) -> Vec<u8> {
        let row = layout_for(3, minor.min(NEWEST_TABLE_MINOR)).unwrap();
        let (_, schema) = schema_for(minor).unwrap();
        let mut out = COOKIE.to_vec();
        out.extend_from_slice(&(Version::new(3, minor, micro).hex() as u64).to_ne_bytes());
        out.extend_from_slice(&0u64.to_ne_bytes());
        for line in schema.lines().filter(|l| !l.trim().is_empty()) {
            let (section, names) = line.split_once(':').unwrap();
            for name in names.split_whitespace() {
                let value = match (section, name) {
                    (_, "size") => 4000,
                    ("thread_state", "current_frame") => match row.tstate_frame {
                        FrameRoot::Direct(o) => o,
                        _ => unreachable!(),
                    },
                    ("thread_state", "interp") => row.tstate_interp,
                    ("interpreter_frame", "previous") => row.frame_back,
                    ("interpreter_frame", "executable") => row.frame_code,
                    ("interpreter_frame", "instr_ptr") => match row.frame_instr {
                        InstrPos::Pointer(o) => o,
                        _ => unreachable!(),
                    },
                    ("interpreter_frame", "owner") => row.frame_owner.unwrap(),
                    ("code_object", "filename") => row.code_filename,
                    ("code_object", "name") => row.code_name,
                    ("code_object", "linetable") => row.code_linetable,
                    ("code_object", "firstlineno") => row.code_firstlineno,
                    ("code_object", "co_code_adaptive") => row.code_adaptive.unwrap(),
                    ("pyobject", "ob_type") => row.ob_type,
                    ("bytes_object", "ob_size") => row.bytes_size,
                    ("bytes_object", "ob_sval") => row.bytes_data,
                    ("unicode_object", "state") => row.str_state,
                    ("unicode_object", "length") => row.str_length,
                    ("unicode_object", "asciiobject_size") => row.str_ascii_data,
                    ("unicode_object", "compactunicodeobject_size") => row.str_compact_data,
                    _ => 8,
                };
                out.extend_from_slice(&(value as u64).to_ne_bytes());
            }
        }
        out
    }

    fn set(block: &mut [u8], section: &str, field: &str, value: u64) {
        let (_, schema) = schema_for(Version::from_hex(u64_at(block, 8).unwrap()).minor).unwrap();
        let mut at = PREAMBLE;
        for line in schema.lines().filter(|l| !l.trim().is_empty()) {
            let (s, names) = line.split_once(':').unwrap();
            for name in names.split_whitespace() {
                if s == section && name == field {
                    block[at..at + 8].copy_from_slice(&value.to_ne_bytes());
                    return;
                }
                at += 8;
            }
        }
        panic!("no {section}.{field}");
    }

    #[test]
    fn read_size_covers_every_declaration() {
        for &(_, schema) in SCHEMAS {
            assert!(PREAMBLE + 8 * schema.split_whitespace().filter(|w| !w.ends_with(':')).count() <= READ_SIZE / 2);
        }
    }

    #[test]
    fn a_block_that_agrees_with_the_table_gives_the_table_row() {
        for minor in 13..=NEWEST_TABLE_MINOR {
            let parsed = DebugOffsets::parse(&block_for(minor, 2)).unwrap();
            assert_eq!(parsed.version, Version::new(3, minor, 2));
            assert!(!parsed.newer_than_known);
            assert_eq!(&parsed.layout().unwrap(), layout_for(3, minor).unwrap(), "3.{minor}");
        }
    }

    #[test]
    fn a_block_that_differs_from_the_table_is_refused_naming_the_field() {
        let mut block = block_for(14, 0);
        set(&mut block, "code_object", "filename", 120);
        let err = DebugOffsets::parse(&block).unwrap().layout().unwrap_err();
        assert!(matches!(err, Error::Mismatch { field: "code_object.filename", table: 112, runtime: 120, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("code_object.filename") && text.contains("3.14"), "{text}");
    }

    #[test]
    fn a_version_newer_than_the_table_takes_its_offsets_from_the_block() {
        let mut block = block_for(16, 0);
        set(&mut block, "code_object", "filename", 128);
        set(&mut block, "thread_state", "current_frame", 80);
        set(&mut block, "interpreter_frame", "owner", 76);
        let parsed = DebugOffsets::parse(&block).unwrap();
        assert!(parsed.newer_than_known);
        let layout = parsed.layout().unwrap();
        assert_eq!(layout.minor, 16);
        assert_eq!(layout.code_filename, 128);
        assert_eq!(layout.tstate_frame, FrameRoot::Direct(80));
        assert_eq!(layout.frame_owner, Some(76));
        // What the block lacks comes from the newest row.
        assert_eq!(layout.code_firsttraceable, layout_for(3, NEWEST_TABLE_MINOR).unwrap().code_firsttraceable);
    }

    #[test]
    fn a_newer_version_whose_block_does_not_cover_a_field_is_refused_naming_it() {
        let mut block = block_for(16, 0);
        set(&mut block, "interpreter_frame", "instr_ptr", 4000); // outside the struct
        let err = DebugOffsets::parse(&block).unwrap().layout().unwrap_err();
        assert!(matches!(&err, Error::MissingField { field, .. } if field == "interpreter_frame.instr_ptr"), "{err:?}");
        assert!(err.to_string().contains("interpreter_frame.instr_ptr"));
    }

    /// The blocks of real interpreters (the first 4 KiB of `_PyRuntime` as initialised
    /// data in CPython 3.13.0's libpython and Debian's 3.14.10 and 3.15.2 executables;
    /// the `debug_offsets` fuzz target starts from the same bytes) give their table rows
    /// and PEP 768's offsets.
    #[test]
    fn real_blocks_agree_with_the_table() {
        let blocks: [(u8, &[u8]); 3] = [
            (13, include_bytes!("../tests/fixtures/debug_offsets/cpython-3.13.bin")),
            (14, include_bytes!("../tests/fixtures/debug_offsets/cpython-3.14.bin")),
            (15, include_bytes!("../tests/fixtures/debug_offsets/cpython-3.15.bin")),
        ];
        for (minor, block) in blocks {
            let parsed = DebugOffsets::parse(block).unwrap();
            assert_eq!((parsed.version.major, parsed.version.minor, parsed.newer_than_known), (3, minor, false));
            assert_eq!(&parsed.layout().unwrap(), layout_for(3, minor).unwrap(), "3.{minor}");
            let rd = parsed.remote_debug();
            assert_eq!(rd.is_some(), minor >= 14, "3.{minor}");
            if let Some(rd) = rd {
                assert_eq!((rd.script_path_size, rd.please_stop_bit), (512, 32));
                assert_eq!(rd.script_path, rd.pending_call + 4, "char path[] follows int32_t pending_call");
            }
        }
    }

    #[test]
    fn remote_debugging_fields_from_3_14_on() {
        assert!(DebugOffsets::parse(&block_for(13, 0)).unwrap().remote_debug().is_none());
        let mut block = block_for(14, 10);
        set(&mut block, "debugger_support", "remote_debugger_support", 304);
        set(&mut block, "debugger_support", "debugger_pending_call", 0);
        set(&mut block, "debugger_support", "debugger_script_path", 4);
        set(&mut block, "debugger_support", "debugger_script_path_size", 512);
        let rd = DebugOffsets::parse(&block).unwrap().remote_debug().unwrap();
        assert_eq!((rd.pending_call, rd.script_path, rd.script_path_size, rd.please_stop_bit), (304, 308, 512, 32));
        set(&mut block, "debugger_support", "debugger_script_path_size", 0);
        assert!(DebugOffsets::parse(&block).unwrap().remote_debug().is_none());
        // A request area that would reach past the thread state is never used.
        set(&mut block, "debugger_support", "debugger_script_path_size", 512);
        set(&mut block, "debugger_support", "remote_debugger_support", 3900);
        assert!(DebugOffsets::parse(&block).unwrap().remote_debug().is_none());
    }

    #[test]
    fn free_threaded_and_garbage_blocks_are_refused() {
        let mut block = block_for(14, 0);
        block[16] = 1;
        assert!(matches!(DebugOffsets::parse(&block).unwrap().layout(), Err(Error::FreeThreaded { .. })));
        assert!(matches!(DebugOffsets::parse(b"xdebugpz"), Err(Error::BadDebugOffsets { .. })));
        assert!(matches!(DebugOffsets::parse(&block_for(14, 0)[..100]), Err(Error::BadDebugOffsets { .. })));
        let mut old = block_for(14, 0);
        old[8..16].copy_from_slice(&0x030C_01F0u64.to_ne_bytes());
        assert!(matches!(DebugOffsets::parse(&old), Err(Error::BadDebugOffsets { .. })));
    }
}
