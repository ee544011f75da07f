// The Python module of the CPU kernels (kernels.h). Every function runs without the GIL: the
// parallel backward (recattend.ops.step_backward) calls them from several threads at once.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("forward_train", &forward_train, no_gil);
  m.def("forward_eval", &forward_eval, no_gil);
  m.def("backward_train", &backward_train, no_gil);
  m.def("conv3x3_forward", &conv3x3_forward, no_gil);
  m.def("conv3x3_weight_grad", &conv3x3_weight_grad, no_gil);
}
