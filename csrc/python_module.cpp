// The Python module slsam._C. Importing it loads this library, which runs the
// operator registrations (ops.cpp, cpu/, cuda/). No pybind11: the module is
// empty, so it builds against the stable (limited) Python API and one wheel
// serves every Python >= 3.10. C++ users link the same sources without it
// (CMakeLists.txt).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
