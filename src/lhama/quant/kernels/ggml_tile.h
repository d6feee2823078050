// Many activation rows (9-128: batched decode) on Q4_0 / Q4_1 / Q8_0 blocks with integer dot
// products, included by ggml_ops.cpp right after ggml_dot.h, in the same namespace (its helpers
// and `gemv` are reused; nothing there changes). Only the 512-bit body (GGML_LEVEL 3: AVX512
// VNNI) has a tiled kernel; elsewhere `tile_gemv` is the row-at-a-time `gemv`.
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

#if GGML_LEVEL >= 3
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
      const int8_t* x = qx + m * K + b * 32;
      int32_t xv[8];
      std::memcpy(xv, x, 32);
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
  if constexpr (QT == Q8_0) {  // 128 * sum(q) per activation block (the + 128 on the weights)
    qs.resize(M * nb);
    for (int64_t i = 0; i < M * nb; ++i) {
      int32_t s = 0;
      for (int j = 0; j < 32; ++j) s += qx[i * 32 + j];
      qs[i] = 128 * s;
    }
  }
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16)
    for (int64_t m = 0; m < M; m += kMc)
      tile16<QT>(w + n * ws, ws, nb, qx + m * K, dx + m * nb, sx + m * nb, QT == Q8_0 ? qs.data() + m * nb : nullptr,
                 std::min(kMc, M - m), K, out + m * ldo + n, ldo, acc);
  if (n < n1) gemv_rows<QT>(w, ws, n, n1, nb, qx, dx, sx, M, K, out, ldo);
}
#endif

// `gemv` for many activation rows: the tiled kernel where there is one (512-bit body, an even
// block count: the layout whose numbers it reproduces), else `gemv` itself.
static void tile_gemv(int qt, const uint8_t* w, int64_t ws, int64_t n0, int64_t n1, int64_t nb, const int8_t* qx,
                      const float* dx, const float* sx, int64_t M, int64_t K, float* out, int64_t ldo) {
#if GGML_LEVEL >= 3
  if (nb % 2 == 0) {
    if (qt == Q4_0) return tile_rows<Q4_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
    if (qt == Q4_1) return tile_rows<Q4_1>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
    return tile_rows<Q8_0>(w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
  }
#endif
  gemv(qt, w, ws, n0, n1, nb, qx, dx, sx, M, K, out, ldo);
}

}  // namespace GGML_NS
