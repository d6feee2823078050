// Many activation rows (9-128, Q6_K 32-128: batched decode) on Q4_0 / Q4_1 / Q8_0 blocks with integer dot
// products, included by ggml_ops.cpp right after ggml_dot.h, in the same namespace (its helpers
// and `gemv` are reused; nothing there changes). The 512-bit body (GGML_LEVEL 3: AVX512 VNNI)
// has 16-row panels, the 256-bit ones (levels 1, 2: AVX2, AVX512-VNNI on 256 bits; from 3 rows)
// 8-row panels (below); the scalar body's `tile_gemv` is the row-at-a-time `gemv`.
//
// Why: `gemv` unpacks a weight block once per group of <= 8 activation rows and reduces each
// row's 16-lane dot products horizontally (reduce16); at 32 rows that is 4 unpacks and 4x the
// reductions per block. Here a panel of 16 weight rows x 1 block is laid out once as 8 vectors
// (lane n = weight row n, 4 bytes = block elements 4j..4j+3, from 4-8 gathers), and every
// activation row is swept against it with vpdpbusd on a broadcast of 4 activation bytes: the
// 16 lanes are 16 output columns, so no horizontal reduction is left, and the unpack is paid
// once per block for all rows. The float accumulators (2 per activation row: even and odd
// blocks) live in a small L1 buffer.
//
// Same numbers as `gemv`'s 512-bit body, bit for bit: per (row, block) the integer dot product
// is exact in both, and the float steps are the same operations in the same order
// (acc = fma(float(dot), d_w * d_x, acc); Q4: acc = fma(c_w, d_x sum q, acc); even and odd
// blocks in separate accumulators, added at the end). So a row's result does not depend on how
// many rows it is batched with, on which kernel ran, or on the thread split.
// Q8_0 (signed weights, the activation is the broadcast signed operand): w + 128 as unsigned
// bytes, minus 128 * sum(q) of the activation block, still exact in int32.

namespace GGML_NS {

// 128 * sum(q) of each of n activation blocks of 32 int8 values: the Q8_0 kernels add 128 to the
// weights (to multiply unsigned by signed bytes) and take this back out.
static inline std::vector<int32_t> q8_block_sums(const int8_t* qx, int64_t n) {
  std::vector<int32_t> qs(n);
  for (int64_t i = 0; i < n; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += qx[i * 32 + j];
    qs[i] = 128 * s;
  }
  return qs;
}

#if GGML_LEVEL >= 3
typedef int32_t __attribute__((may_alias, aligned(1))) tile_i32u;  // 4 activation bytes, any address

// Rows [n, n + 16) x activation rows [m0, m0 + mc); acc: 2 * 16 floats per activation row.
template <int QT>
static void tile16(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx, const float* sx,
                   const int32_t* qs, int64_t mc, int64_t K, float* out, int64_t ldo, float* acc) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  constexpr int OFF = QT == Q4_1 ? 4 : 2;
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(int(ws)));
  const __m512i m4 = _mm512_set1_epi8(0x0F), x80 = _mm512_set1_epi8(char(0x80));
  for (int64_t i = 0; i < mc * 32; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* base = w + b * BB;
    for (int r = 0; r < 16; ++r)  // the next panel's block b (rows 16 further)
      _mm_prefetch(reinterpret_cast<const char*>(base + (16 + r) * ws), _MM_HINT_T0);
    const __m512i g = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(base), 1);
    const __m512 wd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
    __m512 wc = _mm512_setzero_ps();
    if constexpr (QT == Q4_0) wc = _mm512_mul_ps(wd, _mm512_set1_ps(-8.f));
    if constexpr (QT == Q4_1) wc = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
    __m512i W[8];
    if constexpr (QT == Q8_0) {
      for (int j = 0; j < 8; ++j)
        W[j] = _mm512_xor_si512(_mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(base + OFF + 4 * j), 1), x80);
    } else {
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(base + OFF + 4 * j), 1);
        W[j] = _mm512_and_si512(v, m4);
        W[j + 4] = _mm512_and_si512(_mm512_srli_epi32(v, 4), m4);
      }
    }
    float* ab = acc + (b & 1) * 16;
    for (int64_t m = 0; m < mc; ++m) {
      // Broadcasts straight from memory (a 32-byte copy first made GCC broadcast from GPRs).
      const tile_i32u* xv = reinterpret_cast<const tile_i32u*>(qx + m * K + b * 32);
      __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_set1_epi32(xv[0]));
      __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[1], _mm512_set1_epi32(xv[1]));
      for (int j = 2; j < 8; j += 2) {
        d0 = _mm512_dpbusd_epi32(d0, W[j], _mm512_set1_epi32(xv[j]));
        d1 = _mm512_dpbusd_epi32(d1, W[j + 1], _mm512_set1_epi32(xv[j + 1]));
      }
      __m512i d = _mm512_add_epi32(d0, d1);
      if constexpr (QT == Q8_0) d = _mm512_sub_epi32(d, _mm512_set1_epi32(qs[m * nb + b]));
      float* a = ab + m * 32;
      __m512 av = _mm512_load_ps(a);
      av = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wd, _mm512_set1_ps(dx[m * nb + b])), av);
      if constexpr (QT != Q8_0) av = _mm512_fmadd_ps(wc, _mm512_set1_ps(sx[m * nb + b]), av);
      _mm512_store_ps(a, av);
    }
  }
  for (int64_t m = 0; m < mc; ++m)
    _mm512_storeu_ps(out + m * ldo, _mm512_add_ps(_mm512_load_ps(acc + m * 32), _mm512_load_ps(acc + m * 32 + 16)));
}

template <int QT>
static void tile_rows(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  constexpr int64_t kMc = 64;  // activation rows per sweep: their accumulators (8 KB) stay in L1
  alignas(64) float acc[kMc * 32];
  std::vector<int32_t> qs;
  if constexpr (QT == Q8_0) qs = q8_block_sums(qx, M * nb);
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16)
    for (int64_t m = 0; m < M; m += kMc)
      tile16<QT>(w + n * ws, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, QT == Q8_0 ? qs.data() + m * nb : nullptr,
                 std::min(kMc, M - m), K, out + m * ldo + n, ldo, acc);
  if (n < n1) gemv_rows<QT>(w, ws, n, n1, nb, qx, dx, sx, M, K, out, ldo);
}

// Q6_K, 16 weight rows x many activation rows (the AVX2 row-at-a-time kernel, q6k_gemv_avx2,
// unpacks a block once per weight row but spends ~40 instructions per activation row and block
// on 256 products). Here each block of a 16-row panel is unpacked once, every 6-bit weight
// multiplied by its int8 scale into int16 (|sc q| <= 8064), and laid out as vectors whose 16
// lanes are the 16 rows, 2 int16 weights each: one vpdpwssd per 2 weights x 16 rows on a
// broadcast pair of activations (widened to int16 once per call, pairs (x0, x2), (x1, x3) of
// every 4). Same numbers as q6k_gemv_avx2, bit for bit: its 8 int32 lanes (lane i: elements
// 4i..4i+3 of each 32, times their scale, minus 32 sc bsum for groups 2i, 2i+1) are exact
// integers, computed here per lane too (in any order: exact); each lane is converted and fma'd
// with d * d_x per block in block order, and the 8 lanes added as its horizontal sum adds them.
// 16 x 16 dwords: t[j] lane i = r[i] lane j.
static inline void transpose16(const __m512i r[16], __m512i t[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // b[4i + k], 128-bit lane L: rows 4i..4i+3, dword 4L + k
    b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i c0 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0x88), c1 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0xDD);
    const __m512i c2 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0x88),
                  c3 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0xDD);
    t[k] = _mm512_shuffle_i32x4(c0, c2, 0x88);
    t[8 + k] = _mm512_shuffle_i32x4(c0, c2, 0xDD);
    t[4 + k] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    t[12 + k] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
  }
}

// MR activation rows against one unpacked block of a panel: each weight vector loaded once for all.
template <int MR>
static inline void q6k_tile_m(const int32_t* wq, const int16_t* nsc, const __m512 wd, const int32_t* xw, int64_t xs,
                              const int16_t* bs, int64_t bss, const float* dx, int64_t dxs, float* fa) {
  __m512 wdx[MR];
  for (int t = 0; t < MR; ++t) wdx[t] = _mm512_mul_ps(wd, _mm512_set1_ps(dx[t * dxs]));
  for (int i = 0; i < 8; ++i) {
    __m512i a[MR];
    const __m512i ns = _mm512_load_si512(nsc + i * 32);
    for (int t = 0; t < MR; ++t) {
      int32_t bp;
      std::memcpy(&bp, bs + t * bss + 2 * i, 4);
      a[t] = _mm512_dpwssd_epi32(_mm512_setzero_si512(), ns, _mm512_set1_epi32(bp));
    }
    for (int hg = 0; hg < 8; ++hg) {
      const int c = hg * 8 + i;  // elements 4c..4c+3 of the block: chunk (h, g) = hg, lane i
      const __m512i wa = _mm512_load_si512(wq + c * 32), wb = _mm512_load_si512(wq + c * 32 + 16);
      for (int t = 0; t < MR; ++t) {
        a[t] = _mm512_dpwssd_epi32(a[t], wa, _mm512_set1_epi32(xw[t * xs + 2 * c]));
        a[t] = _mm512_dpwssd_epi32(a[t], wb, _mm512_set1_epi32(xw[t * xs + 2 * c + 1]));
      }
    }
    for (int t = 0; t < MR; ++t) {
      float* f = fa + t * 128 + i * 16;
      _mm512_store_ps(f, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[t]), wdx[t], _mm512_load_ps(f)));
    }
  }
}

static void q6k_tile(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                     const float* dx, const int16_t* bs, int64_t M, int64_t K, float* out, int64_t ldo) {
  // Activations as int16 pairs: per 4 values (x0, x2), (x1, x3).
  std::vector<int16_t> x16(M * K);
  for (int64_t i = 0; i < M * K; i += 4) {
    x16[i] = qx[i], x16[i + 1] = qx[i + 2], x16[i + 2] = qx[i + 1], x16[i + 3] = qx[i + 3];
  }
  const int32_t* xw = reinterpret_cast<const int32_t*>(x16.data());
  const int64_t xs = K / 2;  // dwords per activation row
  std::vector<float> facc_v(M * 8 * 16 + 16);
  float* facc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(facc_v.data()) + 63) & ~uintptr_t(63));
  alignas(64) int16_t wbuf[64 * 2 * 32];  // [(h, g, i)][A, B][16 rows x 2 int16]
  alignas(64) int16_t nsc[8 * 32];        // [lane i][16 rows x (-32 sc[2i], -32 sc[2i + 1])]
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(int(ws)));
  const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(0x03), lo8 = _mm512_set1_epi32(0x00FF00FF),
                lo16 = _mm512_set1_epi32(0xFFFF);
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    std::memset(facc, 0, sizeof(float) * M * 8 * 16);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* base = w + n * ws + b * 210;
      for (int r = 0; r < 16; ++r)
        for (int o = 0; o < 210; o += 64) _mm_prefetch(reinterpret_cast<const char*>(base + (16 + r) * ws + o), _MM_HINT_T0);
      // Scales: lane r = row r's int8 scale of group g, sign-extended (4 gathers of 4 bytes).
      __m512i sc32[16], screp[16];
      for (int q4 = 0; q4 < 4; ++q4) {
        const __m512i v = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(base + 192 + 4 * q4), 1);
        for (int t = 0; t < 4; ++t) {
          const __m512i s = _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * t), 24);
          sc32[4 * q4 + t] = s;
          screp[4 * q4 + t] = _mm512_or_si512(_mm512_and_si512(s, lo16), _mm512_slli_epi32(s, 16));
        }
      }
      for (int i = 0; i < 8; ++i) {
        const __m512i a = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sc32[2 * i], 5));
        const __m512i c = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sc32[2 * i + 1], 5));
        _mm512_store_si512(nsc + i * 32, _mm512_or_si512(_mm512_and_si512(a, lo16), _mm512_slli_epi32(c, 16)));
      }
      const __m512i dg = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(base + 208 - 2), 1);
      const __m512 wd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dg, 16)));
      // 6-bit values of elements 128h + 32g + 4i + {0..3}: ql[64h + 32 (g & 1) + 4i] (low nibbles
      // for g < 2), qh[32h + 4i] bits 2g, 2g + 1; times the scale of group 8h + 2g + i / 4. The 16
      // rows' ql and qh dwords transposed (lane = row) from one load per row and 64 bytes.
      __m512i tql[2][16], tqh[16];
      {
        __m512i r[16];
        for (int h = 0; h < 2; ++h) {
          for (int rr = 0; rr < 16; ++rr) r[rr] = _mm512_loadu_si512(base + rr * ws + 64 * h);
          transpose16(r, tql[h]);
        }
        for (int rr = 0; rr < 16; ++rr) r[rr] = _mm512_loadu_si512(base + rr * ws + 128);
        transpose16(r, tqh);
      }
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 8; ++i) {
          const __m512i l0 = tql[h][i], l1 = tql[h][8 + i], qh = tqh[8 * h + i];
          __m512i q[4];
          q[0] = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_slli_epi32(_mm512_and_si512(qh, m3), 4));
          q[1] = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 2), m3), 4));
          q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(l0, 4), m4),
                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 4), m3), 4));
          q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(l1, 4), m4),
                                 _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 6), m3), 4));
          for (int g = 0; g < 4; ++g) {
            const int c = 32 * h + 8 * g + i;
            const __m512i s = screp[8 * h + 2 * g + i / 4];
            _mm512_store_si512(wbuf + c * 64, _mm512_mullo_epi16(_mm512_and_si512(q[g], lo8), s));
            _mm512_store_si512(wbuf + c * 64 + 32, _mm512_mullo_epi16(_mm512_srli_epi16(q[g], 8), s));
          }
        }
      const int32_t* wq = reinterpret_cast<const int32_t*>(wbuf);
      const int32_t* xb = xw + b * 128;
      const int16_t* bsb = bs + b * 16;
      const float* dxb = dx + b;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4)
        q6k_tile_m<4>(wq, nsc, wd, xb + m * xs, xs, bsb + m * nb * 16, nb * 16, dxb + m * nb, nb, facc + m * 128);
      for (; m < M; ++m)
        q6k_tile_m<1>(wq, nsc, wd, xb + m * xs, xs, bsb + m * nb * 16, nb * 16, dxb + m * nb, nb, facc + m * 128);
    }
    for (int64_t m = 0; m < M; ++m) {
      const float* fa = facc + m * 128;
      const __m512 a04 = _mm512_add_ps(_mm512_load_ps(fa), _mm512_load_ps(fa + 64));
      const __m512 a26 = _mm512_add_ps(_mm512_load_ps(fa + 32), _mm512_load_ps(fa + 96));
      const __m512 a15 = _mm512_add_ps(_mm512_load_ps(fa + 16), _mm512_load_ps(fa + 80));
      const __m512 a37 = _mm512_add_ps(_mm512_load_ps(fa + 48), _mm512_load_ps(fa + 112));
      _mm512_storeu_ps(out + m * ldo + n, _mm512_add_ps(_mm512_add_ps(a04, a26), _mm512_add_ps(a15, a37)));
    }
  }
  for (int64_t c = 0; n < n1 && c < M; c += 32)  // the AVX2 kernel takes <= 32 rows a call
    q6k_gemv_avx2(w, ws, n, n1, nb, qx + c * K, dx + c * nb, bs + c * nb * 16, std::min<int64_t>(32, M - c), K,
                  out + c * ldo, ldo);
}
#endif

#if GGML_LEVEL == 1 || GGML_LEVEL == 2
// The 256-bit bodies (AVX2; AVX512-VNNI on 256-bit vectors), the same design on 8-row panels:
// lane n = weight row n, so a panel's block is laid out once (8 rows' loads, two per 256-bit
// vector, a 4 x 4 dword transpose per 128-bit half; the scales as `headers8`, no gather) and every
// activation row is swept against it on broadcasts of 4 activation bytes, with no horizontal
// reduction. Same numbers as the row-at-a-time `tile8` (ggml_dot.h), bit for bit: per (row,
// block) the integer dot product is exact in both (AVX2, Q4: the 8 maddubs pair sums add up in
// int16, |sum| <= 8 * 2 * 15 * 127 < 2^15; Q8_0: |w| against x signed like w, as tile8, pair sums
// <= 2 * 128 * 127; VNNI Q8_0: w + 128 unsigned minus 128 sum(q)), and the float steps are
// tile8's (acc = fma(float(dot), d_w * d_x, acc); Q4: acc = fma(c_w, d_x sum q, acc), one
// accumulator per row, in block order). Rows past the last whole panel go to `gemv_rows` (its
// 4- and 1-row tiles), as in `gemv`.
typedef int32_t __attribute__((may_alias, aligned(1))) tile_i32u;  // 4 activation bytes, any address

// 4 x 4 dwords per 128-bit half: out[j] dword i (per half) = in[i] dword j.
static inline void transpose4x4(const __m256i y[4], __m256i out[4]) {
  const __m256i t0 = _mm256_unpacklo_epi32(y[0], y[1]), t1 = _mm256_unpackhi_epi32(y[0], y[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(y[2], y[3]), t3 = _mm256_unpackhi_epi32(y[2], y[3]);
  out[0] = _mm256_unpacklo_epi64(t0, t2);
  out[1] = _mm256_unpackhi_epi64(t0, t2);
  out[2] = _mm256_unpacklo_epi64(t1, t3);
  out[3] = _mm256_unpackhi_epi64(t1, t3);
}

static inline __m256i load2x128(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}

// Rows [n, n + 8) x activation rows [0, mc); acc: 8 floats per activation row.
template <int QT>
static void tile8y(const uint8_t* w, int64_t ws, int64_t nb, const int8_t* qx, const float* dx, const float* sx,
                   const int32_t* qs, int64_t mc, int64_t K, float* out, int64_t ldo, float* acc, bool pf) {
  constexpr int BB = QT == Q4_0 ? 18 : QT == Q4_1 ? 20 : 34;
  constexpr int OFF = QT == Q4_1 ? 4 : 2;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t m = 0; m < mc; ++m) _mm256_store_ps(acc + m * 8, _mm256_setzero_ps());
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* base = w + b * BB;
    if (pf)
      for (int r = 0; r < 8; ++r)  // the next panel's block b (rows 8 further)
        _mm_prefetch(reinterpret_cast<const char*>(base + (8 + r) * ws), _MM_HINT_T0);
    const __m256i g = headers8(base, ws);
    const __m256 wd = halves_to_ps(g, false);
    __m256 wc = _mm256_setzero_ps();
    if constexpr (QT == Q4_0) wc = _mm256_mul_ps(wd, _mm256_set1_ps(-8.f));
    if constexpr (QT == Q4_1) wc = halves_to_ps(g, true);
    // W[j] lane n: row n's bytes (elements) 4j..4j+3; Q8_0 on AVX2: A = |W| (W keeps the signs).
    __m256i W[8], A[8];
    {
      __m256i y[4], v[4];
      for (int r = 0; r < 4; ++r) y[r] = load2x128(base + r * ws + OFF, base + (r + 4) * ws + OFF);
      transpose4x4(y, v);
      if constexpr (QT == Q8_0) {
        for (int j = 0; j < 4; ++j) W[j] = v[j];
        for (int r = 0; r < 4; ++r) y[r] = load2x128(base + r * ws + OFF + 16, base + (r + 4) * ws + OFF + 16);
        transpose4x4(y, v);
        for (int j = 0; j < 4; ++j) W[j + 4] = v[j];
        for (int j = 0; j < 8; ++j) {
#if GGML_LEVEL >= 2
          W[j] = _mm256_xor_si256(W[j], _mm256_set1_epi8(char(0x80)));
#else
          A[j] = _mm256_sign_epi8(W[j], W[j]);
#endif
        }
      } else {
        for (int j = 0; j < 4; ++j) {
          W[j] = _mm256_and_si256(v[j], m4);
          W[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v[j], 4), m4);
        }
      }
    }
    for (int64_t m = 0; m < mc; ++m) {
      const tile_i32u* xv = reinterpret_cast<const tile_i32u*>(qx + m * K + b * 32);
      __m256i d;
#if GGML_LEVEL >= 2
      __m256i d0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), W[0], _mm256_set1_epi32(xv[0]));
      __m256i d1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), W[1], _mm256_set1_epi32(xv[1]));
      for (int j = 2; j < 8; j += 2) {
        d0 = _mm256_dpbusd_epi32(d0, W[j], _mm256_set1_epi32(xv[j]));
        d1 = _mm256_dpbusd_epi32(d1, W[j + 1], _mm256_set1_epi32(xv[j + 1]));
      }
      d = _mm256_add_epi32(d0, d1);
      if constexpr (QT == Q8_0) d = _mm256_sub_epi32(d, _mm256_set1_epi32(qs[m * nb + b]));
#else
      const __m256i one = _mm256_set1_epi16(1);
      if constexpr (QT == Q8_0) {
        __m256i d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(A[0], _mm256_sign_epi8(_mm256_set1_epi32(xv[0]), W[0])), one);
        __m256i d1 = _mm256_madd_epi16(_mm256_maddubs_epi16(A[1], _mm256_sign_epi8(_mm256_set1_epi32(xv[1]), W[1])), one);
        for (int j = 2; j < 8; j += 2) {
          d0 = _mm256_add_epi32(
              d0, _mm256_madd_epi16(_mm256_maddubs_epi16(A[j], _mm256_sign_epi8(_mm256_set1_epi32(xv[j]), W[j])), one));
          d1 = _mm256_add_epi32(
              d1,
              _mm256_madd_epi16(_mm256_maddubs_epi16(A[j + 1], _mm256_sign_epi8(_mm256_set1_epi32(xv[j + 1]), W[j + 1])),
                                one));
        }
        d = _mm256_add_epi32(d0, d1);
      } else {
        __m256i s0 = _mm256_maddubs_epi16(W[0], _mm256_set1_epi32(xv[0]));
        __m256i s1 = _mm256_maddubs_epi16(W[1], _mm256_set1_epi32(xv[1]));
        for (int j = 2; j < 8; j += 2) {
          s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(W[j], _mm256_set1_epi32(xv[j])));
          s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(W[j + 1], _mm256_set1_epi32(xv[j + 1])));
        }
        d = _mm256_madd_epi16(_mm256_add_epi16(s0, s1), one);
      }
#endif
      float* a = acc + m * 8;
      __m256 av = _mm256_load_ps(a);
      av = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(wd, _mm256_set1_ps(dx[m * nb + b])), av);
      if constexpr (QT != Q8_0) av = _mm256_fmadd_ps(wc, _mm256_set1_ps(sx[m * nb + b]), av);
      _mm256_store_ps(a, av);
    }
  }
  for (int64_t m = 0; m < mc; ++m) _mm256_storeu_ps(out + m * ldo, _mm256_load_ps(acc + m * 8));
}

template <int QT>
static void tile_rows(const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
  constexpr int64_t kMc = 128;  // activation rows per sweep: their accumulators (4 KB) stay in L1
  alignas(32) float acc[kMc * 8];
  std::vector<int32_t> qs;
#if GGML_LEVEL >= 2
  if constexpr (QT == Q8_0) qs = q8_block_sums(qx, M * nb);
#endif
  int64_t n = n0;
  for (; n + 8 <= n1; n += 8)
    for (int64_t m = 0; m < M; m += kMc)
      tile8y<QT>(w + n * ws, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, qs.empty() ? nullptr : qs.data() + m * nb,
                 std::min(kMc, M - m), K, out + m * ldo + n, ldo, acc, n + 16 <= n1 && m == 0);
  if (n < n1) gemv_rows<QT>(w, ws, n, n1, nb, qx, dx, sx, M, K, out, ldo);
}
#endif

// `gemv` for many activation rows: the tiled kernel where there is one (512-bit body, an even
// block count: the layout whose numbers it reproduces; the 256-bit bodies: any block count),
// else `gemv` itself.
static void tile_gemv(int qt, const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
#if GGML_LEVEL >= 3
  if (nb % 2 == 0) {
    if (qt == Q4_0) return tile_rows<Q4_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
    if (qt == Q4_1) return tile_rows<Q4_1>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
    return tile_rows<Q8_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  }
#elif GGML_LEVEL == 1 || GGML_LEVEL == 2
  if (qt == Q4_0) return tile_rows<Q4_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  if (qt == Q4_1) return tile_rows<Q4_1>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  return tile_rows<Q8_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
#endif
  gemv(qt, w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
}

}  // namespace GGML_NS
