/*
 * Prints, from an interpreter's own headers, every offset and constant of the cpython
 * crate's layout table, one "name value" line each with the names of
 * cpython::Layout::fields(). Built per interpreter by tests/test_cpython_layouts.py:
 *   cc -I<include> -I<include>/internal -o probe layout_probe.c
 * CPython 3.8 to 3.15 (64-bit, GIL builds).
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX >= 0x030E0000
#include "internal/pycore_interpframe_structs.h"
#elif PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#endif

#define P(name, expr) printf("%s %zu\n", name, (size_t)(expr))

int main(void) {
    P("ob_type", offsetof(PyObject, ob_type));
    P("tstate_interp", offsetof(PyThreadState, interp));
    P("tstate_tracing", offsetof(PyThreadState, tracing));
    P("tstate_profilefunc", offsetof(PyThreadState, c_profilefunc));
#if PY_VERSION_HEX < 0x030B0000
    P("tstate_frame", offsetof(PyThreadState, frame));
    P("frame_back", offsetof(PyFrameObject, f_back));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_lasti", offsetof(PyFrameObject, f_lasti));
#else
#  if PY_VERSION_HEX < 0x030D0000
    P("tstate_cframe", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
    P("frame_code", offsetof(struct _PyInterpreterFrame, f_code));
    P("frame_instr_ptr", offsetof(struct _PyInterpreterFrame, prev_instr));
#  else
    P("tstate_frame", offsetof(PyThreadState, current_frame));
    P("frame_code", offsetof(struct _PyInterpreterFrame, f_executable));
    P("frame_instr_ptr", offsetof(struct _PyInterpreterFrame, instr_ptr));
#  endif
    P("frame_back", offsetof(struct _PyInterpreterFrame, previous));
#  if PY_VERSION_HEX < 0x030C0000
    P("frame_is_entry", offsetof(struct _PyInterpreterFrame, is_entry));
#  endif
    P("frame_owner", offsetof(struct _PyInterpreterFrame, owner));
    P("owned_by_generator", FRAME_OWNED_BY_GENERATOR);
#  if PY_VERSION_HEX >= 0x030E0000
    P("first_c_owner", FRAME_OWNED_BY_INTERPRETER);
#  elif PY_VERSION_HEX >= 0x030C0000
    P("first_c_owner", FRAME_OWNED_BY_CSTACK);
#  endif
#endif
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_name", offsetof(PyCodeObject, co_name));
#if PY_VERSION_HEX < 0x030A0000
    P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#else
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
#endif
#if PY_VERSION_HEX >= 0x030B0000
    P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("code_firsttraceable", offsetof(PyCodeObject, _co_firsttraceable));
#endif
    P("str_length", offsetof(PyASCIIObject, length));
    P("str_state", offsetof(PyASCIIObject, state));
    P("str_ascii_data", sizeof(PyASCIIObject));
    P("str_compact_data", sizeof(PyCompactUnicodeObject));
    P("str_utf8_length", offsetof(PyCompactUnicodeObject, utf8_length));
    P("str_utf8", offsetof(PyCompactUnicodeObject, utf8));
    P("bytes_size", offsetof(PyVarObject, ob_size));
    P("bytes_data", offsetof(PyBytesObject, ob_sval));
    return 0;
}
