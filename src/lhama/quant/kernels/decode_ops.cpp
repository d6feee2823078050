// Fused small ops of a CPU decode step (lhama.model.fused): each replaces the 10-60 ATen calls
// the same arithmetic takes in eager PyTorch (casts, views, RoPE's complex multiply, KV writes,
// single-query attention), where dispatch, not arithmetic, is the cost at a few rows.
//
// Contract (the pure-torch path in lhama/model/fused.py is the reference, tested against):
// activations arrive fp32 or bf16, everything is computed in fp32, a result asked for in bf16
// is rounded once (round to nearest even, like Tensor.to). Rows are contiguous.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using at::Tensor;

inline float to_f(float v) { return v; }
inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_f(c10::Half v) { return static_cast<float>(v); }
inline float to_f(int8_t v) { return static_cast<float>(v); }

// An int8 KV cache (lhama.model.kv_cache) keeps each (token, KV head) row as its D int8 values
// followed by their bf16 scale (absmax / 127, symmetric): D + 2 bytes a row, value = scale * q.
// The attention reads them in place: a key's score is scale_k * (q . k_q), a value's weight
// p * scale_v; fp32/bf16/fp16 rows have no scale (row_pad 0).
template <typename C>
constexpr int64_t row_pad = std::is_same_v<C, int8_t> ? 2 : 0;

template <typename C>
inline float row_scale(const C* row, int64_t D) {
  if constexpr (std::is_same_v<C, int8_t>) {
    uint16_t b;
    std::memcpy(&b, row + D, sizeof b);
    const uint32_t bits = static_cast<uint32_t>(b) << 16;  // bf16 -> fp32 is exact
    float s;
    std::memcpy(&s, &bits, sizeof s);
    return s;
  } else {
    return 1.f;
  }
}

// The factor a key row's q . k is multiplied by: the softmax scale, times the row's own scale
// for an int8 row (one product, so 16-bit rows keep their exact bits).
template <typename C>
inline float key_factor(const C* row, int64_t D, float scale) {
  if constexpr (std::is_same_v<C, int8_t>) {
    return scale * row_scale(row, D);
  } else {
    return scale;
  }
}

// A value row's weight p, times its scale for an int8 row.
template <typename C>
inline float value_weight(float p, const C* row, int64_t D) {
  if constexpr (std::is_same_v<C, int8_t>) {
    return p * row_scale(row, D);
  } else {
    return p;
  }
}

template <typename T>
inline void store(T* p, float v) {
  *p = static_cast<T>(v);
}

// Calls f(const T*) with x's data as fp32 or bf16.
template <typename F>
void with_input(const Tensor& x, F&& f) {
  if (x.scalar_type() == at::kFloat) {
    f(x.data_ptr<float>());
  } else if (x.scalar_type() == at::kBFloat16) {
    f(x.data_ptr<c10::BFloat16>());
  } else {
    TORCH_CHECK(false, "lhama_decode: float32 or bfloat16 activations only, got ", x.scalar_type());
  }
}

template <typename F>
void with_output(const Tensor& y, F&& f) {
  if (y.scalar_type() == at::kFloat) {
    f(y.data_ptr<float>());
  } else if (y.scalar_type() == at::kBFloat16) {
    f(y.data_ptr<c10::BFloat16>());
  } else {
    TORCH_CHECK(false, "lhama_decode: float32 or bfloat16 results only, got ", y.scalar_type());
  }
}

void check_rows(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "lhama_decode: ", name, " must be a contiguous CPU tensor");
}

// The loops below are compiled three times (AVX-512, AVX2, baseline x86-64) and picked at load
// time by the CPU (GCC's target_clones): no -march=native, no intrinsics.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHAMA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LHAMA_CLONES
#endif

// e^x in plain arithmetic that vectorizes (Cephes' expf: Cody-Waite reduction by ln 2 and a
// degree-6 polynomial, ~1 ulp; the scale 2^n assembled in the exponent bits). libm's expf is a
// call per element, which stays scalar.
inline float exp_poly(float x) {
  x = std::min(88.3762626647949f, std::max(-87.3365447504f, x));
  const float big = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + big) - big;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

LHAMA_CLONES void silu_mul_f32(const float* g, const float* u, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (g[i] / (1.f + exp_poly(-g[i]))) * u[i];
}

// q . k over D floats: 16 lanes, summed as a tree (GCC's own reduction of an `omp simd` loop adds
// the 16 lanes one after another: a 16-add dependency chain per dot).
// k may be bf16 (a bf16 KV cache): each element widened to fp32 exactly, the same sums.
template <typename K>
inline float dot(const float* q, const K* k, int64_t D) {
  float lanes[16] = {};
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += q[d + l] * to_f(k[d + l]);
  for (int l = 0; l < 8; ++l) lanes[l] += lanes[l + 8];
  for (int l = 0; l < 4; ++l) lanes[l] += lanes[l + 4];
  float s = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
  for (; d < D; ++d) s += q[d] * to_f(k[d]);
  return s;
}

// s[g * ss + j] = scale * (q_g . k_j) for G query heads q [G, D] and n keys at k + j * stride
// (fp32, bf16, fp16 or int8 keys: one compiled body each).
template <typename K>
inline void scores_body(const float* q, int64_t G, int64_t D, const K* k, int64_t stride, int64_t n, float scale,
                        float* s, int64_t ss) {
  for (int64_t j = 0; j < n; ++j) {
    const float f = key_factor(k + j * stride, D, scale);
    for (int64_t g = 0; g < G; ++g) s[g * ss + j] = dot(q + g * D, k + j * stride, D) * f;
  }
}
LHAMA_CLONES void scores_run(const float* q, int64_t G, int64_t D, const float* k, int64_t stride, int64_t n,
                             float scale, float* s, int64_t ss) {
  scores_body(q, G, D, k, stride, n, scale, s, ss);
}
LHAMA_CLONES void scores_run(const float* q, int64_t G, int64_t D, const c10::BFloat16* k, int64_t stride, int64_t n,
                             float scale, float* s, int64_t ss) {
  scores_body(q, G, D, k, stride, n, scale, s, ss);
}
LHAMA_CLONES void scores_run(const float* q, int64_t G, int64_t D, const c10::Half* k, int64_t stride, int64_t n,
                             float scale, float* s, int64_t ss) {
  scores_body(q, G, D, k, stride, n, scale, s, ss);
}
LHAMA_CLONES void scores_run(const float* q, int64_t G, int64_t D, const int8_t* k, int64_t stride, int64_t n,
                             float scale, float* s, int64_t ss) {
  scores_body(q, G, D, k, stride, n, scale, s, ss);
}

// AVX-512 bodies of scores_run / values_run for head sizes 64 and 128 (the model shapes that
// matter): the same arithmetic in the same order as the plain loops (no contraction, fp32 sums
// lane by lane, the dot's halving tree), so the same bits; what changes is that the query rows and
// the G accumulators stay in registers across keys instead of going through memory per key, and
// 16-bit keys/values are widened 16 at a time. g_simd turns them off (tests compare both).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LHAMA_ZMM 1
bool g_simd = __builtin_cpu_supports("avx512f");

__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 load16(const c10::BFloat16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
__attribute__((target("avx512f"))) inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx512f"))) inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The dot's tree over 16 lanes: l + (l + 8), then + 4, then (0 + 2) + (1 + 3).
__attribute__((target("avx512f"))) inline float tree16(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 a = _mm256_add_ps(lo, hi);
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

// GB query heads at a time (their ND 16-lane chunks held in registers) over all `len` positions
// of a run list (run(j) as attend_group takes it): the query rows and the accumulators stay in
// registers across keys and across runs (a paged cache's blocks).
template <int ND, int GB, typename Runs>
__attribute__((target("avx512f"))) void scores_runs_zmm(const float* q, int64_t D, int64_t len, Runs& run,
                                                        float scale, float* s, int64_t ss) {
  __m512 qv[GB][ND];
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < ND; ++c) qv[g][c] = _mm512_loadu_ps(q + g * D + 16 * c);
  for (int64_t j0 = 0; j0 < len;) {
    auto [k, v, stride, n] = run(j0);
    n = std::min(n, len - j0);
    for (int64_t j = 0; j < n; ++j) {
      __m512 kv[ND];
      for (int c = 0; c < ND; ++c) kv[c] = load16(k + j * stride + 16 * c);
      const float f = key_factor(k + j * stride, D, scale);
      for (int g = 0; g < GB; ++g) {
        __m512 lanes = _mm512_setzero_ps();
        for (int c = 0; c < ND; ++c) lanes = _mm512_add_ps(lanes, _mm512_mul_ps(qv[g][c], kv[c]));
        s[g * ss + j0 + j] = tree16(lanes) * f;
      }
    }
    j0 += n;
  }
}

template <int ND, int GB, typename Runs>
__attribute__((target("avx512f"))) void values_runs_zmm(const float* p, int64_t ps, int64_t D, int64_t len,
                                                        Runs& run, float* acc) {
  __m512 av[GB][ND];
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < ND; ++c) av[g][c] = _mm512_loadu_ps(acc + g * D + 16 * c);
  for (int64_t j0 = 0; j0 < len;) {
    auto [k, v, stride, n] = run(j0);
    n = std::min(n, len - j0);
    for (int64_t j = 0; j < n; ++j) {
      __m512 vv[ND];
      for (int c = 0; c < ND; ++c) vv[c] = load16(v + j * stride + 16 * c);
      for (int g = 0; g < GB; ++g) {
        const __m512 w = _mm512_set1_ps(value_weight(p[g * ps + j0 + j], v + j * stride, D));
        for (int c = 0; c < ND; ++c) av[g][c] = _mm512_add_ps(av[g][c], _mm512_mul_ps(w, vv[c]));
      }
    }
    j0 += n;
  }
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < ND; ++c) _mm512_storeu_ps(acc + g * D + 16 * c, av[g][c]);
}

// Runs f(ND, GB, g0) over the query heads in register-sized groups; false when D has no body.
template <int ND, typename F>
void zmm_groups(int64_t G, F&& f) {
  constexpr int most = ND == 4 ? 4 : 2;  // accumulators: GB * ND of the 32 registers
  int64_t g = 0;
  for (; g + most <= G; g += most) f(std::integral_constant<int, most>{}, g);
  switch (G - g) {
    case 3: f(std::integral_constant<int, 3>{}, g); break;
    case 2: f(std::integral_constant<int, 2>{}, g); break;
    case 1: f(std::integral_constant<int, 1>{}, g); break;
    default: break;
  }
}

// A run list through the bodies above (false: no body for D, or turned off).
template <typename Runs>
bool scores_runs_fast(const float* q, int64_t G, int64_t D, int64_t len, Runs& run, float scale, float* s,
                      int64_t ss) {
  if (!g_simd) return false;
  if (D == 64) {
    zmm_groups<4>(G, [&](auto gb, int64_t g) {
      scores_runs_zmm<4, decltype(gb)::value>(q + g * D, D, len, run, scale, s + g * ss, ss);
    });
    return true;
  }
  if (D == 128) {
    zmm_groups<8>(G, [&](auto gb, int64_t g) {
      scores_runs_zmm<8, decltype(gb)::value>(q + g * D, D, len, run, scale, s + g * ss, ss);
    });
    return true;
  }
  return false;
}

template <typename Runs>
bool values_runs_fast(const float* p, int64_t ps, int64_t G, int64_t D, int64_t len, Runs& run, float* acc) {
  if (!g_simd) return false;
  if (D == 64) {
    zmm_groups<4>(G, [&](auto gb, int64_t g) {
      values_runs_zmm<4, decltype(gb)::value>(p + g * ps, ps, D, len, run, acc + g * D);
    });
    return true;
  }
  if (D == 128) {
    zmm_groups<8>(G, [&](auto gb, int64_t g) {
      values_runs_zmm<8, decltype(gb)::value>(p + g * ps, ps, D, len, run, acc + g * D);
    });
    return true;
  }
  return false;
}

// n fp16 values widened to fp32 (exact), 16 at a time with the CPU's conversion where it has one.
__attribute__((target("avx512f"))) void widen_zmm(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16(src + i));
  for (; i < n; ++i) dst[i] = to_f(src[i]);
}
__attribute__((target("avx,f16c"))) void widen_f16c(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = to_f(src[i]);
}
const bool g_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
inline void widen(const c10::Half* src, float* dst, int64_t n) {
  if (g_simd) return widen_zmm(src, dst, n);
  if (g_f16c) return widen_f16c(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f(src[i]);
}
#else
bool g_simd = false;
inline void widen(const c10::Half* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f(src[i]);
}
template <typename Runs>
bool scores_runs_fast(const float*, int64_t, int64_t, int64_t, Runs&, float, float*, int64_t) {
  return false;
}
template <typename Runs>
bool values_runs_fast(const float*, int64_t, int64_t, int64_t, int64_t, Runs&, float*) {
  return false;
}
#endif

// s[j] = exp(s[j] - max s) for j < n; returns the sum.
LHAMA_CLONES float softmax_numerators(float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_poly(s[j] - m);
    s[j] = e;
    total += e;
  }
  return total;
}

// acc[g, :] += sum_j p[g * ps + j] * v_j for n values at v + j * stride (fp32 or bf16).
template <typename V>
inline void values_body(const float* p, int64_t ps, int64_t G, int64_t D, const V* v, int64_t stride, int64_t n,
                        float* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const V* vj = v + j * stride;
    for (int64_t g = 0; g < G; ++g) {
      const float w = value_weight(p[g * ps + j], vj, D);
      float* a = acc + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += w * to_f(vj[d]);
    }
  }
}
LHAMA_CLONES void values_run(const float* p, int64_t ps, int64_t G, int64_t D, const float* v, int64_t stride,
                             int64_t n, float* acc) {
  values_body(p, ps, G, D, v, stride, n, acc);
}
LHAMA_CLONES void values_run(const float* p, int64_t ps, int64_t G, int64_t D, const c10::BFloat16* v,
                             int64_t stride, int64_t n, float* acc) {
  values_body(p, ps, G, D, v, stride, n, acc);
}
LHAMA_CLONES void values_run(const float* p, int64_t ps, int64_t G, int64_t D, const c10::Half* v, int64_t stride,
                             int64_t n, float* acc) {
  values_body(p, ps, G, D, v, stride, n, acc);
}
LHAMA_CLONES void values_run(const float* p, int64_t ps, int64_t G, int64_t D, const int8_t* v, int64_t stride,
                             int64_t n, float* acc) {
  values_body(p, ps, G, D, v, stride, n, acc);
}

// y = x * rsqrt(mean(x^2) + eps) * w for each row of x (length n), as aten's composite rms_norm.
template <typename Y>
inline void norm_row(const float* x, const float* w, int64_t n, float eps, Y* y) {
  const float ss = dot(x, x, n);
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) store(y + i, (x[i] * inv) * w[i]);
}

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps, at::ScalarType dtype) {
  check_rows(x, "x");
  check_rows(w, "weight");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "rms_norm: fp32 x and weight");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  Tensor y = at::empty(x.sizes(), x.options().dtype(dtype));
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  with_output(y, [&](auto* yp) {
    for (int64_t r = 0; r < rows; ++r) norm_row(xp + r * n, wp, n, static_cast<float>(eps), yp + r * n);
  });
  return y;
}

// h = x + y (x fp32, y fp32 or bf16) and rms_norm(h): the residual add and the next norm.
std::tuple<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& w, double eps,
                                        at::ScalarType dtype) {
  check_rows(x, "x");
  check_rows(y, "y");
  check_rows(w, "weight");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "add_rms_norm: fp32 x and weight");
  TORCH_CHECK(x.numel() == y.numel(), "add_rms_norm: x and y differ in size");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  Tensor h = at::empty(x.sizes(), x.options());
  Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  const float* xp = x.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  with_input(y, [&](const auto* yp) {
    for (int64_t i = 0; i < rows * n; ++i) hp[i] = xp[i] + to_f(yp[i]);
  });
  const float* wp = w.data_ptr<float>();
  with_output(out, [&](auto* op) {
    for (int64_t r = 0; r < rows; ++r) norm_row(hp + r * n, wp, n, static_cast<float>(eps), op + r * n);
  });
  return {h, out};
}

// silu(gate) * up for gate_up = [gate | up] along the last dim (SwiGLU's w1|w3 output).
Tensor silu_mul(const Tensor& gu, at::ScalarType dtype) {
  check_rows(gu, "gate_up");
  const int64_t n2 = gu.size(-1), rows = gu.numel() / n2, n = n2 / 2;
  TORCH_CHECK(n2 % 2 == 0, "silu_mul: odd last dimension");
  auto sizes = gu.sizes().vec();
  sizes.back() = n;
  Tensor y = at::empty(sizes, gu.options().dtype(dtype));
  // fp32 rows of gate and up (converted from bf16 first, a row at a time), one vector loop.
  std::vector<float> buf(gu.scalar_type() == at::kFloat ? 0 : n2), res(y.scalar_type() == at::kFloat ? 0 : n);
  with_input(gu, [&](const auto* gp) {
    with_output(y, [&](auto* yp) {
      for (int64_t r = 0; r < rows; ++r) {
        const float* g;
        if constexpr (std::is_same_v<std::decay_t<decltype(*gp)>, float>) {
          g = gp + r * n2;
        } else {
          for (int64_t i = 0; i < n2; ++i) buf[i] = to_f(gp[r * n2 + i]);
          g = buf.data();
        }
        if constexpr (std::is_same_v<std::decay_t<decltype(*yp)>, float>) {
          silu_mul_f32(g, g + n, yp + r * n, n);
        } else {
          silu_mul_f32(g, g + n, res.data(), n);
          for (int64_t i = 0; i < n; ++i) store(yp + r * n + i, res[i]);
        }
      }
    });
  });
  return y;
}

// qkv [..., (H + 2 KVH) * D] -> q [..., H, D], k [..., KVH, D] rotated, v [..., KVH, D] (fp32).
// rotation: complex64 [rows, D/2] (any shape of that size), cos + i sin per channel pair (2i, 2i+1)
// of each head (Meta's layout), as lhama.model.rope.rope_rotation makes it.
std::tuple<Tensor, Tensor, Tensor> rope_qkv(const Tensor& qkv, const Tensor& rot, int64_t H, int64_t KVH) {
  check_rows(qkv, "qkv");
  check_rows(rot, "rotation");
  TORCH_CHECK(rot.scalar_type() == at::kComplexFloat, "rope_qkv: complex64 rotation");
  const int64_t width = qkv.size(-1), rows = qkv.numel() / width, D = width / (H + 2 * KVH), half = D / 2;
  TORCH_CHECK(D * (H + 2 * KVH) == width && D % 2 == 0, "rope_qkv: width is not (H + 2 KVH) * D");
  TORCH_CHECK(rot.numel() * 2 == rows * D, "rope_qkv: rotation is not [rows, D/2]");
  auto lead = qkv.sizes().vec();
  lead.pop_back();
  auto shape = [&](int64_t heads) {
    auto s = lead;
    s.push_back(heads);
    s.push_back(D);
    return s;
  };
  auto opts = qkv.options().dtype(at::kFloat);
  Tensor q = at::empty(shape(H), opts), k = at::empty(shape(KVH), opts), v = at::empty(shape(KVH), opts);
  float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* rp = reinterpret_cast<const float*>(rot.data_ptr());  // (re, im) pairs
  with_input(qkv, [&](const auto* xp) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto* x = xp + r * width;
      const float* cs = rp + r * D;
      for (int64_t h = 0; h < H + KVH; ++h) {
        float* o = h < H ? qp + (r * H + h) * D : kp + (r * KVH + h - H) * D;
        const auto* xh = x + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = to_f(xh[2 * i]), x1 = to_f(xh[2 * i + 1]), c = cs[2 * i], s = cs[2 * i + 1];
          o[2 * i] = x0 * c - x1 * s;
          o[2 * i + 1] = x0 * s + x1 * c;
        }
      }
      const auto* xv = x + (H + KVH) * D;
      for (int64_t i = 0; i < KVH * D; ++i) vp[r * KVH * D + i] = to_f(xv[i]);
    }
  });
  return {q, k, v};
}

// Attention of the G query heads q [G, D] that share one KV head over `len` positions, stored in
// runs of consecutive rows: run(j0) gives the key and value pointers of position j0, the row
// stride and how many positions follow contiguously. out [G, D].
template <typename Runs, typename Y>
void attend_group(const float* q, int64_t G, int64_t D, int64_t len, float scale, Runs run, float* scratch, Y* out) {
  float* s = scratch;            // [G, len]
  float* acc = scratch + G * len;  // [G, D]
  if (!scores_runs_fast(q, G, D, len, run, scale, s, len)) {
    for (int64_t j = 0; j < len;) {
      auto [kp, vp, stride, n] = run(j);
      n = std::min(n, len - j);
      scores_run(q, G, D, kp, stride, n, scale, s + j, len);
      j += n;
    }
  }
  std::vector<float> total(G);
  for (int64_t g = 0; g < G; ++g) total[g] = softmax_numerators(s + g * len, len);
  std::fill_n(acc, G * D, 0.f);
  if (!values_runs_fast(s, len, G, D, len, run, acc)) {
    for (int64_t j = 0; j < len;) {
      auto [kp, vp, stride, n] = run(j);
      n = std::min(n, len - j);
      values_run(s + j, len, G, D, vp, stride, n, acc);
      j += n;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const float inv = 1.f / total[g];
    for (int64_t d = 0; d < D; ++d) store(out + g * D + d, acc[g * D + d] * inv);
  }
}

// Runs body(i, g0, g1) over the n * G query heads of n (row, KV head) items on the intra-op
// threads when the work is large enough: each thread takes a contiguous range of heads, grouped by
// item (query heads g0..g1 of item i share its keys). A head's numbers do not depend on the split
// (each head's scores, softmax and sums are its own), so the split can balance 3 KV heads of 3
// query heads each over 2 threads as 5 and 4 heads instead of 2 and 1 KV heads.
template <typename F>
void for_each_head(int64_t n, int64_t G, int64_t work_per_head, F&& body) {
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, work_per_head));
  at::parallel_for(0, n * G, grain, [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e;) {
      const int64_t i = h / G, g0 = h % G, g1 = std::min(G, g0 + (e - h));
      body(i, g0, g1);
      h += g1 - g0;
    }
  });
}

// Runs body(i) for i in [0, n) on the intra-op threads when the work is large enough.
template <typename F>
void for_each(int64_t n, int64_t work_per_item, F&& body) {
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, work_per_item));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) body(i);
  });
}

// Calls f(kc, vc) with the caches' data as fp32, bf16, fp16 or int8 (a 16-bit cache: written
// rounded to nearest even, as Tensor.to does; read widened to fp32, all arithmetic fp32; int8:
// rows of D values and their scale, see row_pad).
template <typename F>
void with_caches(const Tensor& kc, const Tensor& vc, const char* name, F&& f) {
  TORCH_CHECK(kc.scalar_type() == vc.scalar_type(), name, ": k and v caches of one dtype");
  if (kc.scalar_type() == at::kFloat) {
    f(kc.data_ptr<float>(), vc.data_ptr<float>());
  } else if (kc.scalar_type() == at::kBFloat16) {
    f(kc.data_ptr<c10::BFloat16>(), vc.data_ptr<c10::BFloat16>());
  } else if (kc.scalar_type() == at::kHalf) {
    f(kc.data_ptr<c10::Half>(), vc.data_ptr<c10::Half>());
  } else if (kc.scalar_type() == at::kChar) {
    f(kc.data_ptr<int8_t>(), vc.data_ptr<int8_t>());
  } else {
    TORCH_CHECK(false, name, ": float32, bfloat16, float16 or int8 caches only, got ", kc.scalar_type());
  }
}

// One (token, KV head) row of D values into the cache: rounded to the cache's dtype, or for an
// int8 cache quantized symmetrically with scale absmax / 127 (round to nearest even, as
// lhama.model.kv_cache.quantize_kv does in torch: the same bytes) and the scale stored after it.
// The scale is rounded to bf16 first and the values divided by that rounded scale: two ways of
// computing the same row (the engine's prefill, the reference loop's) that differ in the last bits
// of fp32 then mostly store the same bytes, as a bf16 cache does.
template <typename C>
inline void store_kv_row(const float* src, int64_t D, C* dst) {
  for (int64_t i = 0; i < D; ++i) store(dst + i, src[i]);
}
inline void store_kv_row(const float* src, int64_t D, int8_t* dst) {
  float amax = 0.f;
  for (int64_t i = 0; i < D; ++i) amax = std::max(amax, std::fabs(src[i]));
  const c10::BFloat16 stored(amax / 127.f);  // round to nearest even, as Tensor.to
  const float scale = static_cast<float>(stored);
  for (int64_t i = 0; i < D; ++i) {
    const float r = scale > 0.f ? std::nearbyint(src[i] / scale) : 0.f;
    dst[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, r)));
  }
  std::memcpy(dst + D, &stored, sizeof stored);
}

inline int64_t row_pad_of(const Tensor& cache) { return cache.scalar_type() == at::kChar ? row_pad<int8_t> : 0; }

// StaticKVCache: write k/v [B, T, KVH, D] at positions pos.. of the caches [Bc, L, KVH, D] (fp32,
// bf16 or fp16; int8: [Bc, L, KVH, D + 2]; batch rows 0..B-1 used), then causal attention of q [B, T, H, D]: query t sees keys
// 0..pos+t.
Tensor attend_static(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& kc, Tensor& vc, int64_t pos,
                     at::ScalarType dtype) {
  for (auto* t : {&q, &k, &v}) check_rows(*t, "q/k/v");
  check_rows(kc, "k_cache");
  check_rows(vc, "v_cache");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "attend_static: fp32 q, k and v");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), KVH = k.size(2), L = kc.size(1);
  const int64_t E = D + row_pad_of(kc);  // a cache row (token, KV head): D values (+ an int8 row's scale)
  TORCH_CHECK(H % KVH == 0 && kc.size(2) == KVH && kc.size(3) == E && vc.sizes() == kc.sizes() && B <= kc.size(0),
              "attend_static: shapes");
  TORCH_CHECK(pos >= 0 && pos + T <= L, "attend_static: KV cache holds ", L, " positions; tried to write up to ",
              pos + T);
  Tensor out = at::empty(q.sizes(), q.options().dtype(dtype));
  const float* qp = q.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t G = H / KVH;
  const int64_t row = KVH * E;
  with_caches(kc, vc, "attend_static", [&](auto* kcp, auto* vcp) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < T * KVH; ++r) {
        store_kv_row(k.data_ptr<float>() + (b * T * KVH + r) * D, D, kcp + (b * L + pos) * row + r * E);
        store_kv_row(v.data_ptr<float>() + (b * T * KVH + r) * D, D, vcp + (b * L + pos) * row + r * E);
      }
    with_output(out, [&](auto* op) {
      // One item per (row, token, KV head): its G query heads read each key and value once.
      for_each_head(B * T * KVH, G, (pos + T) * D * 2, [&](int64_t i, int64_t g0, int64_t g1) {
        const int64_t kvh = i % KVH, t = (i / KVH) % T, b = i / (KVH * T), len = pos + t + 1;
        std::vector<float> scratch((g1 - g0) * (len + D));
        const auto* kb = kcp + b * L * row + kvh * E;
        const auto* vb = vcp + b * L * row + kvh * E;
        const int64_t qi = ((b * T + t) * H + kvh * G + g0) * D;
        auto runs = [&](int64_t j) { return std::make_tuple(kb + j * row, vb + j * row, row, len - j); };
        attend_group(qp + qi, g1 - g0, D, len, scale, runs, scratch.data(), op + qi);
      });
    });
  });
  return out;
}

// PagedKVCache, decode rows: write k/v [..., KVH, D] of N rows to the storage rows `slots`
// [N * KVH] of the layer's caches [blocks * KVH, bs, D] (fp32, bf16, fp16; int8: [..., D + 2]), then row i's query heads
// (q [..., H, D], N rows) attend over its first lens[i] positions, read in place through its block
// table tables[i] (no gather, no mask). The result has q's shape.
Tensor attend_paged_decode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& kc, Tensor& vc,
                           const Tensor& slots, const Tensor& tables, const Tensor& lens, at::ScalarType dtype) {
  for (auto* t : {&q, &k, &v, &slots, &tables, &lens}) check_rows(*t, "q/k/v/slots/tables/lens");
  check_rows(kc, "k_cache");
  check_rows(vc, "v_cache");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "attend_paged_decode: fp32 q, k and v");
  TORCH_CHECK(slots.scalar_type() == at::kLong && tables.scalar_type() == at::kLong && lens.scalar_type() == at::kLong,
              "attend_paged_decode: int64 slots, tables and lens");
  const int64_t H = q.size(-2), D = q.size(-1), KVH = k.size(-2), N = q.numel() / (H * D), bs = kc.size(1);
  const int64_t rows = kc.size(0), mb = tables.size(1), E = D + row_pad_of(kc);
  TORCH_CHECK(H % KVH == 0 && k.size(-1) == D && k.numel() == N * KVH * D && v.numel() == k.numel() &&
                  kc.size(2) == E && vc.sizes() == kc.sizes() && slots.numel() == N * KVH && tables.size(0) == N &&
                  lens.numel() == N,
              "attend_paged_decode: shapes");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t i = 0; i < N * KVH; ++i) TORCH_CHECK(sp[i] >= 0 && sp[i] < rows * bs, "attend_paged_decode: slot out of range");
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(lp[i] >= 1 && lp[i] <= mb * bs, "attend_paged_decode: length past the block table");
    for (int64_t j = 0; j < (lp[i] + bs - 1) / bs; ++j)
      TORCH_CHECK(tp[i * mb + j] >= 0 && (tp[i * mb + j] + 1) * KVH <= rows, "attend_paged_decode: bad block");
  }
  Tensor out = at::empty(q.sizes(), q.options().dtype(dtype));
  const float* qp = q.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t G = H / KVH;
  int64_t longest = 0;
  for (int64_t i = 0; i < N; ++i) longest = std::max(longest, lp[i]);
  with_caches(kc, vc, "attend_paged_decode", [&](auto* kcp, auto* vcp) {
    for (int64_t i = 0; i < N * KVH; ++i) {
      store_kv_row(k.data_ptr<float>() + i * D, D, kcp + sp[i] * E);
      store_kv_row(v.data_ptr<float>() + i * D, D, vcp + sp[i] * E);
    }
    with_output(out, [&](auto* op) {
      for_each_head(N * KVH, G, longest * D * 2, [&](int64_t i, int64_t g0, int64_t g1) {
        const int64_t kvh = i % KVH, n = i / KVH, len = lp[n];
        const int64_t* table = tp + n * mb;
        std::vector<float> scratch((g1 - g0) * (len + D));
        // A block's rows for one KV head are contiguous: one run per block.
        auto runs = [&](int64_t j) {
          const int64_t off = ((table[j / bs] * KVH + kvh) * bs + j % bs) * E;
          return std::make_tuple(kcp + off, vcp + off, E, bs - j % bs);
        };
        const int64_t qi = (n * H + kvh * G + g0) * D;
        attend_group(qp + qi, g1 - g0, D, len, scale, runs, scratch.data(), op + qi);
      });
    });
  });
  return out;
}

// y[n] += sum_r low[r] * bt[r, n] over the spans (r0, r1, n0, n1) of a low-rank delta, after
// low = a x (a [R, K]): one row of an unmerged LoRA adapter (lhama.model.lora_batch).
// acc: N floats of scratch. Each output's sum runs over r in order from 0, then is added to y
// (addmm's y + (low b_t)); the loops are axpys over contiguous rows of b_t (vectorized).
LHAMA_CLONES void lora_row(const float* x, const float* a, int64_t R, int64_t K, const float* bt, int64_t N,
                           const int64_t* spans, int64_t P, float* low, float* acc, float* y) {
  for (int64_t r = 0; r < R; ++r) low[r] = dot(a + r * K, x, K);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t r0 = spans[4 * p], r1 = spans[4 * p + 1], n0 = spans[4 * p + 2], n1 = spans[4 * p + 3];
    std::fill(acc + n0, acc + n1, 0.f);
    for (int64_t r = r0; r < r1; ++r) {
      const float l = low[r];
      const float* b = bt + r * N;
#pragma omp simd
      for (int64_t n = n0; n < n1; ++n) acc[n] += l * b[n];
    }
#pragma omp simd
    for (int64_t n = n0; n < n1; ++n) y[n] += acc[n];
  }
}

// lora_row with fp16 a and b_t (an adapter stored in fp16, its own precision: widening is exact):
// each row of a and each span of a row of b_t widened into wide (max(K, N) floats), then the fp32
// loops above, so the same bits as lora_row on fp32 copies.
LHAMA_CLONES void lora_row(const float* x, const c10::Half* a, int64_t R, int64_t K, const c10::Half* bt, int64_t N,
                           const int64_t* spans, int64_t P, float* low, float* acc, float* y, float* wide) {
  for (int64_t r = 0; r < R; ++r) {
    widen(a + r * K, wide, K);
    low[r] = dot(wide, x, K);
  }
  for (int64_t p = 0; p < P; ++p) {
    const int64_t r0 = spans[4 * p], r1 = spans[4 * p + 1], n0 = spans[4 * p + 2], n1 = spans[4 * p + 3];
    std::fill(acc + n0, acc + n1, 0.f);
    for (int64_t r = r0; r < r1; ++r) {
      const float l = low[r];
      widen(bt + r * N + n0, wide, n1 - n0);
      const float* b = wide - n0;
#pragma omp simd
      for (int64_t n = n0; n < n1; ++n) acc[n] += l * b[n];
    }
#pragma omp simd
    for (int64_t n = n0; n < n1; ++n) y[n] += acc[n];
  }
}

// lora_row on a tile of T <= kLoraTile rows at once: each row's numbers are lora_row's (low[r] by
// the same dot; each output summed over r in order from the span's first rank row, from 0, then
// added to y), so the same bits at any row count. The sums of kLoraLanes outputs of all the tile's
// rows stay in registers over r (a tail tile computes zeros for its missing rows): one load of b_t
// per rank row for 8 rows, where lora_row loads and stores its sums for every row. fp32 a and b_t
// (fp16 ones are widened once per thread by lora_add_).
constexpr int64_t kLoraTile = 8, kLoraLanes = 16;
LHAMA_CLONES void lora_tile(const float* const* xs, int64_t T, const float* a, int64_t R, int64_t K, const float* bt,
                            int64_t N, const int64_t* spans, int64_t P, float* low, float* const* ys) {
  for (int64_t t = 0; t < kLoraTile; ++t)
    for (int64_t r = 0; r < R; ++r) low[t * R + r] = t < T ? dot(a + r * K, xs[t], K) : 0.f;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t r0 = spans[4 * p], r1 = spans[4 * p + 1], n0 = spans[4 * p + 2], n1 = spans[4 * p + 3];
    for (int64_t c0 = n0; c0 < n1; c0 += kLoraLanes) {
      const int64_t w = std::min(n1 - c0, kLoraLanes);
      float acc[kLoraTile][kLoraLanes] = {};
      if (w == kLoraLanes) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* b = bt + r * N + c0;
#pragma GCC unroll 8
          for (int64_t t = 0; t < kLoraTile; ++t) {
            const float l = low[t * R + r];
#pragma omp simd
            for (int64_t n = 0; n < kLoraLanes; ++n) acc[t][n] += l * b[n];
          }
        }
      } else {
        for (int64_t r = r0; r < r1; ++r) {
          const float* b = bt + r * N + c0;
          for (int64_t t = 0; t < kLoraTile; ++t) {
            const float l = low[t * R + r];
            for (int64_t n = 0; n < w; ++n) acc[t][n] += l * b[n];
          }
        }
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < w; ++n) ys[t][c0 + n] += acc[t][n];
    }
  }
}

// FixedLoraLinear's side path in place: y [M, N] (fp32) += (x [M, K] a^T) b_t restricted to the
// spans, each span (r0, r1, n0, n1) a block of b_t (rank rows r0..r1 write outputs n0..n1: a fused
// projection's parts). a and b_t: both fp32, or both fp16 (widened exactly: the same bits, half the
// bytes). Every row is computed alone, the same way at any M (no GEMM blocking), and
// single-threaded at decode sizes (no thread wake-up for a few microseconds of work): row by row
// (lora_row) below kLoraMinTile rows, else in tiles of kLoraTile rows (lora_tile, the same bits:
// 2-2.4x faster per row at one thread from 16 rows, e.g. a 256-row prompt chunk of the default
// model's fused w1|w3 adapter 1029 -> 421 us).
constexpr int64_t kLoraMinTile = 6;
void lora_add_(Tensor& y, const Tensor& x, const Tensor& a, const Tensor& bt, at::IntArrayRef spans) {
  check_rows(y, "y");
  check_rows(x, "x");
  check_rows(a, "a");
  check_rows(bt, "b_t");
  const bool half = a.scalar_type() == at::kHalf;
  TORCH_CHECK(y.scalar_type() == at::kFloat && (half || a.scalar_type() == at::kFloat) &&
                  bt.scalar_type() == a.scalar_type(),
              "lora_add_: fp32 y; a and b_t both fp32 or both fp16");
  const int64_t K = x.size(-1), M = x.numel() / std::max<int64_t>(K, 1), R = a.size(0), N = y.size(-1);
  TORCH_CHECK(a.dim() == 2 && a.size(1) == K && bt.dim() == 2 && bt.size(0) == R && bt.size(1) == N &&
                  y.numel() == M * N && spans.size() % 4 == 0,
              "lora_add_: shapes");
  const int64_t P = static_cast<int64_t>(spans.size()) / 4;
  int64_t work = R * K;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t r0 = spans[4 * p], r1 = spans[4 * p + 1], n0 = spans[4 * p + 2], n1 = spans[4 * p + 3];
    TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= R && 0 <= n0 && n0 <= n1 && n1 <= N, "lora_add_: span out of range");
    work += (r1 - r0) * (n1 - n0);
  }
  float* yp = y.data_ptr<float>();
  if (M < kLoraMinTile) {
    const int64_t wide = half ? std::max(K, N) : 0;
    with_input(x, [&](const auto* xp) {
      constexpr bool fx = std::is_same_v<std::decay_t<decltype(*xp)>, float>;
      for_each(M, work, [&](int64_t m) {
        std::vector<float> buf(R + N + (fx ? 0 : K) + wide);
        const float* xr;
        if constexpr (fx) {
          xr = xp + m * K;
        } else {
          for (int64_t i = 0; i < K; ++i) buf[R + N + i] = to_f(xp[m * K + i]);
          xr = buf.data() + R + N;
        }
        if (half)
          lora_row(xr, a.data_ptr<c10::Half>(), R, K, bt.data_ptr<c10::Half>(), N, spans.data(), P, buf.data(),
                   buf.data() + R, yp + m * N, buf.data() + R + N + (fx ? 0 : K));
        else
          lora_row(xr, a.data_ptr<float>(), R, K, bt.data_ptr<float>(), N, spans.data(), P, buf.data(),
                   buf.data() + R, yp + m * N);
      });
    });
    return;
  }
  const int64_t tiles = (M + kLoraTile - 1) / kLoraTile;
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, kLoraTile * work));
  with_input(x, [&](const auto* xp) {
    constexpr bool fx = std::is_same_v<std::decay_t<decltype(*xp)>, float>;
    at::parallel_for(0, tiles, grain, [&](int64_t first, int64_t last) {
      // Each thread's scratch, kept across calls (a fresh 233 KB buffer went through mmap and page
      // faults every call): low [kLoraTile, R], bf16 x rows widened [kLoraTile, K], then fp16 a and
      // b_t widened once for the thread's tiles [R, K + N] (widened here, not by the calling thread:
      // no copy of them crosses cores).
      thread_local std::vector<float> buf;
      const int64_t need = kLoraTile * (R + K) + (half ? R * (K + N) : 0);
      if (static_cast<int64_t>(buf.size()) < need) buf.resize(need);
      float* low = buf.data();
      float* xbuf = low + kLoraTile * R;
      const float* af = half ? xbuf + kLoraTile * K : a.data_ptr<float>();
      const float* btf = half ? af + R * K : bt.data_ptr<float>();
      if (half) {
        widen(a.data_ptr<c10::Half>(), const_cast<float*>(af), R * K);
        widen(bt.data_ptr<c10::Half>(), const_cast<float*>(btf), R * N);
      }
      for (int64_t i = first; i < last; ++i) {
        const int64_t m0 = i * kLoraTile, T = std::min(kLoraTile, M - m0);
        const float* xs[kLoraTile];
        float* ys[kLoraTile];
        for (int64_t t = 0; t < T; ++t) {
          ys[t] = yp + (m0 + t) * N;
          if constexpr (fx) {
            xs[t] = xp + (m0 + t) * K;
          } else {
            for (int64_t k = 0; k < K; ++k) xbuf[t * K + k] = to_f(xp[(m0 + t) * K + k]);
            xs[t] = xbuf + t * K;
          }
        }
        lora_tile(xs, T, af, R, K, btf, N, spans.data(), P, low, ys);
      }
    });
  });
}

// lhama_ggml::block_linear (ggml_ops.cpp, the same library) through the dispatcher, no Python;
// block_linear_parts when the weight is stacked from several tensors.
Tensor block_linear_call(const Tensor& x, at::TensorList parts, int64_t qtype, int64_t path) {
  if (parts.size() == 1) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("lhama_ggml::block_linear", "")
                         .typed<Tensor(const Tensor&, const Tensor&, int64_t, int64_t)>();
    return op.call(x, parts[0], qtype, path);
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lhama_ggml::block_linear_parts", "")
                       .typed<Tensor(const Tensor&, at::TensorList, int64_t, int64_t)>();
  return op.call(x, parts, qtype, path);
}

// ggml.integer_rows: < 0 picks by row count (path 0), else the first n rows take the integer
// path (1) and the rest the GEMM (2), as lhama.quant.ggml.block_linear splits them.
Tensor block_linear_rows(const Tensor& x, at::TensorList parts, int64_t qtype, int64_t integer_rows) {
  const int64_t M = x.numel() / x.size(-1);
  if (integer_rows < 0) return block_linear_call(x, parts, qtype, 0);
  if (integer_rows >= M) return block_linear_call(x, parts, qtype, 1);
  if (integer_rows == 0) return block_linear_call(x, parts, qtype, 2);
  Tensor x2 = x.reshape({M, x.size(-1)});
  Tensor y = at::cat({block_linear_call(x2.slice(0, 0, integer_rows), parts, qtype, 1),
                      block_linear_call(x2.slice(0, integer_rows, M), parts, qtype, 2)});
  auto shape = x.sizes().vec();
  shape.back() = y.size(-1);
  return y.view(shape);
}

// The whole stack of transformer blocks for a step of single-token rows (one call per decode
// step instead of ~15 per layer from Python): per layer exactly the ops the module path runs
// (rms_norm, block_linear + lora_add_, rope_qkv, the static or paged attention, add_rms_norm,
// silu_mul, the residual add), so its results are the module path's bits. x [..., dim] fp32;
// rotation: rope_rotation of the rows. Per layer, weights holds the two norms' weights, then for
// each projection (wqkv, wo, w13, w2) its block tensors and its LoRA a and b_t (two empty tensors
// when it has none); ints holds per projection the ggml type, the number of block tensors and of
// LoRA spans, then the spans (lora_add_). Static cache (slots undefined): k/v caches [B, L, KVH,
// D], the rows at position pos. Paged: each layer's [blocks * KVH, bs, D] storage, slots, tables
// and lens as attend_paged_decode takes them.
Tensor decode_layers(const Tensor& x, const Tensor& rot, at::TensorList w, at::IntArrayRef ints, double eps,
                     int64_t H, int64_t KVH, at::TensorList kcs, at::TensorList vcs, int64_t pos,
                     const std::optional<Tensor>& slots, const std::optional<Tensor>& tables,
                     const std::optional<Tensor>& lens, int64_t integer_rows) {
  check_rows(x, "x");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "decode_layers: fp32 x");
  const int64_t n_layers = static_cast<int64_t>(kcs.size());
  TORCH_CHECK(static_cast<int64_t>(vcs.size()) == n_layers, "decode_layers: one k and v cache per layer");
  const bool paged = slots.has_value();
  TORCH_CHECK(!paged || (tables.has_value() && lens.has_value()), "decode_layers: slots, tables and lens together");
  const int64_t dim = x.size(-1);
  Tensor h = x.contiguous();
  size_t wi = 0, ii = 0;
  auto next_int = [&]() {
    TORCH_CHECK(ii < ints.size(), "decode_layers: ints too short");
    return ints[ii++];
  };
  struct Proj {
    int64_t qtype;
    at::TensorList parts;
    const Tensor* a;
    const Tensor* bt;
    std::vector<int64_t> spans;
  };
  for (int64_t l = 0; l < n_layers; ++l) {
    TORCH_CHECK(wi + 2 <= w.size(), "decode_layers: weights too short");
    const Tensor& norm1 = w[wi];
    const Tensor& norm2 = w[wi + 1];
    wi += 2;
    Proj pr[4];
    for (auto& p : pr) {
      p.qtype = next_int();
      const int64_t n_parts = next_int(), n_spans = next_int();
      TORCH_CHECK(n_parts >= 1 && wi + n_parts + 2 <= w.size(), "decode_layers: weights too short");
      p.parts = w.slice(wi, n_parts);
      p.a = &w[wi + n_parts];
      p.bt = &w[wi + n_parts + 1];
      wi += n_parts + 2;
      for (int64_t i = 0; i < 4 * n_spans; ++i) p.spans.push_back(next_int());
    }
    auto project = [&](const Tensor& in, const Proj& p) {
      Tensor y = block_linear_rows(in, p.parts, p.qtype, integer_rows);
      if (p.a->numel()) lora_add_(y, in, *p.a, *p.bt, p.spans);
      return y;
    };
    Tensor normed = rms_norm(h, norm1, eps, at::kFloat);
    auto [q, k, v] = rope_qkv(project(normed, pr[0]), rot, H, KVH);
    Tensor att = paged ? attend_paged_decode(q, k, v, const_cast<Tensor&>(kcs[l]), const_cast<Tensor&>(vcs[l]),
                                             *slots, *tables, *lens, at::kFloat)
                       : attend_static(q, k, v, const_cast<Tensor&>(kcs[l]), const_cast<Tensor&>(vcs[l]), pos,
                                       at::kFloat);
    auto shape = h.sizes().vec();
    shape.back() = -1;
    Tensor o = project(att.view(shape), pr[1]);
    auto [h2, n2] = add_rms_norm(h, o, norm2, eps, at::kFloat);
    Tensor f = project(silu_mul(project(n2, pr[2]), at::kFloat), pr[3]);
    TORCH_CHECK(f.scalar_type() == at::kFloat && f.size(-1) == dim, "decode_layers: w2's output");
    h = h2.add_(f);
  }
  TORCH_CHECK(wi == w.size() && ii == ints.size(), "decode_layers: weights or ints too long");
  return h;
}

// Turns the AVX-512 attention bodies on or off (where the CPU has them); returns whether they
// were on. For tests: both give the same bits.
bool set_simd(bool on) {
  const bool was = g_simd;
#if defined(LHAMA_ZMM)
  g_simd = on && __builtin_cpu_supports("avx512f");
#endif
  return was;
}

}  // namespace

TORCH_LIBRARY(lhama_decode, m) {
  m.def("set_simd(bool on) -> bool", &set_simd);
  m.def("rms_norm(Tensor x, Tensor weight, float eps, ScalarType dtype) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor y, Tensor weight, float eps, ScalarType dtype) -> (Tensor, Tensor)");
  m.def("silu_mul(Tensor gate_up, ScalarType dtype) -> Tensor");
  m.def("rope_qkv(Tensor qkv, Tensor rotation, int n_heads, int n_kv_heads) -> (Tensor, Tensor, Tensor)");
  m.def(
      "attend_static(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, int pos, "
      "ScalarType dtype) -> Tensor");
  m.def(
      "attend_paged_decode(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, "
      "Tensor tables, Tensor lens, ScalarType dtype) -> Tensor");
  m.def("lora_add_(Tensor(a!) y, Tensor x, Tensor a, Tensor b_t, int[] spans) -> ()");
  m.def(
      "decode_layers(Tensor x, Tensor rotation, Tensor[] weights, int[] ints, float eps, int n_heads, "
      "int n_kv_heads, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int pos, Tensor? slots, Tensor? tables, "
      "Tensor? lens, int integer_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(lhama_decode, CPU, m) {
  m.impl("rms_norm", TORCH_FN(rms_norm));
  m.impl("add_rms_norm", TORCH_FN(add_rms_norm));
  m.impl("silu_mul", TORCH_FN(silu_mul));
  m.impl("rope_qkv", TORCH_FN(rope_qkv));
  m.impl("attend_static", TORCH_FN(attend_static));
  m.impl("attend_paged_decode", TORCH_FN(attend_paged_decode));
  m.impl("lora_add_", TORCH_FN(lora_add_));
  m.impl("decode_layers", TORCH_FN(decode_layers));
}
