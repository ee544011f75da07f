// 3x3 convolution (stride 1, zero padding 1) to 8 output channels, channels-last float32 on CPU
// (recattend.ops.kernels.conv3x3): the box and attention CNNs' full-resolution layers, where
// oneDNN reaches ~50 GFLOP/s per core against ~80 here.
//
// In a channels-last row, the 3 horizontal taps of a pixel's C inputs are 3 C consecutive floats,
// so each output row is a sum over the 3 input rows of a small matrix product: output pixel w, an
// 8-float vector, gets in[(w - 1) C + j] * taps[kh][j] for j < 3 C, taps[kh][j] the 8 output
// channels' weights of tap (kh, kw = j / C, ci = j % C). One 8-float vector per output pixel, a
// block of pixels kept in registers: 8-float vectors because AVX2 has them and AVX-512 machines
// (e.g. Zen 4) run 16-float vectors at the same rate per float.
#include "kernels.h"

#include <algorithm>
#include <vector>

namespace {

typedef float vec8 __attribute__((vector_size(32)));
typedef float vec8_unaligned __attribute__((vector_size(32), aligned(4)));

inline vec8 load(const float* p) { return *reinterpret_cast<const vec8_unaligned*>(p); }
inline void store(float* p, vec8 v) { *reinterpret_cast<vec8_unaligned*>(p) = v; }

constexpr int kOut = 8;             // output channels: one vector
constexpr int64_t kRowsPerTask = 8;  // weight gradient: rows summed per partial result

void check(const at::Tensor& t, const char* name, int64_t channels) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 4,
              name, " must be a 4-D float32 CPU tensor");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels-last");
  TORCH_CHECK(channels < 0 || t.size(1) == channels, name, " must have ", channels, " channels");
}

// The valid input rows of output row hh (kh = 0, 1, 2 unless at the top or bottom edge) and each
// one's tap matrix: the weights (forward) or their gradient (weight gradient).
template <typename Tap>
struct Rows {
  const float* in[3];
  Tap* taps[3];
  int count = 0;
};

template <typename Tap>
Rows<Tap> rows_of(const float* x, Tap* taps, int64_t img, int64_t hh, int64_t h,
                  int64_t row_floats, int64_t tap_floats) {
  Rows<Tap> r;
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t src = hh + kh - 1;
    if (src < 0 || src >= h) continue;
    r.in[r.count] = x + (img * h + src) * row_floats;
    r.taps[r.count++] = taps + kh * tap_floats;
  }
  return r;
}

// Output pixels [w0, w0 + P) of a row, none on the left or right edge.
template <int P>
inline void interior_pixels(const Rows<const float>& r, int64_t c, int64_t w0, vec8 bias,
                            float* out) {
  vec8 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = bias;
  for (int k = 0; k < r.count; ++k) {
    const float* in = r.in[k] + (w0 - 1) * c;
    for (int64_t j = 0; j < 3 * c; ++j) {
      const vec8 tap = load(r.taps[k] + j * kOut);
      for (int p = 0; p < P; ++p) acc[p] += in[p * c + j] * tap;
    }
  }
  for (int p = 0; p < P; ++p) store(out + (w0 + p) * kOut, acc[p]);
}

// The taps j (kw = j / C) of output pixel w whose input column w - 1 + kw is inside the image.
struct TapRange {
  int64_t begin, end;
};

inline TapRange taps_inside(int64_t w, int64_t width, int64_t c) {
  return {std::max<int64_t>(0, 1 - w) * c, std::min<int64_t>(3, width - w + 1) * c};
}

// Output pixel w of a row, with the horizontal taps that fall outside the image left out.
inline void edge_pixel(const Rows<const float>& r, int64_t c, int64_t w, int64_t width, vec8 bias,
                       float* out) {
  vec8 acc = bias;
  const TapRange t = taps_inside(w, width, c);
  for (int k = 0; k < r.count; ++k)
    for (int64_t j = t.begin; j < t.end; ++j)
      acc += r.in[k][(w - 1) * c + j] * load(r.taps[k] + j * kOut);
  store(out + w * kOut, acc);
}

// taps_grad[j] += sum over interior pixels w of in[(w - 1) C + j0 + jj] * grad_out[w], jj < J.
template <int J>
inline void interior_taps_grad(const float* in, const float* grad_out, int64_t c, int64_t width,
                               int64_t j0, float* taps_grad) {
  vec8 acc[J];
  for (int jj = 0; jj < J; ++jj) acc[jj] = load(taps_grad + (j0 + jj) * kOut);
  for (int64_t w = 1; w + 1 < width; ++w) {
    const vec8 g = load(grad_out + w * kOut);
    const float* col = in + (w - 1) * c + j0;
    for (int jj = 0; jj < J; ++jj) acc[jj] += col[jj] * g;
  }
  for (int jj = 0; jj < J; ++jj) store(taps_grad + (j0 + jj) * kOut, acc[jj]);
}

}  // namespace

at::Tensor conv3x3_forward(at::Tensor x, at::Tensor taps, at::Tensor bias) {
  check(x, "x", -1);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), width = x.size(3);
  TORCH_CHECK(taps.is_contiguous() && taps.scalar_type() == at::kFloat &&
                  taps.sizes() == at::IntArrayRef({3, 3 * c, kOut}),
              "taps must be a contiguous float32 (3, 3 C, 8) tensor");
  TORCH_CHECK(bias.is_contiguous() && bias.scalar_type() == at::kFloat && bias.numel() == kOut,
              "bias must hold 8 float32 values");
  auto y = at::empty({n, kOut, h, width},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.data_ptr<float>();
  const float* tp = taps.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const vec8 b = load(bias.data_ptr<float>());
  parallel_tasks(n * h, [&](int64_t row) {
    const Rows r = rows_of(xp, tp, row / h, row % h, h, width * c, 3 * c * kOut);
    float* out = yp + row * width * kOut;
    edge_pixel(r, c, 0, width, b, out);
    int64_t w = 1;
    for (; w + 8 < width; w += 8) interior_pixels<8>(r, c, w, b, out);
    for (; w + 1 < width; ++w) interior_pixels<1>(r, c, w, b, out);
    if (width > 1) edge_pixel(r, c, width - 1, width, b, out);
  });
  return y;
}

std::vector<at::Tensor> conv3x3_weight_grad(at::Tensor x, at::Tensor grad_y) {
  check(x, "x", -1);
  check(grad_y, "grad_y", kOut);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), width = x.size(3);
  TORCH_CHECK(grad_y.size(0) == n && grad_y.size(2) == h && grad_y.size(3) == width,
              "grad_y must have x's batch size, height and width");
  const int64_t taps = 3 * c, rows = n * h, tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t per_task = 3 * taps * kOut + kOut;  // tap gradients, then the bias gradient
  // One partial sum per fixed block of rows, added up in order: the result does not depend on
  // the number of threads.
  std::vector<float> partial(tasks * per_task, 0.f);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_y.data_ptr<float>();
  parallel_tasks(tasks, [&](int64_t task) {
    float* acc = partial.data() + task * per_task;
    vec8 bias_grad = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t row = task * kRowsPerTask; row < std::min(rows, (task + 1) * kRowsPerTask);
         ++row) {
      const int64_t hh = row % h;
      const float* g = gp + row * width * kOut;
      for (int64_t w = 0; w < width; ++w) bias_grad += load(g + w * kOut);
      // The tap gradients of each valid input row (rows_of) accumulate in that row's part of acc.
      const Rows r = rows_of(xp, acc, row / h, hh, h, width * c, taps * kOut);
      for (int k = 0; k < r.count; ++k) {
        float* out = r.taps[k];
        int64_t j = 0;
        for (; j + 12 <= taps; j += 12) interior_taps_grad<12>(r.in[k], g, c, width, j, out);
        for (; j + 4 <= taps; j += 4) interior_taps_grad<4>(r.in[k], g, c, width, j, out);
        for (; j < taps; ++j) interior_taps_grad<1>(r.in[k], g, c, width, j, out);
        // The edge pixels (one when the row is one pixel wide), inside taps only.
        for (const int64_t w : {int64_t{0}, width - 1}) {
          const vec8 gw = load(g + w * kOut);
          const TapRange t = taps_inside(w, width, c);
          for (int64_t jj = t.begin; jj < t.end; ++jj)
            store(out + jj * kOut, load(out + jj * kOut) + r.in[k][(w - 1) * c + jj] * gw);
          if (width == 1) break;
        }
      }
    }
    store(acc + 3 * taps * kOut, bias_grad);
  });
  std::vector<double> total(per_task, 0.0);
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t i = 0; i < per_task; ++i) total[i] += partial[task * per_task + i];
  auto taps_grad = at::empty({3, taps, kOut}, x.options());
  auto bias_grad = at::empty({kOut}, x.options());
  std::copy(total.begin(), total.end() - kOut, taps_grad.data_ptr<float>());
  std::copy(total.end() - kOut, total.end(), bias_grad.data_ptr<float>());
  return {taps_grad, bias_grad};
}
