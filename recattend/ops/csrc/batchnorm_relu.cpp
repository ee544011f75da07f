// Fused BatchNorm + ReLU for channels-last float32 CPU activations (recattend.ops.kernels).
//
// A channels-last (N, C, H, W) tensor is a flat array whose element i belongs to channel i % C.
// Every loop below walks that array in blocks of W lanes (W a multiple of C and of 16 floats, so a
// block is whole AVX-512 / AVX2 vectors and lane j always holds channel j % C): per-channel sums
// become per-lane sums and per-channel affine maps become per-lane ones, both vectorised by the
// compiler. Training makes two passes forward (statistics; normalise + ReLU) and two backward
// (gradient statistics; input gradient), recomputing the ReLU mask from x instead of storing y.
// PyTorch's own kernels make about twice as many passes and are slow for C < 16.
//
// With pool = 2 a 2x2 max-pooling (stride 2) follows the ReLU in the same pass: only the pooled
// output is written, and the backward pass finds each window's maximum again from x (the first
// one in row-major order, as PyTorch's max_pool2d) instead of reading stored indices. There the
// loops walk windows, channels innermost.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kGrain = 2048;  // blocks per parallel task
constexpr int kFlush = 256;       // blocks summed in float before adding to the double totals
constexpr int64_t kWindowRows = 8;  // pooled output rows per parallel task (pool = 2)

int lanes_for(int64_t channels) { return channels <= 16 ? 16 : (channels <= 32 ? 32 : 64); }

std::vector<float> tiled(const std::vector<float>& per_channel, int lanes) {
  std::vector<float> out(lanes);
  for (int j = 0; j < lanes; ++j) out[j] = per_channel[j % per_channel.size()];
  return out;
}

std::vector<float> to_vector(const at::Tensor& t) {
  auto c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Per-lane sums of a(i) and b(i) over blocks [0, blocks), accumulated in double.
template <int W, typename Terms>
void lane_sums(int64_t blocks, double* out, Terms terms) {
  float a[W] = {0}, b[W] = {0};
  double da[W] = {0}, db[W] = {0};
  int pending = 0;
  for (int64_t k = 0; k < blocks; ++k) {
    terms(k, a, b);
    if (++pending == kFlush) {
      pending = 0;
      for (int j = 0; j < W; ++j) { da[j] += a[j]; db[j] += b[j]; a[j] = b[j] = 0.f; }
    }
  }
  for (int j = 0; j < W; ++j) { out[j] += da[j] + a[j]; out[W + j] += db[j] + b[j]; }
}

// Runs body(first block, number of blocks, partials) over ranges of `grain` blocks in parallel and
// folds the per-range, per-lane partial sums (2 W each) into per-channel sums (2 C: first, second
// term), adding the ranges in order: the sums do not depend on the number of threads.
template <typename Body>
std::vector<double> channel_sums(int64_t blocks, int lanes, int64_t channels, Body body,
                                 int64_t grain = kGrain) {
  const int64_t ranges = (blocks + grain - 1) / grain;
  std::vector<double> partial(static_cast<size_t>(ranges) * 2 * lanes, 0.0);
  parallel_ranges(blocks, grain, [&](int64_t begin, int64_t end) {
    body(begin, end - begin, partial.data() + (begin / grain) * 2 * lanes);
  });
  std::vector<double> sums(2 * channels, 0.0);
  for (int64_t r = 0; r < ranges; ++r)
    for (int j = 0; j < lanes; ++j) {
      sums[j % channels] += partial[(r * 2) * lanes + j];
      sums[channels + j % channels] += partial[(r * 2 + 1) * lanes + j];
    }
  return sums;
}

// Calls body(std::integral_constant<int, W>) with the lane width W chosen at run time.
template <typename Body>
void with_lanes(int lanes, Body body) {
  if (lanes == 16) body(std::integral_constant<int, 16>{});
  else if (lanes == 32) body(std::integral_constant<int, 32>{});
  else body(std::integral_constant<int, 64>{});
}

void check_input(const at::Tensor& x, int64_t pool) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "batchnorm_relu: expected a channels-last float32 CPU tensor (N, C, H, W)");
  TORCH_CHECK(lanes_for(x.size(1)) % x.size(1) == 0 && x.numel() % lanes_for(x.size(1)) == 0,
              "batchnorm_relu: channels must divide 16, 32 or 64 and the size the lane width");
  TORCH_CHECK(pool == 1 || (pool == 2 && x.size(2) % 2 == 0 && x.size(3) % 2 == 0),
              "batchnorm_relu: pool must be 1, or 2 with an even height and width");
}

// Calls body(the window's four input rows, its output row) for every 2x2 window of pooled output
// rows [begin, end) of a channels-last (N, C, H, W) tensor: each "row" is the C floats of one
// pixel, the inputs in row-major order (top left, top right, bottom left, bottom right).
template <typename Body>
void for_windows(const float* x, int64_t begin, int64_t end, int64_t height, int64_t width,
                 int64_t channels, Body body) {
  const int64_t out_h = height / 2, out_w = width / 2, line = width * channels;
  for (int64_t row = begin; row < end; ++row) {
    const float* top = x + ((row / out_h) * height + 2 * (row % out_h)) * line;
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const float* p = top + 2 * ow * channels;
      body(p, p + channels, p + line, p + line + channels, (row * out_w + ow) * channels);
    }
  }
}

// x * scale + offset rounded once (std::fma), so the forward and backward passes, vectorised
// differently, agree exactly on which values are positive and which is a window's maximum.
inline float scaled(float x, float scale, float offset) { return std::fma(x, scale, offset); }

// A window's maximum of its four scaled values.
inline float window_max(float a0, float a1, float a2, float a3) {
  return std::max(std::max(a0, a1), std::max(a2, a3));
}

// Where a window's gradient goes: 1 for the first of its maxima in row-major order (PyTorch's
// max_pool2d takes the first of equal values) when that maximum passes the ReLU, 0 elsewhere.
// Branch-free, so the channel loops vectorise.
struct Shares {
  float s0, s1, s2, s3;
};

inline Shares gradient_shares(float a0, float a1, float a2, float a3) {
  const float best = window_max(a0, a1, a2, a3);
  const float on = best > 0.f ? 1.f : 0.f;
  const bool w0 = a0 == best, w1 = !w0 && a1 == best, w2 = !w0 && !w1 && a2 == best;
  const bool w3 = !(w0 || w1 || w2);
  return {w0 ? on : 0.f, w1 ? on : 0.f, w2 ? on : 0.f, w3 ? on : 0.f};
}

// y = max(x * scale + shift, 0) per channel, max-pooled over 2x2 windows when pool = 2.
at::Tensor affine_relu(const at::Tensor& x, const std::vector<float>& scale,
                       const std::vector<float>& shift, int64_t pool) {
  const float* xp = x.data_ptr<float>();
  if (pool == 2) {
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    auto y = at::empty({n, c, h / 2, w / 2},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
    float* yp = y.data_ptr<float>();
    const float* sc = scale.data();
    const float* sh = shift.data();
    parallel_ranges(n * (h / 2), kWindowRows, [&](int64_t begin, int64_t end) {
      for_windows(xp, begin, end, h, w, c,
                  [&](const float* x0, const float* x1, const float* x2, const float* x3,
                      int64_t out) {
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          const float best = window_max(scaled(x0[j], sc[j], sh[j]), scaled(x1[j], sc[j], sh[j]),
                                        scaled(x2[j], sc[j], sh[j]), scaled(x3[j], sc[j], sh[j]));
          yp[out + j] = std::max(best, 0.f);  // ReLU and maximum commute
        }
      });
    });
    return y;
  }
  const int lanes = lanes_for(x.size(1));
  const auto sc = tiled(scale, lanes), sh = tiled(shift, lanes);
  auto y = at::empty_like(x);
  float* yp = y.data_ptr<float>();
  with_lanes(lanes, [&](auto lanes_tag) {
    constexpr int W = decltype(lanes_tag)::value;
    parallel_ranges(x.numel() / W, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const float* in = xp + k * W;
        float* out = yp + k * W;
#pragma omp simd
        for (int j = 0; j < W; ++j) out[j] = std::max(in[j] * sc[j] + sh[j], 0.f);
      }
    });
  });
  return y;
}

// Per-channel scale = weight / sqrt(var + eps) and offset = bias - mean * scale: the one place
// they are computed, so the backward pass recomputes exactly the forward pass's ReLU mask.
struct Affine {
  std::vector<float> scale, offset, invstd;
};

Affine affine_from(const std::vector<float>& w, const std::vector<float>& b,
                   const std::vector<float>& mean, const std::vector<float>& var, double eps) {
  Affine out{std::vector<float>(w.size()), std::vector<float>(w.size()),
             std::vector<float>(w.size())};
  for (size_t c = 0; c < w.size(); ++c) {
    const double inv = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    out.invstd[c] = static_cast<float>(inv);
    out.scale[c] = static_cast<float>(w[c] * inv);
    out.offset[c] = static_cast<float>(b[c] - static_cast<double>(mean[c]) * w[c] * inv);
  }
  return out;
}

}  // namespace

// Training forward: returns (y, batch mean, biased batch variance). ``shift`` (C,), a rough mean
// (the caller's sample mean), is subtracted before summing: the one-pass variance
// E[(x - shift)^2] - E[x - shift]^2 then stays accurate when |mean| >> std.
std::vector<at::Tensor> forward_train(at::Tensor x, at::Tensor weight, at::Tensor bias,
                                      at::Tensor shift, double eps, int64_t pool) {
  check_input(x, pool);
  const int64_t channels = x.size(1), count = x.numel() / channels;
  const int lanes = lanes_for(channels);
  const float* xp = x.data_ptr<float>();
  const auto shift_lanes = tiled(to_vector(shift), lanes);
  const float* s = shift_lanes.data();
  std::vector<double> sums;
  with_lanes(lanes, [&](auto lanes_tag) {
    constexpr int W = decltype(lanes_tag)::value;
    sums = channel_sums(x.numel() / W, W, channels, [&](int64_t first, int64_t n, double* out) {
      lane_sums<W>(n, out, [&](int64_t k, float* a, float* b) {
        const float* in = xp + (first + k) * W;
#pragma omp simd
        for (int j = 0; j < W; ++j) { const float d = in[j] - s[j]; a[j] += d; b[j] += d * d; }
      });
    });
  });
  const auto w = to_vector(weight), b = to_vector(bias), sh = to_vector(shift);
  std::vector<float> m(channels), v(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double d = sums[c] / count;  // mean of x - shift
    m[c] = static_cast<float>(sh[c] + d);
    v[c] = static_cast<float>(std::max(sums[channels + c] / count - d * d, 0.0));
  }
  const Affine affine = affine_from(w, b, m, v, eps);
  auto mean = at::tensor(m, x.options()), var = at::tensor(v, x.options());
  return {affine_relu(x, affine.scale, affine.offset, pool), mean, var};
}

// Evaluation forward: y = relu((x - mean) / sqrt(var + eps) * weight + bias) with given statistics
// (then pooled).
at::Tensor forward_eval(at::Tensor x, at::Tensor weight, at::Tensor bias, at::Tensor mean,
                        at::Tensor var, double eps, int64_t pool) {
  check_input(x, pool);
  const Affine affine =
      affine_from(to_vector(weight), to_vector(bias), to_vector(mean), to_vector(var), eps);
  return affine_relu(x, affine.scale, affine.offset, pool);
}

// Training backward from dL/dy: returns (dL/dx, dL/dweight, dL/dbias). The ReLU mask (and with
// pool = 2 each window's maximum) is recomputed from x with the forward pass's scale and offset,
// so it matches the forward pass exactly.
std::vector<at::Tensor> backward_train(at::Tensor grad_y, at::Tensor x, at::Tensor mean,
                                       at::Tensor var, at::Tensor weight, at::Tensor bias,
                                       double eps, int64_t pool) {
  check_input(x, pool);
  const int64_t n = x.size(0), channels = x.size(1), h = x.size(2), width = x.size(3);
  TORCH_CHECK(grad_y.device().is_cpu() && grad_y.scalar_type() == at::kFloat &&
                  grad_y.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  grad_y.sizes() == at::IntArrayRef({n, channels, h / pool, width / pool}),
              "batchnorm_relu: grad_y must be a channels-last float32 CPU tensor shaped as y");
  const int64_t count = x.numel() / channels;
  const int lanes = lanes_for(channels);
  const auto w = to_vector(weight), m = to_vector(mean);
  const Affine affine = affine_from(w, to_vector(bias), m, to_vector(var), eps);
  const auto sc = tiled(affine.scale, lanes), of = tiled(affine.offset, lanes);
  const auto mu = tiled(m, lanes);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_y.data_ptr<float>();
  const int64_t windows_rows = n * (h / 2);
  std::vector<double> sums;  // sum of g, sum of g (x - mean), with g the gradient through the ReLU
  if (pool == 2) {
    sums = channel_sums(windows_rows, channels, channels, [&](int64_t first, int64_t rows,
                                                              double* out) {
      std::vector<float> sum_g(channels), sum_gx(channels);
      float* a = sum_g.data();
      float* b = sum_gx.data();
      for (int64_t row = first; row < first + rows; ++row) {  // one row in float, then double
        std::fill(sum_g.begin(), sum_g.end(), 0.f);
        std::fill(sum_gx.begin(), sum_gx.end(), 0.f);
        for_windows(xp, row, row + 1, h, width, channels,
                    [&](const float* x0, const float* x1, const float* x2, const float* x3,
                        int64_t o) {
#pragma omp simd
          for (int64_t j = 0; j < channels; ++j) {
            const Shares w = gradient_shares(
                scaled(x0[j], sc[j], of[j]), scaled(x1[j], sc[j], of[j]),
                scaled(x2[j], sc[j], of[j]), scaled(x3[j], sc[j], of[j]));
            const float g = gp[o + j];
            a[j] += g * (w.s0 + w.s1 + w.s2 + w.s3);
            b[j] += g * (w.s0 * (x0[j] - mu[j]) + w.s1 * (x1[j] - mu[j]) +
                         w.s2 * (x2[j] - mu[j]) + w.s3 * (x3[j] - mu[j]));
          }
        });
        for (int64_t j = 0; j < channels; ++j) { out[j] += a[j]; out[channels + j] += b[j]; }
      }
    }, kWindowRows);
  } else {
    with_lanes(lanes, [&](auto lanes_tag) {
      constexpr int W = decltype(lanes_tag)::value;
      sums = channel_sums(x.numel() / W, W, channels, [&](int64_t first, int64_t k_n, double* out) {
        lane_sums<W>(k_n, out, [&](int64_t k, float* a, float* s2) {
          const float* in = xp + (first + k) * W;
          const float* g = gp + (first + k) * W;
#pragma omp simd
          for (int j = 0; j < W; ++j) {
            const float gz = in[j] * sc[j] + of[j] > 0.f ? g[j] : 0.f;
            a[j] += gz;
            s2[j] += gz * (in[j] - mu[j]);
          }
        });
      });
    });
  }
  auto grad_weight = at::empty({channels}, x.options());
  auto grad_bias = at::empty({channels}, x.options());
  // dL/dx = w invstd (g - mean(g) - xhat mean(g xhat)) = A g + B (x - mean) + C per channel.
  std::vector<float> ca(channels), cb(channels), cc(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double sum_g = sums[c], sum_gx = sums[channels + c], inv = affine.invstd[c];
    grad_bias.data_ptr<float>()[c] = static_cast<float>(sum_g);
    grad_weight.data_ptr<float>()[c] = static_cast<float>(sum_gx * inv);
    const double a = w[c] * inv;
    ca[c] = static_cast<float>(a);
    cb[c] = static_cast<float>(-a * inv * inv * sum_gx / count);
    cc[c] = static_cast<float>(-a * sum_g / count);
  }
  const auto ta = tiled(ca, lanes), tb = tiled(cb, lanes), tc = tiled(cc, lanes);
  auto grad_x = at::empty_like(x);
  float* op = grad_x.data_ptr<float>();
  if (pool == 2) {
    parallel_ranges(windows_rows, kWindowRows, [&](int64_t begin, int64_t end) {
      for_windows(xp, begin, end, h, width, channels,
                  [&](const float* x0, const float* x1, const float* x2, const float* x3,
                      int64_t o) {
        // The same offsets from x and from dL/dx.
        float* d0 = op + (x0 - xp);
        float* d1 = op + (x1 - xp);
        float* d2 = op + (x2 - xp);
        float* d3 = op + (x3 - xp);
#pragma omp simd
        for (int64_t j = 0; j < channels; ++j) {
          const Shares w = gradient_shares(
              scaled(x0[j], sc[j], of[j]), scaled(x1[j], sc[j], of[j]),
              scaled(x2[j], sc[j], of[j]), scaled(x3[j], sc[j], of[j]));
          const float g = ta[j] * gp[o + j];  // to the window's maximum only
          d0[j] = w.s0 * g + tb[j] * (x0[j] - mu[j]) + tc[j];
          d1[j] = w.s1 * g + tb[j] * (x1[j] - mu[j]) + tc[j];
          d2[j] = w.s2 * g + tb[j] * (x2[j] - mu[j]) + tc[j];
          d3[j] = w.s3 * g + tb[j] * (x3[j] - mu[j]) + tc[j];
        }
      });
    });
  } else {
    with_lanes(lanes, [&](auto lanes_tag) {
      constexpr int W = decltype(lanes_tag)::value;
      parallel_ranges(x.numel() / W, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const float* in = xp + k * W;
          const float* g = gp + k * W;
          float* out = op + k * W;
#pragma omp simd
          for (int j = 0; j < W; ++j) {
            const float gz = in[j] * sc[j] + of[j] > 0.f ? g[j] : 0.f;
            out[j] = ta[j] * gz + tb[j] * (in[j] - mu[j]) + tc[j];
          }
        }
      });
    });
  }
  return {grad_x, grad_weight, grad_bias};
}
