// The Python module slsam._C. Importing it loads this library, which runs the
// operator registrations (ops.cpp, cpu/, cuda/). No pybind11: the module has
// one plain C function, so it builds against the stable (limited) Python API
// and one wheel serves every Python >= 3.10. C++ users link the same sources
// without it (CMakeLists.txt).
#include <Python.h>

namespace slsam::cpu {
const char* span_isa_name();
}

extern "C" {

// slsam._C.cpu_isa(): the target of the CPU loops in use ("avx2" or "baseline").
static PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(slsam::cpu::span_isa_name());
}

PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_isa", cpu_isa, METH_NOARGS, "Target of the CPU kernels' loops: avx2 or baseline."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
