//! Per-version CPython struct layouts, as data: everything version-specific that the
//! payload's frame walker and code-object readers need. From 3.13 on, the interpreter's
//! own `_Py_DebugOffsets` are read as well and checked against (or, for a version newer
//! than this table, used instead of) these rows: see `debug_offsets`.
//!
//! Only 64-bit, non-debug, GIL (not free-threaded) builds are described.
//!
//! 3.14 and 3.15 were checked by compiling `offsetof()` probes against the headers of
//! Debian's `libpython3.14-dev` 3.14.10 and `libpython3.15-dev` 3.15.2 (with
//! `Py_BUILD_CORE`, including `internal/pycore_interpframe_structs.h`); the end-to-end
//! suite repeats that check against every interpreter's own headers
//! (`tests/test_cpython_layouts.py`).
//!
//! How the tables were checked: `gdb -batch -ex 'ptype /o struct _ts'
//! -ex 'ptype /o struct _frame'` (3.8-3.10) or `... struct _PyCFrame` and
//! `... struct _PyInterpreterFrame` (3.11+), plus `ptype /o PyCodeObject`,
//! `ptype /o PyASCIIObject`, `ptype /o PyCompactUnicodeObject`, `ptype /o PyBytesObject`,
//! `ptype /o PyObject` and `ptype enum _frameowner`, run against the DWARF of
//! `$(pyenv root)/versions/3.X.Y/lib/libpython3.X.so` for 3.8.18, 3.9.18, 3.10.13, 3.11.7,
//! 3.12.1 and 3.13.0. The 3.11+ rules (instruction offset, entry frame) were checked with
//! `disassemble PyFrame_GetLasti` / `disassemble _PyFrame_IsEntryFrame` on the same
//! libraries, and the incomplete-frame rule against `_PyFrame_IsIncomplete` in each
//! version's installed `include/python3.X/internal/pycore_frame.h`.

/// Where the thread state keeps its innermost frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRoot {
    /// A frame pointer stored directly in PyThreadState at this offset
    /// (3.8-3.10 `frame`, 3.13 `current_frame`).
    Direct(usize),
    /// 3.11-3.12: `tstate->cframe` at `cframe`, then `cframe->current_frame` at `current`.
    ViaCFrame { cframe: usize, current: usize },
}

/// How a frame records where it is in its bytecode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrPos {
    /// An `int f_lasti` at this offset, reported as is. Its unit is bytes on 3.8/3.9 and
    /// code units (2 bytes) on 3.10, exactly as Memray records it.
    Lasti(usize),
    /// A `_Py_CODEUNIT*` at this offset (3.11-3.12 `prev_instr`, 3.13 `instr_ptr`), turned
    /// into a byte offset from the code object's `co_code_adaptive` the way
    /// `PyFrame_GetLasti` does (-1 when before the first instruction).
    Pointer(usize),
}

/// How Memray's `is_entry_frame` flag is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRule {
    /// Before 3.11 every Python frame has its own C-level eval call: always true
    /// (Memray 1.20 writes 1 for every frame on 3.9/3.10).
    Always,
    /// 3.11: the frame's `bool is_entry` at this offset.
    Flag(usize),
    /// 3.12+: the previous frame exists and is owned by C (a shim/entry frame).
    PreviousOwnedByC,
}

/// Offsets (in bytes) and rules for one CPython minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub major: u8,
    pub minor: u8,

    // PyObject
    pub ob_type: usize,

    // PyThreadState
    pub tstate_frame: FrameRoot,
    /// `interp`: the thread's `PyInterpreterState*`.
    pub tstate_interp: usize,
    /// `int tracing`: non-zero while a trace or profile function (or a sys.monitoring
    /// callback) runs on the thread, when the interpreter delivers no events. None for a
    /// version newer than the table (its debug offsets do not describe the field).
    pub tstate_tracing: Option<usize>,
    /// `Py_tracefunc c_profilefunc`: the thread's C-level profile function, if any (None
    /// for a version newer than the table).
    pub tstate_profilefunc: Option<usize>,

    // Frame: PyFrameObject (3.8-3.10) or _PyInterpreterFrame (3.11+).
    /// `f_back` / `previous`.
    pub frame_back: usize,
    /// `f_code`, or 3.13+ `f_executable` (which may hold a non-code object).
    pub frame_code: usize,
    /// Tag bits to clear from the code slot: 3.14+ `f_executable` is a `_PyStackRef`
    /// (`Py_TAG_BITS`: 1 on 3.14, 3 on 3.15); 0 before.
    pub frame_code_tag: usize,
    pub frame_instr: InstrPos,
    /// `char owner` (3.11+). Frames are skipped the way `_PyFrame_IsIncomplete` does.
    pub frame_owner: Option<usize>,
    pub entry: EntryRule,
    /// `FRAME_OWNED_BY_GENERATOR`.
    pub owned_by_generator: u8,
    /// 3.12+: owner values from this one up mark frames that belong to C, not Python
    /// (`_PyFrame_IsIncomplete`'s first test): 3.12/3.13 `FRAME_OWNED_BY_CSTACK` = 3;
    /// 3.14 `FRAME_OWNED_BY_INTERPRETER` = 3 and `FRAME_OWNED_BY_CSTACK` = 4;
    /// 3.15 `FRAME_OWNED_BY_INTERPRETER` = 3.
    pub first_c_owner: Option<u8>,

    // PyCodeObject
    pub code_firstlineno: usize,
    pub code_filename: usize,
    pub code_name: usize,
    /// `co_lnotab` on 3.8/3.9, `co_linetable` on 3.10+ (a bytes object).
    pub code_linetable: usize,
    /// Start of `co_code_adaptive` (3.11+): instruction pointers are relative to it.
    pub code_adaptive: Option<usize>,
    /// `int _co_firsttraceable` (3.11+), in code units.
    pub code_firsttraceable: Option<usize>,

    // str: PyASCIIObject / PyCompactUnicodeObject
    pub str_length: usize,
    /// The 32-bit `state` bit field.
    pub str_state: usize,
    pub str_kind_shift: u32,
    pub str_compact_bit: u32,
    pub str_ascii_bit: u32,
    /// Data of a compact ASCII string: `sizeof(PyASCIIObject)`.
    pub str_ascii_data: usize,
    /// Data of a compact non-ASCII string: `sizeof(PyCompactUnicodeObject)`.
    pub str_compact_data: usize,
    pub str_utf8_length: usize,
    pub str_utf8: usize,

    // bytes
    pub bytes_size: usize,
    pub bytes_data: usize,
}

// Fields that did not move in 3.8-3.13 (checked in every version's ptype output):
// PyObject.ob_type 8; PyVarObject.ob_size 16; PyBytesObject.ob_sval 32;
// PyASCIIObject.length 16, .state 32 with kind bits 2-4, compact bit 5, ascii bit 6.
const OB_TYPE: usize = 8;
const BYTES_SIZE: usize = 16;
const BYTES_DATA: usize = 32;
const STR_LENGTH: usize = 16;
const STR_STATE: usize = 32;
const KIND_SHIFT: u32 = 2;
const COMPACT_BIT: u32 = 5;
const ASCII_BIT: u32 = 6;

/// 3.8.18: `_ts.interp` 16 (in every version), `frame` 24, `tracing` 44 (44 up to 3.12, 60 on 3.13/3.14, 64 on 3.15),
/// `c_profilefunc` 56 (64 on 3.11/3.12, 80 on 3.13/3.14, 104 on 3.15); `_frame.f_back` 24, `f_code` 32, `f_lasti` 104 (bytes);
/// `PyCodeObject.co_firstlineno` 40, `co_filename` 104, `co_name` 112, `co_lnotab` 120;
/// `PyASCIIObject` 48 bytes (has `wstr`), `PyCompactUnicodeObject` 72 bytes with
/// `utf8_length` 48 and `utf8` 56.
pub static PY38: Layout = Layout {
    major: 3,
    minor: 8,
    ob_type: OB_TYPE,
    tstate_frame: FrameRoot::Direct(24),
    tstate_interp: 16,
    tstate_tracing: Some(44),
    tstate_profilefunc: Some(56),
    frame_back: 24,
    frame_code: 32,
    frame_code_tag: 0,
    frame_instr: InstrPos::Lasti(104),
    frame_owner: None,
    entry: EntryRule::Always,
    owned_by_generator: 0,
    first_c_owner: None,
    code_firstlineno: 40,
    code_filename: 104,
    code_name: 112,
    code_linetable: 120,
    code_adaptive: None,
    code_firsttraceable: None,
    str_length: STR_LENGTH,
    str_state: STR_STATE,
    str_kind_shift: KIND_SHIFT,
    str_compact_bit: COMPACT_BIT,
    str_ascii_bit: ASCII_BIT,
    str_ascii_data: 48,
    str_compact_data: 72,
    str_utf8_length: 48,
    str_utf8: 56,
    bytes_size: BYTES_SIZE,
    bytes_data: BYTES_DATA,
};

/// 3.9.18: identical offsets to 3.8 in every struct used here (ptype output compared).
pub static PY39: Layout = Layout { minor: 9, ..PY38 };

/// 3.10.13: `_ts.frame` 24; `_frame.f_back` 24, `f_code` 32, `f_lasti` 96 (now counts
/// code units, not bytes); `PyCodeObject.co_linetable` 120 (replaces `co_lnotab`, same slot).
pub static PY310: Layout = Layout { minor: 10, frame_instr: InstrPos::Lasti(96), ..PY38 };

/// 3.11.7 (and Debian's 3.11.2, whose exported `PyThreadState_GetFrame`,
/// `PyFrame_GetLasti` and `_PyFrame_IsEntryFrame` disassemble to the same offsets):
/// `_ts.cframe` 56, `_PyCFrame.current_frame` 8; `_PyInterpreterFrame.f_code` 32,
/// `previous` 48, `prev_instr` 56, `is_entry` 68, `owner` 69;
/// `PyCodeObject.co_firstlineno` 72, `co_filename` 112, `co_name` 120, `co_linetable` 136,
/// `_co_firsttraceable` 168, `co_code_adaptive` 184; str sizes as in 3.8.
pub static PY311: Layout = Layout {
    minor: 11,
    tstate_frame: FrameRoot::ViaCFrame { cframe: 56, current: 8 },
    tstate_profilefunc: Some(64),
    frame_back: 48,
    frame_code: 32,
    frame_instr: InstrPos::Pointer(56),
    frame_owner: Some(69),
    entry: EntryRule::Flag(68),
    owned_by_generator: 1,
    first_c_owner: None,
    code_firstlineno: 72,
    code_filename: 112,
    code_name: 120,
    code_linetable: 136,
    code_adaptive: Some(184),
    code_firsttraceable: Some(168),
    ..PY38
};

/// 3.12.1: `_ts.cframe` 56, `_PyCFrame.current_frame` 0; `_PyInterpreterFrame.f_code` 0,
/// `previous` 8, `prev_instr` 56, `owner` 70 (FRAME_OWNED_BY_CSTACK = 3);
/// `PyCodeObject.co_firstlineno` 68, `co_filename` 112, `co_name` 120, `co_linetable` 136,
/// `_co_firsttraceable` 176, `co_code_adaptive` 192; `wstr` is gone: `PyASCIIObject` is
/// 40 bytes, `PyCompactUnicodeObject` 56 with `utf8_length` 40 and `utf8` 48.
pub static PY312: Layout = Layout {
    minor: 12,
    tstate_frame: FrameRoot::ViaCFrame { cframe: 56, current: 0 },
    tstate_profilefunc: Some(64),
    frame_back: 8,
    frame_code: 0,
    frame_instr: InstrPos::Pointer(56),
    frame_owner: Some(70),
    entry: EntryRule::PreviousOwnedByC,
    owned_by_generator: 1,
    first_c_owner: Some(3),
    code_firstlineno: 68,
    code_filename: 112,
    code_name: 120,
    code_linetable: 136,
    code_adaptive: Some(192),
    code_firsttraceable: Some(176),
    str_ascii_data: 40,
    str_compact_data: 56,
    str_utf8_length: 40,
    str_utf8: 48,
    ..PY38
};

/// 3.13.0: `_ts.current_frame` 72 (no more cframe); `_PyInterpreterFrame.f_executable` 0,
/// `previous` 8, `instr_ptr` 56 (the current instruction), `owner` 70;
/// `PyCodeObject._co_firsttraceable` 184, `co_code_adaptive` 200, other code and str
/// offsets as in 3.12.
pub static PY313: Layout = Layout {
    minor: 13,
    tstate_frame: FrameRoot::Direct(72),
    tstate_tracing: Some(60),
    tstate_profilefunc: Some(80),
    code_adaptive: Some(200),
    code_firsttraceable: Some(184),
    ..PY312
};

/// 3.14.10: `_ts.current_frame` 72; `_PyInterpreterFrame.f_executable` 0 (a tagged
/// `_PyStackRef`, `Py_TAG_BITS` 1), `previous` 8, `instr_ptr` 56, `owner` 74
/// (`FRAME_OWNED_BY_INTERPRETER` 3, `FRAME_OWNED_BY_CSTACK` 4); `PyCodeObject`
/// `co_firstlineno` 68, `co_filename` 112, `co_name` 120, `co_linetable` 136,
/// `_co_firsttraceable` 192, `co_code_adaptive` 208; str and bytes as in 3.12.
pub static PY314: Layout =
    Layout { minor: 14, frame_code_tag: 1, frame_owner: Some(74), code_adaptive: Some(208), code_firsttraceable: Some(192), ..PY313 };

/// 3.15.2: the 3.14 offsets, with `Py_TAG_BITS` 3 (tagged ints) and no
/// `FRAME_OWNED_BY_CSTACK` (entry frames are `FRAME_OWNED_BY_INTERPRETER` 3).
pub static PY315: Layout = Layout { minor: 15, frame_code_tag: 3, tstate_tracing: Some(64), tstate_profilefunc: Some(104), ..PY314 };

impl Layout {
    /// Every offset and constant by the name of the C field it stands for, as
    /// `tests/helpers/layout_probe.c` prints them from an interpreter's own headers
    /// (the end-to-end check of this table). Rules with no C counterpart are left out.
    pub fn fields(&self) -> Vec<(&'static str, usize)> {
        let mut out = vec![("ob_type", self.ob_type)];
        match self.tstate_frame {
            FrameRoot::Direct(o) => out.push(("tstate_frame", o)),
            FrameRoot::ViaCFrame { cframe, current } => out.extend([("tstate_cframe", cframe), ("cframe_current_frame", current)]),
        }
        out.push(("tstate_interp", self.tstate_interp));
        if let Some(o) = self.tstate_tracing {
            out.push(("tstate_tracing", o));
        }
        if let Some(o) = self.tstate_profilefunc {
            out.push(("tstate_profilefunc", o));
        }
        out.extend([("frame_back", self.frame_back), ("frame_code", self.frame_code)]);
        match self.frame_instr {
            InstrPos::Lasti(o) => out.push(("frame_lasti", o)),
            InstrPos::Pointer(o) => out.push(("frame_instr_ptr", o)),
        }
        if let EntryRule::Flag(o) = self.entry {
            out.push(("frame_is_entry", o));
        }
        out.extend(self.frame_owner.map(|o| ("frame_owner", o)));
        if self.frame_owner.is_some() {
            out.push(("owned_by_generator", self.owned_by_generator as usize));
        }
        out.extend(self.first_c_owner.map(|o| ("first_c_owner", o as usize)));
        out.extend([
            ("code_firstlineno", self.code_firstlineno),
            ("code_filename", self.code_filename),
            ("code_name", self.code_name),
            ("code_linetable", self.code_linetable),
        ]);
        out.extend(self.code_adaptive.map(|o| ("code_adaptive", o)));
        out.extend(self.code_firsttraceable.map(|o| ("code_firsttraceable", o)));
        out.extend([
            ("str_length", self.str_length),
            ("str_state", self.str_state),
            ("str_ascii_data", self.str_ascii_data),
            ("str_compact_data", self.str_compact_data),
            ("str_utf8_length", self.str_utf8_length),
            ("str_utf8", self.str_utf8),
            ("bytes_size", self.bytes_size),
            ("bytes_data", self.bytes_data),
        ]);
        out
    }
}

/// The table row for a CPython version, if there is one.
pub fn layout_for(major: u8, minor: u8) -> Option<&'static Layout> {
    match (major, minor) {
        (3, 8) => Some(&PY38),
        (3, 9) => Some(&PY39),
        (3, 10) => Some(&PY310),
        (3, 11) => Some(&PY311),
        (3, 12) => Some(&PY312),
        (3, 13) => Some(&PY313),
        (3, 14) => Some(&PY314),
        (3, 15) => Some(&PY315),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_its_own_table() {
        for minor in 8..=15u8 {
            let l = layout_for(3, minor).expect("supported");
            assert_eq!((l.major, l.minor), (3, minor));
        }
        assert!(layout_for(3, 7).is_none());
        assert!(layout_for(3, 16).is_none());
        assert!(layout_for(2, 7).is_none());
    }

    #[test]
    fn interpreter_frames_have_what_the_walker_needs() {
        for minor in 11..=15u8 {
            let l = layout_for(3, minor).unwrap();
            assert!(l.frame_owner.is_some() && l.code_adaptive.is_some());
            assert!(l.code_firsttraceable.is_some());
            assert!(matches!(l.frame_instr, InstrPos::Pointer(_)));
        }
        for minor in 8..=10u8 {
            let l = layout_for(3, minor).unwrap();
            assert!(matches!(l.frame_instr, InstrPos::Lasti(_)));
            assert_eq!(l.entry, EntryRule::Always);
        }
    }
}
