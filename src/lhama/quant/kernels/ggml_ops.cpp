// Matmuls on llama.cpp's Q4_0 / Q4_1 / Q8_0 / Q6_K blocks as stored in GGUF, as torch custom ops
// (lhama_ggml::block_linear, block_rows, dequantize). See lhama/quant/ggml.py for the contract.
//
// Portable: the library is compiled for baseline x86-64; the AVX2 and AVX512-VNNI bodies are
// compiled under `#pragma GCC target` and picked at run time by cpuid (never -march=native).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GGML_X86 1
#else
#define GGML_X86 0
#endif

namespace {

constexpr int Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q6_K = 14;
#ifndef ROWS_SMALL_M
#define ROWS_SMALL_M 20
#endif
// Up to this many activation rows: integer dot products (on the default model's shapes the bf16
// GEMM path caught up at ~20 rows on an AMD EPYC Zen 4, 1 thread).
constexpr int64_t kRowsSmallM = ROWS_SMALL_M;
constexpr int64_t kSliceWeights = 1 << 20;  // weights dequantized to bf16 at a time above it
#ifndef ZMT
#define ZMT 8
#endif
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 16
#endif

int block_bytes(int64_t qt) { return qt == Q4_0 ? 18 : qt == Q4_1 ? 20 : qt == Q8_0 ? 34 : qt == Q6_K ? 210 : 0; }
int block_elems(int64_t qt) { return qt == Q6_K ? 256 : 32; }

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0x1F) bits = sign | 0x7F800000 | (man << 13);
  else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
  else if (man == 0) bits = sign;
  else {  // subnormal: normalize
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400));
    bits = sign | uint32_t(112 - e) << 23 | ((man & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t fp32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFF) > 0x7F800000) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}


// --- Q6_K: 256 weights in 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales,
// fp16 d; w = (d * scale[e / 16]) * (q - 32), q in 0..63 (the gguf package's order exactly).
// Element e of half h = e / 128, group g = (e % 128) / 32, l = e % 32: ql[64 h + 32 (g & 1) + l]
// (low nibble for g < 2, else high), qh[32 h + l] bits 2g..2g+1.
void q6k_row_f32(const uint8_t* row, int64_t nb, float* out) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * 210;
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    uint16_t dh;
    std::memcpy(&dh, blk + 208, 2);
    const float d = fp16_to_fp32(dh);
    float* y = out + b * 256;
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) {
        const int a = ql[64 * h + l], c = ql[64 * h + 32 + l], hb = qh[32 * h + l], is = 8 * h + l / 16;
        y[128 * h + l] = (d * float(sc[is])) * float(((a & 15) | ((hb & 3) << 4)) - 32);
        y[128 * h + l + 32] = (d * float(sc[is + 2])) * float(((c & 15) | (((hb >> 2) & 3) << 4)) - 32);
        y[128 * h + l + 64] = (d * float(sc[is + 4])) * float(((a >> 4) | (((hb >> 4) & 3) << 4)) - 32);
        y[128 * h + l + 96] = (d * float(sc[is + 6])) * float(((c >> 4) | (((hb >> 6) & 3) << 4)) - 32);
      }
  }
}

// Activations for Q6_K (llama.cpp's Q8_K): int8 per 256 values (d = amax / 127, round half to
// even), with the integer sum of every 16 (the -32 offset's term).
void q6k_quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* d, int16_t* bsum) {
  const int64_t nb = K / 256;
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* xb = x + i * 256;
    float amax = 0.f;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float dd = amax / 127.f;
    const float id = dd != 0.f ? 1.f / dd : 0.f;
    for (int s = 0; s < 16; ++s) {
      int sum = 0;
      for (int j = 16 * s; j < 16 * s + 16; ++j) {
        const int v = static_cast<int>((xb[j] * id + 12582912.f) - 12582912.f);
        q[i * 256 + j] = static_cast<int8_t>(v);
        sum += v;
      }
      bsum[i * 16 + s] = static_cast<int16_t>(sum);
    }
    d[i] = dd;
  }
}

// out[m * ldo + n] for weight rows [n0, n1): sum over blocks of d_w d_x sum_s sc_s (sum q6 q - 32 bsum_s).
void q6k_gemv_scalar(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                     const float* dx, const int16_t* bs, int64_t M, int64_t K, float* out, int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + n * ws + b * 210;
        const uint8_t *ql = blk, *qh = blk + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
        const int8_t* q = qx + m * K + b * 256;
        int32_t dot[16] = {0};
        for (int h = 0; h < 2; ++h)
          for (int l = 0; l < 32; ++l) {
            const int a = ql[64 * h + l], c = ql[64 * h + 32 + l], hb = qh[32 * h + l], is = 8 * h + l / 16;
            dot[is] += ((a & 15) | ((hb & 3) << 4)) * q[128 * h + l];
            dot[is + 2] += ((c & 15) | (((hb >> 2) & 3) << 4)) * q[128 * h + l + 32];
            dot[is + 4] += ((a >> 4) | (((hb >> 4) & 3) << 4)) * q[128 * h + l + 64];
            dot[is + 6] += ((c >> 4) | (((hb >> 6) & 3) << 4)) * q[128 * h + l + 96];
          }
        int32_t isum = 0;
        for (int s = 0; s < 16; ++s) isum += int32_t(sc[s]) * (dot[s] - 32 * int32_t(bs[(m * nb + b) * 16 + s]));
        uint16_t dh;
        std::memcpy(&dh, blk + 208, 2);
        acc += fp16_to_fp32(dh) * dx[m * nb + b] * float(isum);
      }
      out[m * ldo + n] = acc;
    }
}

#if GGML_X86
// The same with AVX2 (llama.cpp's q6_K x q8_K scheme): per half block, 4 x 32 six-bit weights
// unpacked once for every activation row; maddubs pairs, madd by the 16-value scales, int32 sums
// over the block, one fma per block.
__attribute__((target("avx2,fma,f16c"))) void q6k_gemv_avx2(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1,
                                                             int64_t nb, const int8_t* qx, const float* dx,
                                                             const int16_t* bs, int64_t M, int64_t K, float* out,
                                                             int64_t ldo) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(0x03), mC = _mm256_set1_epi8(0x0C),
                m30 = _mm256_set1_epi8(0x30), mC0 = _mm256_set1_epi8(char(0xC0));
  constexpr int kMaxM = 32;
  __m256 acc[kMaxM];
  __m256i sumi[kMaxM];
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = w + n * ws + b * 210;
      if (n + 2 < n1) _mm_prefetch(reinterpret_cast<const char*>(blk + 2 * ws), _MM_HINT_T0);
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
      for (int64_t m = 0; m < M; ++m) {
        const __m256i bsv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs + (m * nb + b) * 16));
        sumi[m] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsv), 5));
      }
      for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
        const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
        const __m256i qhv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
        __m256i q[4], s[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qhv, m3), 4));
        q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qhv, mC), 2));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qhv, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                               _mm256_srli_epi16(_mm256_and_si256(qhv, mC0), 2));
        for (int g = 0; g < 4; ++g) {
          const int is = 8 * h + 2 * g;
          s[g] = _mm256_set_m128i(_mm_set1_epi16(sc[is + 1]), _mm_set1_epi16(sc[is]));
        }
        for (int64_t m = 0; m < M; ++m) {
          const int8_t* x = qx + m * K + b * 256 + 128 * h;
          __m256i t = sumi[m];
          for (int g = 0; g < 4; ++g) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * g));
            t = _mm256_add_epi32(t, _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], xv), s[g]));
          }
          sumi[m] = t;
        }
      }
      uint16_t dh;
      std::memcpy(&dh, blk + 208, 2);
      const float d = _cvtsh_ss(dh);
      for (int64_t m = 0; m < M; ++m)
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[m]), _mm256_set1_ps(d * dx[m * nb + b]), acc[m]);
    }
    for (int64_t m = 0; m < M; ++m) {
      __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
      v = _mm_add_ps(v, _mm_movehl_ps(v, v));
      v = _mm_add_ss(v, _mm_movehdup_ps(v));
      out[m * ldo + n] = _mm_cvtss_f32(v);
    }
  }
}
#endif
}  // namespace

#define GGML_NS ggml_scalar
#define GGML_LEVEL 0
#include "ggml_dot.h"
#include "ggml_tile.h"
#undef GGML_NS
#undef GGML_LEVEL

#if GGML_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GGML_NS ggml_avx2
#define GGML_LEVEL 1
#define MT_MAX 2
#include "ggml_dot.h"
#include "ggml_tile.h"
#undef GGML_NS
#undef GGML_LEVEL
#undef MT_MAX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#define GGML_NS ggml_vnni
#define GGML_LEVEL 2
#define MT_MAX 4
#include "ggml_dot.h"
#include "ggml_tile.h"
#undef GGML_NS
#undef GGML_LEVEL
#undef MT_MAX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512vbmi,gfni")
#define GGML_NS ggml_zmm
#define GGML_LEVEL 3
#define MT_MAX 4
#define ZMT_MAX ZMT
#include "ggml_dot.h"
#include "ggml_tile.h"
#undef GGML_NS
#undef GGML_LEVEL
#undef MT_MAX
#undef ZMT_MAX
#pragma GCC pop_options
#endif

namespace {

enum Isa { kScalar = 0, kAvx2 = 1, kVnni = 2, kZmm = 3 };
const char* kIsaNames[] = {"scalar", "avx2", "avx512vnni", "avx512vbmi"};
constexpr int kIsas = 4;

int detect_isa() {
#if GGML_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw")) {
    if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni") &&
        __builtin_cpu_supports("avx512dq"))
      return kZmm;
    return kVnni;
  }
  if (avx2) return kAvx2;
#endif
  return kScalar;
}

const int g_cpu_isa = detect_isa();
int g_isa = g_cpu_isa;

using GemvFn = void (*)(int, const uint8_t*, int64_t, int64_t, int64_t, int64_t, const int8_t*, const float*,
                        const float*, int64_t, int64_t, float*, int64_t);
using QuantFn = void (*)(const float*, int64_t, int64_t, int8_t*, float*, float*);
using DeqF32Fn = void (*)(int, const uint8_t*, int64_t, float*);
using DeqBf16Fn = void (*)(int, const uint8_t*, int64_t, uint16_t*);

struct Kernels {
  GemvFn gemv;
  QuantFn quantize;
  DeqF32Fn deq_f32;
  DeqBf16Fn deq_bf16;
};

Kernels kernels() {
#if GGML_X86
  if (g_isa == kZmm)
    return {ggml_zmm::gemv, ggml_zmm::quantize_rows, ggml_zmm::dequant_f32, ggml_zmm::dequant_bf16};
  if (g_isa == kVnni)
    return {ggml_vnni::gemv, ggml_vnni::quantize_rows, ggml_vnni::dequant_f32, ggml_vnni::dequant_bf16};
  if (g_isa == kAvx2)
    return {ggml_avx2::gemv, ggml_avx2::quantize_rows, ggml_avx2::dequant_f32, ggml_avx2::dequant_bf16};
#endif
  return {ggml_scalar::gemv, ggml_scalar::quantize_rows, ggml_scalar::dequant_f32, ggml_scalar::dequant_bf16};
}

// From this many activation rows, Q4_0 / Q4_1 / Q8_0 integer products go through ggml_tile.h
// (one weight unpack per block for all rows; the same numbers as `gemv`; 1 thread, CPU time, on
// the 1B and 135M shapes: equal at 8 rows, 10-25% faster at 9-11).
#ifndef Q6K_ROWS_256
#define Q6K_ROWS_256 16
#endif
#ifndef ROWS_MAX_256
#define ROWS_MAX_256 128
#endif
#ifndef TILE_ROWS
#define TILE_ROWS 9
#endif
constexpr int64_t kTileRows = TILE_ROWS;
// The 256-bit bodies' tiled kernel (8-row panels; AVX2, AVX512-VNNI on 256 bits) from fewer
// rows: forced on this Zen 4 (1 thread, CPU time, the 135M shapes) it beat the row-at-a-time
// kernel from 3 rows (8 rows: 0.07 vs 0.12-0.15 ms on wq|wk|wv; the Q8_0 head 5.7-6.1 vs
// 8.1-11.7 ms) and tied it at 2.
#ifndef TILE_ROWS_256
#define TILE_ROWS_256 3
#endif
constexpr int64_t kTileRows256 = TILE_ROWS_256;
constexpr int64_t kTileRowsQ6K = 32;  // the panel unpack costs more: equal to the 512-bit row kernel at ~24

int64_t tile_rows_min() { return g_isa == kAvx2 || g_isa == kVnni ? kTileRows256 : kTileRows; }

GemvFn tile_kernel() {
#if GGML_X86
  if (g_isa == kZmm) return ggml_zmm::tile_gemv;
  if (g_isa == kVnni) return ggml_vnni::tile_gemv;
  if (g_isa == kAvx2) return ggml_avx2::tile_gemv;
#endif
  return kernels().gemv;
}

// Path 0 (by row count): the most rows that take integer products, above which the bf16 GEMM
// is cheaper, as measured (bench/ggml_rows.py, 1 thread, process CPU time, Zen 4; see
// docs/performance.md "Batched decode"): with the tiled 512-bit kernels the integer path wins up
// to 128 rows on the 135M and 1B shapes (Q6_K too); Q6_K's AVX2 kernel (<= 32 rows a call) up to 64.
// The 256-bit tiled kernels up to 128 as well (docs/performance.md "AVX2 laptops"): forced on the
// Zen 4 they beat its avx512_bf16 GEMM up to 64 rows on the 135M shapes and tie it at 128, and a
// CPU without AVX-512 runs that GEMM 8-10x slower (oneDNN capped at AVX2: the 135M shapes at
// 32-128 rows, 8-10x the tiled kernel's time).
int64_t integer_rows_max(int64_t qt, int64_t K) {
  if (qt == Q6_K) return g_isa == kZmm ? 128 : g_isa >= kAvx2 ? 64 : kRowsSmallM;
  if (g_isa == kZmm) return (K / 32) % 2 == 0 ? 128 : kRowsSmallM;
  return g_isa >= kAvx2 ? ROWS_MAX_256 : kRowsSmallM;
}

// One row of K weights -> floats / bf16, any supported type.
void deq_row_f32(const Kernels& k, int qt, const uint8_t* row, int64_t K, float* out) {
  if (qt == Q6_K) q6k_row_f32(row, K / 256, out);
  else k.deq_f32(qt, row, K / 32, out);
}

void deq_row_bf16(const Kernels& k, int qt, const uint8_t* row, int64_t K, uint16_t* out, std::vector<float>& tmp) {
  if (qt != Q6_K) return k.deq_bf16(qt, row, K / 32, out);
  tmp.resize(K);
  q6k_row_f32(row, K / 256, tmp.data());
  for (int64_t i = 0; i < K; ++i) out[i] = fp32_to_bf16(tmp[i]);
}

// (N, K) of a block matrix, with the same messages as the Python reference.
std::pair<int64_t, int64_t> check_blocks(const at::Tensor& blocks, int64_t qt) {
  TORCH_CHECK_VALUE(block_bytes(qt) != 0, "ggml type ", qt, " has no block kernel (supported: Q4_0, Q4_1, Q8_0, Q6_K)");
  TORCH_CHECK_VALUE(blocks.scalar_type() == at::kByte && blocks.dim() == 2,
                    "blocks must be a 2-D uint8 tensor, got ", blocks.scalar_type(), " ", blocks.sizes());
  TORCH_CHECK_VALUE(blocks.device().is_cpu(), "blocks must be on the CPU");
  const int bb = block_bytes(qt);
  TORCH_CHECK_VALUE(blocks.size(1) % bb == 0, "rows are whole ", bb, "-byte blocks; got ", blocks.size(1),
                    " bytes per row");
  TORCH_CHECK_VALUE(blocks.size(0) <= 1 || blocks.stride(1) == 1, "blocks rows must be contiguous bytes");
  return {blocks.size(0), blocks.size(1) / bb * block_elems(qt)};
}

const uint8_t* row_base(const at::Tensor& blocks, int64_t* stride) {
  *stride = blocks.size(0) > 1 ? blocks.stride(0) : blocks.size(1);
  TORCH_CHECK_VALUE(blocks.size(1) <= 1 || blocks.stride(1) == 1, "blocks rows must be contiguous bytes");
  return blocks.data_ptr<uint8_t>();
}

// One weight of a (possibly multi-part) block_linear: rows [n0, n0 + N) of the output.
struct Part {
  const uint8_t* w;
  int64_t ws, N, n0;
};

std::vector<Part> parts_of(const std::vector<at::Tensor>& blocks, int64_t qtype, int64_t* N, int64_t* K) {
  TORCH_CHECK_VALUE(!blocks.empty(), "block_linear needs at least one weight");
  std::vector<Part> parts;
  *N = 0;
  for (const at::Tensor& b : blocks) {
    const auto [n, k] = check_blocks(b, qtype);
    TORCH_CHECK_VALUE(parts.empty() || k == *K, "all weights of one block_linear have the same columns: ", k, " vs ",
                      *K);
    *K = k;
    int64_t ws;
    const uint8_t* w = row_base(b, &ws);
    parts.push_back({w, ws, n, *N});
    *N += n;
  }
  return parts;
}

// Few rows: quantize the activations once, integer dot products over 8-row tiles of every part
// in parallel (a part's tiles start at its first row: a row's result is the same in one call
// over the parts as in a call of its own, whatever the row count or the thread split).
void linear_small(const float* x, int64_t M, int64_t K, const std::vector<Part>& parts, int64_t N, int64_t qt,
                  float* out) {
  const Kernels k = kernels();
  const GemvFn gemv = M >= tile_rows_min() ? tile_kernel() : k.gemv;
  const int64_t nb = K / block_elems(qt);
  std::vector<int8_t> qx(M * K);
  std::vector<float> dx(M * nb), sx(qt == Q6_K ? 0 : M * nb);
  std::vector<int16_t> bs(qt == Q6_K ? M * nb * 16 : 0);
  if (qt == Q6_K) q6k_quantize_rows(x, M, K, qx.data(), dx.data(), bs.data());
  else k.quantize(x, M, K, qx.data(), dx.data(), sx.data());
#if GGML_X86
  const auto q6k = g_isa == kZmm ? ggml_zmm::q6k_gemv : g_isa >= kAvx2 ? q6k_gemv_avx2 : q6k_gemv_scalar;
  // The AVX2 kernel takes <= 32 rows a call; on the 256-bit levels 16 (their activation rows stay
  // in L1: the 1B head, 128256 x 2048, at 32 rows 202-222 vs 259-276 ms, at 64 rows 396-411 vs
  // 437-497 ms, Zen 4 with the avx2 level forced, 1 thread; the same numbers: rows are independent).
  const int64_t q6k_rows = g_isa == kZmm ? 32 : g_isa >= kAvx2 ? Q6K_ROWS_256 : M;
#else
  const auto q6k = q6k_gemv_scalar;
  const int64_t q6k_rows = M;
#endif
  std::vector<int64_t> first(parts.size() + 1, 0);  // first tile of each part
  for (size_t i = 0; i < parts.size(); ++i) first[i + 1] = first[i] + (parts[i].N + 7) / 8;
  // At least ~32k weights per task so small matrices stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 4096 / K);
  at::parallel_for(0, first.back(), grain, [&](int64_t t0, int64_t t1) {
    for (size_t i = 0; i < parts.size(); ++i) {
      const int64_t a = std::max(t0, first[i]), b = std::min(t1, first[i + 1]);
      if (a >= b) continue;
      const Part& p = parts[i];
      const int64_t r0 = (a - first[i]) * 8, r1 = std::min(p.N, (b - first[i]) * 8);
#if GGML_X86
      if (qt == Q6_K && g_isa == kZmm && M >= kTileRowsQ6K)  // ggml_tile.h: 16-row panels, same numbers
        ggml_zmm::q6k_tile(p.w, p.ws, r0, r1, nb, qx.data(), dx.data(), bs.data(), M, K, out + p.n0, N);
      else
#endif
      if (qt == Q6_K)
        for (int64_t c = 0; c < M; c += q6k_rows)
          q6k(p.w, p.ws, r0, r1, nb, qx.data() + c * K, dx.data() + c * nb, bs.data() + c * nb * 16,
              std::min(q6k_rows, M - c), K, out + p.n0 + c * N, N);
      else gemv(int(qt), p.w, p.ws, r0, r1, nb, qx.data(), dx.data(), sx.data(), M, K, out + p.n0, N);
    }
  });
}

// Many rows: dequantize slices of the weight to bf16 (or fp32: `f32`) in parallel and run one
// GEMM each.
void linear_large(const at::Tensor& xb, const Part& p, int64_t K, int64_t qt, at::Tensor& out, bool f32) {
  const Kernels k = kernels();
  const int64_t N = p.N;
  const int64_t step = std::min(N, std::max<int64_t>(64, kSliceWeights / K));
  at::Tensor wb = at::empty({step, K}, xb.options());
  uint16_t* wp = f32 ? nullptr : reinterpret_cast<uint16_t*>(wb.data_ptr());
  float* wf = f32 ? wb.data_ptr<float>() : nullptr;
  for (int64_t n0 = 0; n0 < N; n0 += step) {
    const int64_t ns = std::min(step, N - n0);
    at::parallel_for(0, ns, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
      std::vector<float> tmp;
      for (int64_t r = r0; r < r1; ++r) {
        if (f32) deq_row_f32(k, int(qt), p.w + (n0 + r) * p.ws, K, wf + r * K);
        else deq_row_bf16(k, int(qt), p.w + (n0 + r) * p.ws, K, wp + r * K, tmp);
      }
    });
    at::Tensor y = at::mm(xb, wb.narrow(0, 0, ns).t());
    out.narrow(1, p.n0 + n0, ns).copy_(y);
  }
}

// What prompt rows (path 2, and path 0 above integer_rows_max) run: the bf16 GEMM (where AMX
// runs it), an fp32 GEMM, or the integer kernels (ggml_tile.h) for every row. Python sets it at
// load (lhama/quant/ggml.py: set_prompt_path): the tiled integer kernels beat torch's bf16 GEMM
// by 5-9x at 256-512 rows without native bf16 and by 1.1-1.8x with AVX512_BF16 (Zen 4), and an
// fp32 GEMM by ~2x (docs/performance.md "Prompt rows").
enum Prompt { kPromptBf16 = 0, kPromptF32 = 1, kPromptInteger = 2 };
const char* kPromptNames[] = {"bf16", "fp32", "integer"};
int g_prompt = kPromptBf16;

// path: 0 picks by row count, 1 integer dot products for every row, 2 the prompt path (g_prompt:
// dequantized bf16 GEMM, fp32 GEMM, or integer dot products).
// Several weights (same K and type): their outputs concatenated along the last dim.
at::Tensor linear_parts(const at::Tensor& x, const std::vector<at::Tensor>& blocks, int64_t qtype, int64_t path) {
  int64_t N = 0, K = 0;
  const std::vector<Part> parts = parts_of(blocks, qtype, &N, &K);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                    "x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x has ", x.dim() ? x.size(-1) : 0, " features, the weight ", K);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be on the CPU");
  TORCH_CHECK_VALUE(path >= 0 && path <= 2, "path must be 0, 1 or 2");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  const at::Tensor x2 = x.reshape({M, K});
  if ((path == 2 || (path == 0 && M > integer_rows_max(qtype, K))) && g_prompt != kPromptInteger) {
    const bool f32 = g_prompt == kPromptF32;
    const at::Tensor xb = x2.to(f32 ? at::kFloat : at::kBFloat16).contiguous();
    at::Tensor out = at::empty({M, N}, x.options());
    for (const Part& p : parts) linear_large(xb, p, K, qtype, out, f32);
    return out.view(out_shape);
  }
  const at::Tensor xf = x2.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  if (M > 0 && N > 0) linear_small(xf.data_ptr<float>(), M, K, parts, N, qtype, out.data_ptr<float>());
  if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
  return out.view(out_shape);
}

at::Tensor block_linear(const at::Tensor& x, const at::Tensor& blocks, int64_t qtype, int64_t path) {
  return linear_parts(x, {blocks}, qtype, path);
}

at::Tensor block_linear_parts(const at::Tensor& x, at::TensorList blocks, int64_t qtype, int64_t path) {
  return linear_parts(x, blocks.vec(), qtype, path);
}

at::Tensor block_rows(const at::Tensor& blocks, int64_t qtype, const at::Tensor& ids) {
  const auto [N, K] = check_blocks(blocks, qtype);
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kLong, "ids must be int64");
  const at::Tensor idc = ids.reshape({-1}).contiguous();
  const int64_t n = idc.numel();
  const int64_t* id = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_INDEX(id[i] >= -N && id[i] < N, "row ", id[i], " out of range for ", N, " rows");
  int64_t ws;
  const uint8_t* w = row_base(blocks, &ws);
  at::Tensor out = at::empty({n, K}, blocks.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const Kernels k = kernels();
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = id[i] < 0 ? id[i] + N : id[i];
      deq_row_f32(k, int(qtype), w + r * ws, K, o + i * K);
    }
  });
  return out;
}

at::Tensor dequantize(const at::Tensor& blocks, int64_t qtype) {
  const auto [N, K] = check_blocks(blocks, qtype);
  int64_t ws;
  const uint8_t* w = row_base(blocks, &ws);
  at::Tensor out = at::empty({N, K}, blocks.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const Kernels k = kernels();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) deq_row_f32(k, int(qtype), w + r * ws, K, o + r * K);
  });
  return out;
}

std::string set_isa(const std::string& name) {
  int want = -1;
  for (int i = 0; i < kIsas; ++i)
    if (name == kIsaNames[i]) want = i;
  TORCH_CHECK_VALUE(want >= 0, "unknown ISA '", name, "' (one of: scalar, avx2, avx512vnni, avx512vbmi)");
  g_isa = std::min(want, g_cpu_isa);
  return kIsaNames[g_isa];
}

std::string get_isa() { return kIsaNames[g_isa]; }

std::string set_prompt_path(const std::string& name) {
  int want = -1;
  for (int i = 0; i < 3; ++i)
    if (name == kPromptNames[i]) want = i;
  TORCH_CHECK_VALUE(want >= 0, "unknown prompt path '", name, "' (one of: bf16, fp32, integer)");
  g_prompt = want;
  return kPromptNames[g_prompt];
}

std::string get_prompt_path() { return kPromptNames[g_prompt]; }

}  // namespace

TORCH_LIBRARY(lhama_ggml, m) {
  m.def("block_linear(Tensor x, Tensor blocks, int qtype, int path=0) -> Tensor");
  m.def("block_linear_parts(Tensor x, Tensor[] blocks, int qtype, int path=0) -> Tensor");
  m.def("block_rows(Tensor blocks, int qtype, Tensor ids) -> Tensor");
  m.def("dequantize(Tensor blocks, int qtype) -> Tensor");
  m.def("set_isa(str name) -> str", &set_isa);
  m.def("get_isa() -> str", &get_isa);
  m.def("set_prompt_path(str name) -> str", &set_prompt_path);
  m.def("get_prompt_path() -> str", &get_prompt_path);
}

TORCH_LIBRARY_IMPL(lhama_ggml, CPU, m) {
  m.impl("block_linear", &block_linear);
  m.impl("block_linear_parts", &block_linear_parts);
  m.impl("block_rows", &block_rows);
  m.impl("dequantize", &dequantize);
}
