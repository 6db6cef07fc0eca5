/* A CPython extension module for the native-stack tests.
 *
 * Each allocating function is noinline and allocates on a line the tests look
 * up by its marker comment ("ALLOC-LINE: name"), so a report can be checked for
 * the exact native function, file and line under the Python frame that called
 * it. Built by tests/native_build.py with the system compiler, -O0 -g and frame
 * pointers, against the headers of the interpreter under test.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

static void* volatile keep;

__attribute__((noinline)) static void* nativeext_leaf_malloc(size_t size)
{
    void* p = malloc(size); /* ALLOC-LINE: nativeext_leaf_malloc */
    keep = p;
    return p;
}

__attribute__((noinline)) static void* nativeext_middle(size_t size)
{
    void* p = nativeext_leaf_malloc(size); /* CALL-LINE: nativeext_middle */
    keep = p;
    return p;
}

/* alloc(size) -> address: leaks one malloc'd block through two C frames. */
static PyObject* nativeext_alloc(PyObject* self, PyObject* args)
{
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "n", &size)) {
        return NULL;
    }
    void* p = nativeext_middle((size_t)size);
    return PyLong_FromVoidPtr(p);
}

/* free(address) */
static PyObject* nativeext_free(PyObject* self, PyObject* args)
{
    PyObject* addr;
    if (!PyArg_ParseTuple(args, "O", &addr)) {
        return NULL;
    }
    void* p = PyLong_AsVoidPtr(addr);
    if (p == NULL && PyErr_Occurred()) {
        return NULL;
    }
    free(p);
    Py_RETURN_NONE;
}

/* call(fn, size): calls the Python callable fn from C, then allocates, so a
 * native frame sits between two Python frames in the hybrid stack. */
static PyObject* nativeext_call(PyObject* self, PyObject* args)
{
    PyObject* fn;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "On", &fn, &size)) {
        return NULL;
    }
    PyObject* res = PyObject_CallObject(fn, NULL);
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    void* p = nativeext_middle((size_t)size);
    return PyLong_FromVoidPtr(p);
}

extern size_t nativeext_vector_grow(size_t n);

/* vector(n) -> capacity: grows a std::vector<long> to n elements (C++, operator new). */
static PyObject* nativeext_vector(PyObject* self, PyObject* args)
{
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) {
        return NULL;
    }
    return PyLong_FromSize_t(nativeext_vector_grow((size_t)n));
}

static PyMethodDef methods[] = {
    {"alloc", nativeext_alloc, METH_VARARGS, "malloc(size) through two C frames; returns the address"},
    {"free", nativeext_free, METH_VARARGS, "free(address)"},
    {"call", nativeext_call, METH_VARARGS, "call fn(), then alloc(size)"},
    {"vector", nativeext_vector, METH_VARARGS, "grow a std::vector<long> to n elements"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nativeext", NULL, -1, methods};

PyMODINIT_FUNC PyInit_nativeext(void)
{
    return PyModule_Create(&module);
}
