// Fused BatchNorm + ReLU for channels-last float32 CPU activations (recattend.models.kernels).
//
// A channels-last (N, C, H, W) tensor is a flat array whose element i belongs to channel i % C.
// Every loop below walks that array in blocks of W lanes (W a multiple of C and of 16 floats, so a
// block is whole AVX-512 / AVX2 vectors and lane j always holds channel j % C): per-channel sums
// become per-lane sums and per-channel affine maps become per-lane ones, both vectorised by the
// compiler. Training makes two passes forward (statistics; normalise + ReLU) and two backward
// (gradient statistics; input gradient), recomputing the ReLU mask from x instead of storing y.
// PyTorch's own kernels make about twice as many passes and are slow for C < 16.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kGrain = 2048;  // blocks per parallel task
constexpr int kFlush = 256;       // blocks summed in float before adding to the double totals

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

// Runs body(first block, number of blocks, partials) over ranges of kGrain blocks in parallel and
// folds the per-range, per-lane partial sums (2 W each) into per-channel sums (2 C: first, second
// term), adding the ranges in order: the sums do not depend on the number of threads.
template <typename Body>
std::vector<double> channel_sums(int64_t blocks, int lanes, int64_t channels, Body body) {
  const int64_t ranges = (blocks + kGrain - 1) / kGrain;
  std::vector<double> partial(static_cast<size_t>(ranges) * 2 * lanes, 0.0);
  parallel_ranges(blocks, kGrain, [&](int64_t begin, int64_t end) {
    body(begin, end - begin, partial.data() + (begin / kGrain) * 2 * lanes);
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

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "batchnorm_relu: expected a channels-last float32 CPU tensor (N, C, H, W)");
  TORCH_CHECK(lanes_for(x.size(1)) % x.size(1) == 0 && x.numel() % lanes_for(x.size(1)) == 0,
              "batchnorm_relu: channels must divide 16, 32 or 64 and the size the lane width");
}

// y = max(x * scale + shift, 0) per channel.
at::Tensor affine_relu(const at::Tensor& x, const std::vector<float>& scale,
                          const std::vector<float>& shift) {
  const int lanes = lanes_for(x.size(1));
  const auto sc = tiled(scale, lanes), sh = tiled(shift, lanes);
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
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
                                      at::Tensor shift, double eps) {
  check_input(x);
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
  return {affine_relu(x, affine.scale, affine.offset), mean, var};
}

// Evaluation forward: y = relu((x - mean) / sqrt(var + eps) * weight + bias) with given statistics.
at::Tensor forward_eval(at::Tensor x, at::Tensor weight, at::Tensor bias, at::Tensor mean,
                        at::Tensor var, double eps) {
  check_input(x);
  const Affine affine =
      affine_from(to_vector(weight), to_vector(bias), to_vector(mean), to_vector(var), eps);
  return affine_relu(x, affine.scale, affine.offset);
}

// Training backward from dL/dy: returns (dL/dx, dL/dweight, dL/dbias). The ReLU mask is
// recomputed from x with the forward pass's scale and offset, so it matches y > 0 exactly.
std::vector<at::Tensor> backward_train(at::Tensor grad_y, at::Tensor x, at::Tensor mean,
                                       at::Tensor var, at::Tensor weight, at::Tensor bias,
                                       double eps) {
  check_input(x);
  check_input(grad_y);
  const int64_t channels = x.size(1), count = x.numel() / channels;
  const int lanes = lanes_for(channels);
  const auto w = to_vector(weight), m = to_vector(mean);
  const Affine affine = affine_from(w, to_vector(bias), m, to_vector(var), eps);
  const auto sc = tiled(affine.scale, lanes), of = tiled(affine.offset, lanes);
  const auto mu = tiled(m, lanes);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_y.data_ptr<float>();
  std::vector<double> sums;  // sum of g, sum of g (x - mean), with g the gradient through the ReLU
  with_lanes(lanes, [&](auto lanes_tag) {
    constexpr int W = decltype(lanes_tag)::value;
    sums = channel_sums(x.numel() / W, W, channels, [&](int64_t first, int64_t n, double* out) {
      lane_sums<W>(n, out, [&](int64_t k, float* a, float* s2) {
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
  return {grad_x, grad_weight, grad_bias};
}
