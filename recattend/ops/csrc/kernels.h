// CPU kernels of recattend.ops.kernels, compiled into one extension (bindings.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

// Runs task(i) for every i in [0, tasks) on at::get_num_threads() OpenMP threads (serially when
// compiled without OpenMP). Not at::parallel_for: its inline first-use set-up, compiled into this
// extension, would reset every calling thread to the process's thread count, and the parallel
// backward's worker threads run with one thread each (recattend.ops.step_backward).
template <typename Task>
void parallel_tasks(int64_t tasks, const Task& task) {
  const int threads = at::get_num_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1 && tasks > 1) schedule(static)
  for (int64_t i = 0; i < tasks; ++i) task(i);
}

// body(begin, end) over [0, items) in ranges of `grain` items, in parallel.
template <typename Body>
void parallel_ranges(int64_t items, int64_t grain, const Body& body) {
  parallel_tasks((items + grain - 1) / grain,
                 [&](int64_t i) { body(i * grain, std::min(items, (i + 1) * grain)); });
}

// Fused BatchNorm + ReLU (+ 2x2 max-pooling when pool = 2) with batch statistics
// (batchnorm_relu.cpp): y, mean, biased variance.
std::vector<at::Tensor> forward_train(at::Tensor x, at::Tensor weight, at::Tensor bias,
                                      at::Tensor shift, double eps, int64_t pool);
// With running statistics.
at::Tensor forward_eval(at::Tensor x, at::Tensor weight, at::Tensor bias, at::Tensor running_mean,
                        at::Tensor running_var, double eps, int64_t pool);
// Gradients of forward_train's y: x, weight, bias.
std::vector<at::Tensor> backward_train(at::Tensor grad_y, at::Tensor x, at::Tensor mean,
                                       at::Tensor var, at::Tensor weight, at::Tensor bias,
                                       double eps, int64_t pool);

// 3x3 convolution to 8 channels (conv3x3.cpp). x (N, C, H, W) channels-last; taps (3, 3 C, 8),
// taps[kh][kw C + ci][co] = weight[co][ci][kh][kw]; bias (8) -> (N, 8, H, W) channels-last.
at::Tensor conv3x3_forward(at::Tensor x, at::Tensor taps, at::Tensor bias);
// Gradients of conv3x3_forward's output with respect to taps (3, 3 C, 8) and bias (8).
std::vector<at::Tensor> conv3x3_weight_grad(at::Tensor x, at::Tensor grad_y);
