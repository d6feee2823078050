// The per-ISA body of the block kernels, included once per instruction set by ggml_ops.cpp
// inside `#pragma GCC target(...)` with GGML_NS (namespace) and GGML_LEVEL (0 scalar, 1 AVX2,
// 2 AVX512-VNNI on 256-bit vectors) defined. No include guard: that is the point.
//
// Few rows (decode): llama.cpp's scheme. Each activation row is quantized per 32 values to int8
// (d = amax / 127, q = round(x / d)) and multiplied with the weight's integers:
//   Q4_0: w = d_w (n - 8)     -> sum w x = d_w d_x sum(n q) - 8 d_w (d_x sum q)
//   Q4_1: w = d_w n + m_w     -> sum w x = d_w d_x sum(n q) + m_w (d_x sum q)
//   Q8_0: w = d_w q_w         -> sum w x = d_w d_x sum(q_w q)
// so each block is one integer dot product (nibbles are unsigned: vpdpbusd / maddubs take them
// as they are; Q8_0 moves the weight's sign onto the activation) plus a scalar bias term.

namespace GGML_NS {

#if GGML_LEVEL >= 1
static inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 bytes of nibbles -> 32 unsigned bytes in element order (low nibbles first).
static inline __m256i unpack_nibbles(const uint8_t* p) {
  // One broadcast load, a per-half shift, one mask (the load/shift/insert/mask sequence was
  // 5-10% slower on the default model's shapes).
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if GGML_LEVEL >= 2
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
#else
static inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}
#endif

// Activation rows [M, K] (float) -> int8 q [M, K], scale d and d * sum(q) per 32-block.
static void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* d, float* s) {
  const int64_t nb = K / 32;
#if GGML_LEVEL >= 1
  // The same numbers as the plain loop below: max |x| is exact, the division and reciprocal are
  // the same IEEE operations, cvtps rounds half to even in the default MXCSR mode.
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* xb = x + i * 32;
    __m256 v[4];
    __m256 mx = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float dd = _mm_cvtss_f32(m4) / 127.f;
    const float id = dd != 0.f ? 1.f / dd : 0.f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i qi[4];
    for (int j = 0; j < 4; ++j) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));
    const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256(sum32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    // int32 -> int8 in element order: packs work per 128-bit lane, a permute restores the order.
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i * 32), ordered);
    d[i] = dd;
    s[i] = dd * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
  return;
#endif
  for (int64_t i = 0; i < M * nb; ++i) {
    const float* xb = x + i * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float dd = amax / 127.f;
    const float id = dd != 0.f ? 1.f / dd : 0.f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      // Round half to even (|x * id| <= 127 + ulp): adding and subtracting 1.5 * 2^23 rounds
      // in the FPU's default mode, in a few instructions (nearbyint is a libm call per value).
      const float r = (xb[j] * id + 12582912.f) - 12582912.f;
      const int v = static_cast<int>(r);
      q[i * 32 + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[i] = dd;
    s[i] = dd * static_cast<float>(sum);
  }
}

#if GGML_LEVEL >= 1
// out[m * ldo + r] = row r of the weight (R rows from w, ws bytes apart) . activation row m,
// for MT activation rows. Each weight block is loaded once for all MT rows.
template <int QT, int R, int MT>
static inline void tile(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                        const float* sx, int64_t K, float* out, int64_t ldo, bool pf) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  __m256 acc[R][MT];
  float bias[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm256_setzero_ps(), bias[r][m] = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[R], wa[R];
    float wd[R], wc[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * ws + b * BB;
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(blk + PREFETCH_ROWS * ws), _MM_HINT_T0);
      wd[r] = fp16(blk);
      if constexpr (QT == Q8_0) {
        wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        wa[r] = _mm256_sign_epi8(wv[r], wv[r]);  // |q|, unsigned (128 stays 128)
      } else if constexpr (QT == Q4_0) {
        wc[r] = -8.f * wd[r];
        wv[r] = unpack_nibbles(blk + 2);
      } else {
        wc[r] = fp16(blk + 2);
        wv[r] = unpack_nibbles(blk + 4);
      }
    }
    for (int m = 0; m < MT; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + m * K + b * 32));
      const float xd = dx[m * (K / 32) + b];
      for (int r = 0; r < R; ++r) {
        __m256i dot;
        if constexpr (QT == Q8_0) dot = dot_u8s8(wa[r], _mm256_sign_epi8(xv, wv[r]));
        else dot = dot_u8s8(wv[r], xv);
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(wd[r] * xd), acc[r][m]);
        if constexpr (QT != Q8_0) bias[r][m] += wc[r] * sx[m * (K / 32) + b];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) out[m * ldo + r] = hsum(acc[r][m]) + bias[r][m];
}

template <int QT, int R>
static inline void rows_all_m(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                              const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  // The first pass over these rows prefetches the rows PREFETCH_ROWS further (a row of a
  // 576-wide matrix is 360-612 bytes: the hardware prefetcher alone reached ~half of the
  // streaming bandwidth on the 30 MB head).
  int64_t m = 0;
  bool pf = true;
  for (; m + MT_MAX <= M; m += MT_MAX, pf = false)
    tile<QT, R, MT_MAX>(w, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, K, out + m * ldo, ldo, pf);
  const int64_t left = M - m;
  const int8_t* q = qx + m * K;
  const float *d = dx + m * nb, *s = sx + m * nb;
  float* o = out + m * ldo;
  if (left == 1) tile<QT, R, 1>(w, ws, nb, q, d, s, K, o, ldo, pf);
#if MT_MAX > 2
  else if (left == 2) tile<QT, R, 2>(w, ws, nb, q, d, s, K, o, ldo, pf);
  else if (left == 3) tile<QT, R, 3>(w, ws, nb, q, d, s, K, o, ldo, pf);
#endif
}

// Lane r of the result = the sum of d[r]'s 8 lanes.
static inline __m256i reduce8(const __m256i d[8]) {
  const __m256i a01 = _mm256_hadd_epi32(d[0], d[1]), a23 = _mm256_hadd_epi32(d[2], d[3]);
  const __m256i a45 = _mm256_hadd_epi32(d[4], d[5]), a67 = _mm256_hadd_epi32(d[6], d[7]);
  const __m256i lo4 = _mm256_hadd_epi32(a01, a23), hi4 = _mm256_hadd_epi32(a45, a67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(lo4, hi4, 0x20), _mm256_permute2x128_si256(lo4, hi4, 0x31));
}

// 8 fp16 values in the low (hi = false) or high halves of 8 int32 lanes -> 8 floats.
static inline __m256 halves_to_ps(__m256i g, bool hi) {
  const __m256i v = hi ? _mm256_srli_epi32(g, 16) : _mm256_and_si256(g, _mm256_set1_epi32(0xFFFF));
  return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

// The first 4 bytes of 8 rows' blocks at `base` (fp16 d, Q4_1's fp16 m), lane r = row r: what a
// gather of 8 dwords gives, from 8 plain loads and blends. Row r's 16-byte load starts 4 (r % 4)
// bytes before its block, so the block's first dword lands in dword r % 4; rows 0-3 and 4-7 fill
// one half each. Every byte read lies between row 0's block and row 7's (rows are >= 18 bytes
// apart: nothing before the first row or past the last one is touched).
static inline __m256i headers8(const uint8_t* base, int64_t ws) {
  __m128i v[8];
  for (int r = 0; r < 8; ++r) v[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + r * ws - 4 * (r % 4)));
  const __m128i lo = _mm_blend_epi32(_mm_blend_epi32(v[0], v[1], 0x2), _mm_blend_epi32(v[2], v[3], 0x8), 0xC);
  const __m128i hi = _mm_blend_epi32(_mm_blend_epi32(v[4], v[5], 0x2), _mm_blend_epi32(v[6], v[7], 0x8), 0xC);
  return _mm256_set_m128i(hi, lo);
}

// 8 weight rows at once: the 8 integer dot products of a block are reduced into one vector
// (lane r = row r), so the per-block float work (the scales from the rows' own loads, the
// int -> float conversion, the fma, Q4's bias term) is shared by 8 rows; out[m * ldo + r] for
// r < 8 (the scales came from an 8-dword gather before: the same numbers; gathers are slow on
// AMD Zen 2/3, the AVX2-only laptops' cores). From 3 activation rows ggml_tile.h's 8-row panels
// take over (the same numbers again).
template <int QT, int MT>
static inline void tile8(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                         const float* sx, int64_t K, float* out, int64_t ldo, bool pf) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  __m256 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* base = w + b * BB;
    const __m256i g = headers8(base, ws);
    const __m256 wd = halves_to_ps(g, false);
    __m256 wc = _mm256_setzero_ps();
    if constexpr (QT == Q4_0) wc = _mm256_mul_ps(wd, _mm256_set1_ps(-8.f));
    if constexpr (QT == Q4_1) wc = halves_to_ps(g, true);
    __m256i wv[8];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* blk = base + r * ws;
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(blk + PREFETCH_ROWS * ws), _MM_HINT_T0);
      if constexpr (QT == Q8_0) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      else wv[r] = unpack_nibbles(blk + (QT == Q4_0 ? 2 : 4));
    }
    for (int m = 0; m < MT; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + m * K + b * 32));
      __m256i d[8];
      for (int r = 0; r < 8; ++r) {
        if constexpr (QT == Q8_0) d[r] = dot_u8s8(_mm256_sign_epi8(wv[r], wv[r]), _mm256_sign_epi8(xv, wv[r]));
        else d[r] = dot_u8s8(wv[r], xv);
      }
      const __m256 scale = _mm256_mul_ps(wd, _mm256_set1_ps(dx[m * nb + b]));
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(d)), scale, acc[m]);
      if constexpr (QT != Q8_0) acc[m] = _mm256_fmadd_ps(wc, _mm256_set1_ps(sx[m * nb + b]), acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) _mm256_storeu_ps(out + m * ldo, acc[m]);
}

template <int QT>
static inline void rows8_all_m(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                               const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  int64_t m = 0;
  bool pf = true;
  for (; m + MT_MAX <= M; m += MT_MAX, pf = false)
    tile8<QT, MT_MAX>(w, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, K, out + m * ldo, ldo, pf);
  const int64_t left = M - m;
  const int8_t* q = qx + m * K;
  const float *d = dx + m * nb, *s = sx + m * nb;
  float* o = out + m * ldo;
  if (left == 1) tile8<QT, 1>(w, ws, nb, q, d, s, K, o, ldo, pf);
#if MT_MAX > 2
  else if (left == 2) tile8<QT, 2>(w, ws, nb, q, d, s, K, o, ldo, pf);
  else if (left == 3) tile8<QT, 3>(w, ws, nb, q, d, s, K, o, ldo, pf);
#endif
}


#if GGML_LEVEL >= 3
// AVX512 (VBMI, GFNI, VNNI; 512-bit): 8 weight rows x 2 blocks per step. One masked 64-byte load
// holds a row's two blocks; vpermb lays their nibble bytes out twice (element order), one
// GF(2) affine op per qword takes the low or the high nibbles, one vpdpbusd per row and
// activation row. The 8 rows' 16-lane sums are reduced by unpack/add into one vector whose
// lanes are [rows 0-3 block b, rows 0-3 block b+1, rows 4-7 block b, rows 4-7 block b+1], so the
// float work (the scales, the conversion, the fmas, Q4's bias term) is shared by 16 (row, block)
// pairs. Even and odd blocks accumulate in separate lanes and are added at the end. The 16
// scales come from the rows' own loads (4 two-row word permutes + 3 blends; a 16-lane gather
// cost a quarter of the kernel's time). Q8_0 (34-byte blocks, signed weights): the pair's first
// 64 bytes and its last 4 through one two-source byte permute, |w| against x signed like w.
static inline __m512i reduce16(const __m512i d[8]) {
  __m512i u[4], v[2];
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2 * i], d[2 * i + 1]), _mm512_unpackhi_epi32(d[2 * i], d[2 * i + 1]));
  for (int i = 0; i < 2; ++i)
    v[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * i], u[2 * i + 1]), _mm512_unpackhi_epi64(u[2 * i], u[2 * i + 1]));
  // v[0]: per 128-bit lane, rows 0-3 (lanes: b lo, b hi, b+1 lo, b+1 hi); v[1] rows 4-7.
  return _mm512_add_epi32(_mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

template <int QT, int MT>
static inline void tile8z(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                          const float* sx, int64_t K, float* out, int64_t ldo, bool pf) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  constexpr int OFF = QT == Q4_1 ? 4 : 2;
  // Result lane l -> row (l / 8) * 4 + l % 4, block b + (l / 4) % 2. Q8_0 from 5 activation rows
  // up takes its scales by a gather (there the permutes cost more than they save: the default
  // model's head at 8 rows 4.4 vs 4.9 ms; at 1 row 2.0-2.2 vs 2.4-2.8 without the gather).
  constexpr bool kGather = QT == Q8_0 && MT > 4;
  const __m512i idx = _mm512_setr_epi32(0, int(ws), int(2 * ws), int(3 * ws), BB, int(ws + BB), int(2 * ws + BB),
                                        int(3 * ws + BB), int(4 * ws), int(5 * ws), int(6 * ws), int(7 * ws),
                                        int(4 * ws + BB), int(5 * ws + BB), int(6 * ws + BB), int(7 * ws + BB));
  // Byte j of 64: nibble byte (j % 16) of block (j / 32); qwords 2, 3, 6, 7 take the high nibbles.
  alignas(64) static const uint8_t kPerm[64] = {
      OFF + 0,  OFF + 1,  OFF + 2,  OFF + 3,  OFF + 4,  OFF + 5,  OFF + 6,  OFF + 7,  OFF + 8,  OFF + 9,  OFF + 10,
      OFF + 11, OFF + 12, OFF + 13, OFF + 14, OFF + 15, OFF + 0,  OFF + 1,  OFF + 2,  OFF + 3,  OFF + 4,  OFF + 5,
      OFF + 6,  OFF + 7,  OFF + 8,  OFF + 9,  OFF + 10, OFF + 11, OFF + 12, OFF + 13, OFF + 14, OFF + 15,
      BB + OFF + 0,  BB + OFF + 1,  BB + OFF + 2,  BB + OFF + 3,  BB + OFF + 4,  BB + OFF + 5,  BB + OFF + 6,
      BB + OFF + 7,  BB + OFF + 8,  BB + OFF + 9,  BB + OFF + 10, BB + OFF + 11, BB + OFF + 12, BB + OFF + 13,
      BB + OFF + 14, BB + OFF + 15, BB + OFF + 0,  BB + OFF + 1,  BB + OFF + 2,  BB + OFF + 3,  BB + OFF + 4,
      BB + OFF + 5,  BB + OFF + 6,  BB + OFF + 7,  BB + OFF + 8,  BB + OFF + 9,  BB + OFF + 10, BB + OFF + 11,
      BB + OFF + 12, BB + OFF + 13, BB + OFF + 14, BB + OFF + 15};
  const __m512i perm = _mm512_load_si512(kPerm);
  const uint64_t lo = 0x0102040800000000ull, hi = 0x1020408000000000ull;
  const __m512i aff = _mm512_setr_epi64(lo, lo, hi, hi, lo, lo, hi, hi);
  const __mmask64 kmask = (BB * 2 >= 64) ? ~0ull : ((1ull << (BB * 2)) - 1);
  const __m512i dsel = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  // Word selectors for the headers: rows (2i, 2i + 1) -> words of lanes 4 (i / 2) * 2 + 2 (i % 2)
  // + {0, 1} (block b) and + {4, 5} (block b + 1); d at word 0 / BB / 2 of a row's load, m after.
  __m512i hsel[4];
  for (int i = 0; i < 4; ++i) {
    alignas(64) int16_t t[32] = {0};
    const int l0 = (i / 2) * 8 + (i % 2) * 2;
    for (int j = 0; j < 2; ++j) {
      const int src = j * 32;  // the second row of the pair: the permute's other operand
      t[l0 + j] = int16_t(src);
      t[l0 + j + 4] = int16_t(src + BB / 2);
      t[16 + l0 + j] = int16_t(src + 1);
      t[16 + l0 + j + 4] = int16_t(src + BB / 2 + 1);
    }
    hsel[i] = _mm512_load_si512(t);
  }
  __m512i raw[8];
  // Q8_0: the 64 weight bytes of a block pair from its first 64 bytes and the 4 after them.
  alignas(64) uint8_t q8b[64];
  for (int j = 0; j < 64; ++j) q8b[j] = uint8_t(j < 32 ? 2 + j : j < 60 ? 4 + j : 64 + (j - 60));
  const __m512i q8sel = _mm512_load_si512(q8b);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b += 2) {
    const uint8_t* base = w + b * BB;
    __m512 wd, wc = _mm512_setzero_ps();
    __m512i wv[8];
    __mmask64 neg[8];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* blk = base + r * ws;
      // Into L2 for few activation rows (more weight bytes per unit of work), L1 for many (the
      // default model's Q8_0 head at 8 rows: 4.5 ms with T0, 5.1 with T2; at 1 row 2.5 vs 3.1).
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(blk + PREFETCH_ROWS * ws), MT > 4 ? _MM_HINT_T0 : _MM_HINT_T2);
      if constexpr (kGather) {
        const __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + BB + 2)), 1);
        neg[r] = _mm512_movepi8_mask(v);
        wv[r] = _mm512_abs_epi8(v);
      } else if constexpr (QT == Q8_0) {
        // Bytes 0-63 of the pair (d, q of block b, d and 28 q of block b + 1) and its last 4.
        raw[r] = _mm512_loadu_si512(blk);
        int32_t last;
        std::memcpy(&last, blk + 64, 4);
        const __m512i v = _mm512_permutex2var_epi8(raw[r], q8sel, _mm512_set1_epi32(last));
        neg[r] = _mm512_movepi8_mask(v);
        wv[r] = _mm512_abs_epi8(v);
      } else {
        raw[r] = _mm512_maskz_loadu_epi8(kmask, blk);
        wv[r] = _mm512_gf2p8affine_epi64_epi8(_mm512_permutexvar_epi8(perm, raw[r]), aff, 0);
      }
    }
    if constexpr (kGather) {
      wd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(idx, reinterpret_cast<const int*>(base), 1)));
    } else {
      // The headers from the rows' own loads (a gather cost a quarter of the time): 16-bit words
      // d (0-15) and Q4_1's m (16-31) in the lane order above, two rows per permute, then blends.
      const __m512i h01 = _mm512_permutex2var_epi16(raw[0], hsel[0], raw[1]);
      const __m512i h23 = _mm512_permutex2var_epi16(raw[2], hsel[1], raw[3]);
      const __m512i h45 = _mm512_permutex2var_epi16(raw[4], hsel[2], raw[5]);
      const __m512i h67 = _mm512_permutex2var_epi16(raw[6], hsel[3], raw[7]);
      const __m512i h = _mm512_mask_mov_epi16(_mm512_mask_mov_epi16(h01, 0x00CC00CCu, h23), 0xFF00FF00u,
                                              _mm512_mask_mov_epi16(h45, 0xCC00CC00u, h67));
      wd = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
      if constexpr (QT == Q4_0) wc = _mm512_mul_ps(wd, _mm512_set1_ps(-8.f));
      if constexpr (QT == Q4_1) wc = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
    }
    for (int m = 0; m < MT; ++m) {
      const __m512i xv = _mm512_loadu_si512(qx + m * K + b * 32);
      __m512i d[8];
      for (int r = 0; r < 8; ++r) {
        if constexpr (QT == Q8_0)
          d[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r],
                                     _mm512_mask_sub_epi8(xv, neg[r], _mm512_setzero_si512(), xv));
        else d[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
      }
      const __m512 xd = _mm512_permutexvar_ps(dsel, _mm512_castps256_ps512(_mm256_castpd_ps(
                                                        _mm256_broadcast_sd(reinterpret_cast<const double*>(dx + m * nb + b)))));
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(reduce16(d)), _mm512_mul_ps(wd, xd), acc[m]);
      if constexpr (QT != Q8_0) {
        const __m512 xs = _mm512_permutexvar_ps(dsel, _mm512_castps256_ps512(_mm256_castpd_ps(
                                                          _mm256_broadcast_sd(reinterpret_cast<const double*>(sx + m * nb + b)))));
        acc[m] = _mm512_fmadd_ps(wc, xs, acc[m]);
      }
    }
  }
  for (int m = 0; m < MT; ++m) {
    const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(acc[m], acc[m], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(acc[m], acc[m], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm256_storeu_ps(out + m * ldo, _mm512_castps512_ps256(s));
  }
}

template <int QT>
static inline void rows8z_all_m(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx,
                                const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  int64_t m = 0;
  bool pf = true;
  for (; m + ZMT_MAX <= M; m += ZMT_MAX, pf = false)
    tile8z<QT, ZMT_MAX>(w, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, K, out + m * ldo, ldo, pf);
  const int64_t left = M - m;
  const int8_t* q = qx + m * K;
  const float *d = dx + m * nb, *s = sx + m * nb;
  float* o = out + m * ldo;
  switch (left) {
    case 1: tile8z<QT, 1>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
    case 2: tile8z<QT, 2>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
    case 3: tile8z<QT, 3>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
#if ZMT_MAX > 4
    case 4: tile8z<QT, 4>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
    case 5: tile8z<QT, 5>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
    case 6: tile8z<QT, 6>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
    case 7: tile8z<QT, 7>(w, ws, nb, q, d, s, K, o, ldo, pf); break;
#endif
    default: break;
  }
}

// Q6_K x Q8_K (the activation quantized per 256 values, sums of 16), 512-bit: a block's 256
// six-bit weights are unpacked into 4 vectors of 64 in element order (ql's nibbles, qh's bit
// pairs moved into bits 4-5 by one per-qword shift each), one vpdpbusd per 64 weights and
// activation row, times the 16 scales spread over the lanes (lane j of chunk c: scale
// 4c + j / 4). The same numbers as q6k_gemv_avx2 (ggml_ops.cpp), bit for bit: its 8 int32 lanes
// per block (lane i: elements 4i..4i+3 of each 32, times their scale, minus 32 sc bsum for
// groups 2i, 2i + 1) are exact integers, formed here by folding lanes i and i + 8; each lane
// is converted and fma'd with d * d_x per block in block order and the 8 lanes are added in
// the same order at the end. One weight row at a time (a sequential stream), rows Q6K_PF ahead
// prefetched into L2; up to 8 activation rows per pass over a row's blocks.
#ifndef Q6K_PF
#define Q6K_PF 4
#endif
template <int MT>
static void q6k_rows_z(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                       const float* dx, const int16_t* bs, int64_t K, float* out, int64_t ldo) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i shl = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2), shr = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
  __m512i sidx[4];
  for (int c = 0; c < 4; ++c)
    sidx[c] = _mm512_add_epi32(_mm512_set1_epi32(4 * c),
                               _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[MT];
    for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
    const uint8_t* row = w + n * ws;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * 210;
      const char* pf = reinterpret_cast<const char*>(blk + Q6K_PF * ws);
      _mm_prefetch(pf, _MM_HINT_T2);
      _mm_prefetch(pf + 64, _MM_HINT_T2);
      _mm_prefetch(pf + 128, _MM_HINT_T2);
      _mm_prefetch(pf + 192, _MM_HINT_T2);
      __m512i W[4], S[4];
      for (int h = 0; h < 2; ++h) {
        const __m512i ql = _mm512_loadu_si512(blk + 64 * h);
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h)));
        W[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi64(qh, shl), m30));
        W[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                       _mm512_and_si512(_mm512_srlv_epi64(qh, shr), m30));
      }
      const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192));
      const __m512i sc32 = _mm512_cvtepi8_epi32(sc8);
      for (int c = 0; c < 4; ++c) S[c] = _mm512_permutexvar_epi32(sidx[c], sc32);
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
      const float d = fp16(blk + 208);
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = qx + m * K + b * 256;
        __m512i t = _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_loadu_si512(x)), S[0]);
        for (int c = 1; c < 4; ++c)
          t = _mm512_add_epi32(
              t, _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), W[c], _mm512_loadu_si512(x + 64 * c)), S[c]));
        const __m256i bsv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs + (m * nb + b) * 16));
        const __m256i s8 = _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1)),
                                            _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsv), 5));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_set1_ps(d * dx[m * nb + b]), acc[m]);
      }
    }
    for (int m = 0; m < MT; ++m) {
      __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
      v = _mm_add_ps(v, _mm_movehl_ps(v, v));
      v = _mm_add_ss(v, _mm_movehdup_ps(v));
      out[m * ldo + n] = _mm_cvtss_f32(v);
    }
  }
}

// q6k_gemv_avx2's contract (any M; its numbers).
static void q6k_gemv(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                     const float* dx, const int16_t* bs, int64_t M, int64_t K, float* out, int64_t ldo) {
  for (int64_t m = 0; m < M; m += 8) {
    const int8_t* q = qx + m * K;
    const float* d = dx + m * nb;
    const int16_t* s = bs + m * nb * 16;
    float* o = out + m * ldo;
    switch (std::min<int64_t>(8, M - m)) {
      case 1: q6k_rows_z<1>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 2: q6k_rows_z<2>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 3: q6k_rows_z<3>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 4: q6k_rows_z<4>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 5: q6k_rows_z<5>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 6: q6k_rows_z<6>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      case 7: q6k_rows_z<7>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
      default: q6k_rows_z<8>(w, ws, n0, n1, nb, q, d, s, K, o, ldo); break;
    }
  }
}
#endif

template <int QT>
static void gemv_rows(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  int64_t n = n0;
#if GGML_LEVEL >= 3
  if (nb % 2 == 0)
    for (; n + 8 <= n1; n += 8) rows8z_all_m<QT>(w + n * ws, ws, nb, qx, dx, sx, M, K, out + n, ldo);
#endif
  for (; n + 8 <= n1; n += 8) rows8_all_m<QT>(w + n * ws, ws, nb, qx, dx, sx, M, K, out + n, ldo);
  for (; n + 4 <= n1; n += 4) rows_all_m<QT, 4>(w + n * ws, ws, nb, qx, dx, sx, M, K, out + n, ldo);
  for (; n < n1; ++n) rows_all_m<QT, 1>(w + n * ws, ws, nb, qx, dx, sx, M, K, out + n, ldo);
}

// One row of blocks -> K floats, and -> K bf16 (round to nearest even, as torch rounds).
template <int QT>
static inline void dequant_block(const uint8_t* blk, __m256 out[4]) {
  const __m256 d = _mm256_set1_ps(fp16(blk));
  __m256i v;
  if constexpr (QT == Q8_0) v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  else v = unpack_nibbles(blk + (QT == Q4_0 ? 2 : 4));
  // The gguf package's order of operations exactly: (n - 8) * d, n * d + m, q * d.
  const __m256 m = QT == Q4_1 ? _mm256_set1_ps(fp16(blk + 2)) : _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    __m128i b8 = j < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
    if (j & 1) b8 = _mm_srli_si128(b8, 8);
    const __m256i i32 = QT == Q8_0 ? _mm256_cvtepi8_epi32(b8) : _mm256_cvtepu8_epi32(b8);
    __m256 f = _mm256_cvtepi32_ps(i32);
    if constexpr (QT == Q4_0) f = _mm256_sub_ps(f, _mm256_set1_ps(8.f));
    f = _mm256_mul_ps(f, d);
    if constexpr (QT == Q4_1) f = _mm256_add_ps(f, m);
    out[j] = f;
  }
}

template <int QT>
static void dequant_row_f32(const uint8_t* row, int64_t nb, float* out) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  __m256 v[4];
  for (int64_t b = 0; b < nb; ++b) {
    dequant_block<QT>(row + b * BB, v);
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + j * 8, v[j]);
  }
}

static inline __m128i to_bf16(__m256 f) {
  __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

template <int QT>
static void dequant_row_bf16(const uint8_t* row, int64_t nb, uint16_t* out) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  __m256 v[4];
  for (int64_t b = 0; b < nb; ++b) {
    dequant_block<QT>(row + b * BB, v);
    for (int j = 0; j < 4; ++j) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + b * 32 + j * 8), to_bf16(v[j]));
  }
}

#else  // GGML_LEVEL 0: plain C++

template <int QT>
static void gemv_rows(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w + n * ws + b * BB;
        const int8_t* q = qx + m * K + b * 32;
        const float wd = fp16(blk), xd = dx[m * nb + b], xs = sx[m * nb + b];
        int32_t dot = 0;
        if constexpr (QT == Q8_0) {
          const int8_t* qw = reinterpret_cast<const int8_t*>(blk + 2);
          for (int j = 0; j < 32; ++j) dot += int32_t(qw[j]) * q[j];
          acc += wd * xd * float(dot);
        } else {
          const uint8_t* nib = blk + (QT == Q4_0 ? 2 : 4);
          for (int j = 0; j < 16; ++j) dot += int32_t(nib[j] & 15) * q[j] + int32_t(nib[j] >> 4) * q[j + 16];
          const float wc = QT == Q4_0 ? -8.f * wd : fp16(blk + 2);
          acc += wd * xd * float(dot) + wc * xs;
        }
      }
      out[m * ldo + n] = acc;
    }
  }
}

template <int QT>
static void dequant_row_f32(const uint8_t* row, int64_t nb, float* out) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = row + b * BB;
    const float d = fp16(blk);
    if constexpr (QT == Q8_0) {
      for (int j = 0; j < 32; ++j) out[b * 32 + j] = float(int8_t(blk[2 + j])) * d;
    } else {
      const uint8_t* nib = blk + (QT == Q4_0 ? 2 : 4);
      for (int j = 0; j < 16; ++j) {
        if constexpr (QT == Q4_0) {
          out[b * 32 + j] = float(int(nib[j] & 15) - 8) * d;
          out[b * 32 + j + 16] = float(int(nib[j] >> 4) - 8) * d;
        } else {
          const float m = fp16(blk + 2);
          out[b * 32 + j] = float(nib[j] & 15) * d + m;
          out[b * 32 + j + 16] = float(nib[j] >> 4) * d + m;
        }
      }
    }
  }
}

template <int QT>
static void dequant_row_bf16(const uint8_t* row, int64_t nb, uint16_t* out) {
  float tmp[32];
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  for (int64_t b = 0; b < nb; ++b) {
    dequant_row_f32<QT>(row + b * BB, 1, tmp);
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = fp32_to_bf16(tmp[j]);
  }
}
#endif

// The table ggml_ops.cpp dispatches through.
static void gemv(int qt, const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                 const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  if (qt == Q4_0) gemv_rows<Q4_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  else if (qt == Q4_1) gemv_rows<Q4_1>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  else gemv_rows<Q8_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
}

static void dequant_f32(int qt, const uint8_t* row, int64_t nb, float* out) {
  if (qt == Q4_0) dequant_row_f32<Q4_0>(row, nb, out);
  else if (qt == Q4_1) dequant_row_f32<Q4_1>(row, nb, out);
  else dequant_row_f32<Q8_0>(row, nb, out);
}

static void dequant_bf16(int qt, const uint8_t* row, int64_t nb, uint16_t* out) {
  if (qt == Q4_0) dequant_row_bf16<Q4_0>(row, nb, out);
  else if (qt == Q4_1) dequant_row_bf16<Q4_1>(row, nb, out);
  else dequant_row_bf16<Q8_0>(row, nb, out);
}

}  // namespace GGML_NS
