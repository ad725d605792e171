// y = x · Wᵀ on the CPU. Three kernels (see matmul.h):
//  * decode (few tokens): the weight stream is the cost, so x is quantized once to the weight's
//    vec_dot_type and each weight row is read exactly once per call (int8 VNNI dots);
//  * prefill on AMX machines (Sapphire Rapids and later): panels of 32 W rows are dequantized to
//    bf16 in the tile layout and multiplied on the AMX units (~16x the FMA throughput of
//    AVX-512); scales are folded into the bf16 values, so no per-block rescaling is needed;
//  * prefill elsewhere: 64-row tiles dequantized to f32 and OpenBLAS sgemm.
// Work is split over output rows, so every y element is computed by exactly one thread with the
// same instruction sequence whatever the thread count: results do not depend on n_threads.
#include "backend/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "backend/cpu/quant.h"
#include "backend/cpu/quant_blocks.h"
#include "backend/cpu/quant_impl.h"
#include "core/fp16.h"

// OpenBLAS's cblas.h (the Debian alternative the build links, see CMakeLists BLA_VENDOR).
#include <cblas.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512F__) && defined(__linux__)
#define SQZ_MATMUL_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
// GCC 12 false positive on the undefined pass-through operand of the unpack intrinsics
// (GCC PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace sqz::cpu {

namespace {

constexpr int64_t kDecodeMaxTokens = 4;  // n_tok <= this: vec-dot kernel (measured crossover)
constexpr int64_t kF32TileRows = 64;     // W rows per f32 tile: 64 x 1536 x 4 = 384 KiB (L2)
constexpr size_t kAlign = 64;
constexpr size_t kPrefetchBytes = 4096;  // decode: software prefetch distance in the weight stream

inline size_t align_up(size_t v, size_t a = kAlign) {
  return (v + a - 1) / a * a;
}
inline int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}
inline uint8_t* align_ptr(void* p) {
  return (uint8_t*)(((uintptr_t)p + kAlign - 1) & ~(uintptr_t)(kAlign - 1));
}

struct Shape {
  int64_t n_in, n_out;
  size_t row_bytes;  // bytes of one W row
};
Shape shape_of(const TensorView& W) {
  return {W.ne[0], W.ne[1], dtype_row_size(W.type, W.ne[0])};
}

// Contiguous share [begin, end) of `n` items for thread `tid` of `nth`.
inline void split(int64_t n, int tid, int nth, int64_t* begin, int64_t* end) {
  *begin = n * tid / nth;
  *end = n * (tid + 1) / nth;
}

// Runs body(tid, nth) on n_threads OpenMP threads (inline when 1: no fork/join cost).
template <typename F>
void parallel(int n_threads, F&& body) {
  if (n_threads <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(n_threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// ---------------------------------------------------------------- decode: vec_dot

// x quantized per thread into the thread's own buffer: duplicating that (tiny) work saves a
// barrier, which costs more than quantizing a few hundred activations.
size_t vecdot_scratch(const TensorView& W, int64_t n_tok, int n_threads) {
  const DType vt = vec_dot_type(W.type);
  if (vt == DType::kF32) return 0;
  return (size_t)n_threads * align_up(dtype_row_size(vt, W.ne[0]) * n_tok) + kAlign;
}

void matmul_vecdot(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
                   int n_threads) {
  const Shape s = shape_of(W);
  const DType vt = vec_dot_type(W.type);
  const detail::VecDotFn dot = detail::vec_dot_fn(W.type);
  const bool quantize = vt != DType::kF32;
  const size_t xrow = quantize ? dtype_row_size(vt, s.n_in) : s.n_in * sizeof(float);
  const size_t per_thread = align_up(xrow * n_tok);
  const uint8_t* wbase = (const uint8_t*)W.data;
  uint8_t* base = align_ptr(scratch);
  parallel(n_threads, [&](int tid, int nth) {
    int64_t r0, r1;
    split(s.n_out, tid, nth, &r0, &r1);
    if (r0 == r1) return;
    const uint8_t* xq = (const uint8_t*)x;
    if (quantize) {
      uint8_t* q = base + tid * per_thread;
      for (int64_t t = 0; t < n_tok; t++) quantize_row(vt, x + t * s.n_in, q + t * xrow, s.n_in);
      xq = q;
    }
    // Row-outer: each weight row is streamed once and stays in L1 for all tokens. Decode is
    // bound by memory bandwidth, so the rows a few iterations ahead are prefetched explicitly
    // (the hardware streamer alone left ~30% of the read bandwidth unused).
    const uint8_t* wend = wbase + r1 * s.row_bytes;
    const size_t ahead = kPrefetchBytes;
    for (int64_t r = r0; r < r1; r++) {
      const uint8_t* wr = wbase + r * s.row_bytes;
      for (const uint8_t* p = wr + ahead; p < std::min(wend, wr + ahead + s.row_bytes); p += 64)
        __builtin_prefetch(p, 0, 0);
      for (int64_t t = 0; t < n_tok; t++) y[t * s.n_out + r] = dot(s.n_in, wr, xq + t * xrow);
    }
  });
}

// ---------------------------------------------------------------- prefill: f32 tiles + sgemm

size_t tilef32_scratch(const TensorView& W, int n_threads) {
  return (size_t)n_threads * (align_up(kF32TileRows * W.ne[0] * sizeof(float)) + kAlign);
}

void matmul_tilef32(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
                    int n_threads) {
  openblas_single_thread_once();
  const Shape s = shape_of(W);
  const detail::DequantFn dq = detail::dequant_fn(W.type);
  const size_t per_thread = align_up(kF32TileRows * s.n_in * sizeof(float));
  uint8_t* base = align_ptr(scratch);
  const int64_t n_tiles = (s.n_out + kF32TileRows - 1) / kF32TileRows;
  parallel(n_threads, [&](int tid, int nth) {
    float* wt = (float*)(base + tid * per_thread);  // [kF32TileRows, n_in] f32
    int64_t i0, i1;
    split(n_tiles, tid, nth, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
      const int64_t r0 = i * kF32TileRows, rows = std::min(kF32TileRows, s.n_out - r0);
      for (int64_t r = 0; r < rows; r++)
        dq((const uint8_t*)W.data + (r0 + r) * s.row_bytes, wt + r * s.n_in, s.n_in);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_tok, (int)rows, (int)s.n_in, 1.0f,
                  x, (int)s.n_in, wt, (int)s.n_in, 0.0f, y + r0, (int)s.n_out);
    }
  });
}

// ---------------------------------------------------------------- prefill: AMX bf16

#if defined(SQZ_MATMUL_AMX)

// Tile geometry: A = 16 token rows x 32 bf16 of x; B = 16 k-pairs x (16 W rows x 2 bf16) (the
// "VNNI" layout TDPBF16PS wants); C = 16 tokens x 16 outputs f32. Registers: C in tmm0-3 (2x2
// blocking: 32 tokens x 32 outputs), A in tmm4-5, B in tmm6-7.
constexpr int64_t kPanelRows = 32;  // W rows per panel (two B column groups)
constexpr int64_t kTokBlock = 32;   // tokens per register block (two A tiles)
constexpr int64_t kTokChunk = 256;  // tokens per cache chunk: x chunk (256 x Kp bf16) stays in L2
constexpr int64_t kDqChunk = 256;   // k elements dequantized at a time (a multiple of all blocks)

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool request_amx() {
  constexpr int kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr int kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

void load_tile_config() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int i = 0; i < 8; i++) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// In-register transpose of a 16x16 matrix of 32-bit elements.
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // u[i + j] = column j (of each 128-bit lane) of rows i..i+3
    u[i + 0] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int j = 0; j < 4; j++) {  // columns j, 4+j, 8+j, 12+j
    const __m512i v = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
    const __m512i w = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i w2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_i32x4(v, v2, 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(v, v2, 0xdd);
    r[4 + j] = _mm512_shuffle_i32x4(w, w2, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(w, w2, 0xdd);
  }
}

// 32 floats -> 16 dwords, each a (k even, k odd) bf16 pair, round-to-nearest-even.
inline __m512i pairs_bf16(const float* p) {
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
}

struct AmxScratch {
  size_t xb_bytes, panel_bytes, stage_bytes, ctmp_bytes, per_thread;
};
AmxScratch amx_layout(const TensorView& W, int64_t n_tok) {
  const int64_t kp = round_up(W.ne[0], 32);
  AmxScratch a;
  a.xb_bytes = align_up((size_t)round_up(n_tok, kTokBlock) * kp * 2);  // [Mp, Kp] bf16
  a.panel_bytes = align_up((size_t)kPanelRows * kp * 2);    // [2][Kp/32][16 pairs][16 rows][2] bf16
  a.stage_bytes = align_up(16 * kDqChunk * sizeof(float));  // [16 rows][256] f32
  a.ctmp_bytes = align_up(16 * 16 * sizeof(float));         // [16][16] f32 edge tile
  a.per_thread = a.panel_bytes + a.stage_bytes + a.ctmp_bytes;
  return a;
}

// Dequantize W rows [r0, r0 + 32) (rows >= n_out are zero) into the B-tile layout:
// panel[g][s] is the 1 KiB tile for row group g (16 rows) and k-step s (32 k).
// One 32-element block dequantized straight to 16 bf16 (k even, k odd) pairs: for the formats
// whose block is exactly one k-step this skips the f32 staging round trip (short prefills are
// dominated by panel packing). Same arithmetic as the f32 dequantizers, then RNE to bf16.
inline __m512i nibble_block_pairs(const uint8_t* qs, __m512 d, __m512 m) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)qs));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_fmadd_ps(d, hi, m), _mm512_fmadd_ps(d, lo, m));
}
template <DType t>
inline __m512i block_pairs(const uint8_t* row, int64_t blk) {
  if constexpr (t == DType::kQ4_0) {
    const BlockQ4_0* b = (const BlockQ4_0*)row + blk;
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(b->d));
    return nibble_block_pairs(b->qs, d, _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)));
  } else if constexpr (t == DType::kQ4_1) {
    const BlockQ4_1* b = (const BlockQ4_1*)row + blk;
    return nibble_block_pairs(b->qs, _mm512_set1_ps(fp16_to_fp32(b->d)),
                              _mm512_set1_ps(fp16_to_fp32(b->m)));
  } else {  // Q8_0
    const BlockQ8_0* b = (const BlockQ8_0*)row + blk;
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(b->d));
    const __m512 lo =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)b->qs)));
    const __m512 hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(b->qs + 16))));
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(d, hi), _mm512_mul_ps(d, lo));
  }
}

template <DType t>
void pack_group_direct(const uint8_t* rows, size_t row_bytes, int64_t ksteps, uint16_t* pg) {
  for (int64_t ks = 0; ks < ksteps; ks++) {
    __m512i v[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) v[r] = block_pairs<t>(rows + r * row_bytes, ks);
    transpose16x16(v);
    uint16_t* tile = pg + (size_t)ks * 512;
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) _mm512_store_si512((__m512i*)(tile + 32 * p), v[p]);
  }
}

void pack_panel(const TensorView& W, const Shape& s, int64_t r0, int64_t kp, detail::DequantFn dq,
                uint16_t* panel, float* stage) {
  const int64_t ksteps = kp / 32;
  const bool direct = W.type == DType::kQ4_0 || W.type == DType::kQ4_1 || W.type == DType::kQ8_0;
  for (int g = 0; g < 2; g++) {
    const int64_t rg = r0 + 16 * g;
    uint16_t* pg = panel + (size_t)g * ksteps * 512;
    if (direct && rg + 16 <= s.n_out) {  // full group of a 32-block format (kp == n_in)
      const uint8_t* rows = (const uint8_t*)W.data + rg * s.row_bytes;
      if (W.type == DType::kQ4_0) pack_group_direct<DType::kQ4_0>(rows, s.row_bytes, ksteps, pg);
      if (W.type == DType::kQ4_1) pack_group_direct<DType::kQ4_1>(rows, s.row_bytes, ksteps, pg);
      if (W.type == DType::kQ8_0) pack_group_direct<DType::kQ8_0>(rows, s.row_bytes, ksteps, pg);
      continue;
    }
    for (int64_t k0 = 0; k0 < kp; k0 += kDqChunk) {
      const int64_t len = std::min(kDqChunk, kp - k0);                         // multiple of 32
      const int64_t valid = std::max<int64_t>(0, std::min(len, s.n_in - k0));  // real elements
      for (int r = 0; r < 16; r++) {
        float* st = stage + r * kDqChunk;
        if (rg + r < s.n_out) {
          // k0 is a multiple of 256 and thus of every block size: a whole-block sub-row.
          dq((const uint8_t*)W.data + (rg + r) * s.row_bytes + dtype_row_size(W.type, k0), st,
             valid);
          std::fill(st + valid, st + len, 0.0f);
        } else {
          std::fill(st, st + len, 0.0f);
        }
      }
      for (int64_t kk = 0; kk < len; kk += 32) {
        __m512i v[16];
        for (int r = 0; r < 16; r++) v[r] = pairs_bf16(stage + r * kDqChunk + kk);
        transpose16x16(v);  // v[p] = pair p of rows 0..15: B tile row p
        uint16_t* tile = pg + (size_t)((k0 + kk) / 32) * 512;
        for (int p = 0; p < 16; p++) _mm512_store_si512((__m512i*)(tile + 32 * p), v[p]);
      }
    }
  }
}

void matmul_amx(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
                int n_threads) {
  const Shape s = shape_of(W);
  const int64_t kp = round_up(s.n_in, 32), ksteps = kp / 32;
  const int64_t mp = round_up(n_tok, kTokBlock);
  const AmxScratch L = amx_layout(W, n_tok);
  uint8_t* base = align_ptr(scratch);
  uint16_t* xb = (uint16_t*)base;  // [mp, kp] bf16, zero-padded rows and columns
  const detail::DequantFn dq = detail::dequant_fn(W.type);
  const int64_t n_panels = (s.n_out + kPanelRows - 1) / kPanelRows;
  const size_t xstride = (size_t)kp * 2;

  parallel(n_threads, [&](int tid, int nth) {
    {  // x -> bf16 rows (padding rows/columns zero so they add nothing)
      int64_t t0, t1;
      split(mp, tid, nth, &t0, &t1);
      for (int64_t t = t0; t < t1; t++) {
        uint16_t* dst = xb + t * kp;
        if (t >= n_tok) {
          std::memset(dst, 0, xstride);
          continue;
        }
        const float* src = x + t * s.n_in;
        int64_t k = 0;
        for (; k + 32 <= s.n_in; k += 32)
          _mm512_storeu_si512((__m512i*)(dst + k), pairs_bf16(src + k));
        for (; k < s.n_in; k++) dst[k] = fp32_to_bf16(src[k]);
        for (; k < kp; k++) dst[k] = 0;
      }
      if (nth > 1) {
#pragma omp barrier
      }
    }
    uint8_t* mine = base + L.xb_bytes + tid * L.per_thread;
    uint16_t* panel = (uint16_t*)mine;
    float* stage = (float*)(mine + L.panel_bytes);
    float* ctmp = (float*)(mine + L.panel_bytes + L.stage_bytes);
    int64_t p0, p1;
    split(n_panels, tid, nth, &p0, &p1);
    if (p0 == p1) return;
    load_tile_config();
    for (int64_t c0 = 0; c0 < mp; c0 += kTokChunk) {
      const int64_t c1 = std::min(mp, c0 + kTokChunk);
      for (int64_t p = p0; p < p1; p++) {
        const int64_t r0 = p * kPanelRows;
        pack_panel(W, s, r0, kp, dq, panel, stage);
        const uint16_t* b0 = panel;
        const uint16_t* b1 = panel + (size_t)ksteps * 512;
        for (int64_t t0 = c0; t0 < c1; t0 += kTokBlock) {
          const uint16_t* a0 = xb + t0 * kp;
          const uint16_t* a1 = a0 + 16 * kp;
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          if (t0 + 16 < n_tok) {
            for (int64_t ks = 0; ks < ksteps; ks++) {
              _tile_loadd(4, a0 + ks * 32, xstride);
              _tile_loadd(5, a1 + ks * 32, xstride);
              _tile_loadd(6, b0 + ks * 512, 64);
              _tile_loadd(7, b1 + ks * 512, 64);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(1, 4, 7);
              _tile_dpbf16ps(2, 5, 6);
              _tile_dpbf16ps(3, 5, 7);
            }
          } else {  // at most 16 tokens left (short prompts): skip the all-padding A tile
            for (int64_t ks = 0; ks < ksteps; ks++) {
              _tile_loadd(4, a0 + ks * 32, xstride);
              _tile_loadd(6, b0 + ks * 512, 64);
              _tile_loadd(7, b1 + ks * 512, 64);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(1, 4, 7);
            }
          }
          // C tile (i, j): tokens t0 + 16i, outputs r0 + 16j. Full tiles go straight to y.
          auto store = [&](int tile, int i, int j) {
            const int64_t tt = t0 + 16 * i, oo = r0 + 16 * j;
            if (tt >= n_tok || oo >= s.n_out) return;
            const int64_t nt = std::min<int64_t>(16, n_tok - tt),
                          no = std::min<int64_t>(16, s.n_out - oo);
            float* dst = y + tt * s.n_out + oo;
            if (nt == 16 && no == 16) {
              switch (tile) {  // tile ids must be immediates
                case 0:
                  _tile_stored(0, dst, s.n_out * 4);
                  break;
                case 1:
                  _tile_stored(1, dst, s.n_out * 4);
                  break;
                case 2:
                  _tile_stored(2, dst, s.n_out * 4);
                  break;
                default:
                  _tile_stored(3, dst, s.n_out * 4);
                  break;
              }
              return;
            }
            switch (tile) {
              case 0:
                _tile_stored(0, ctmp, 64);
                break;
              case 1:
                _tile_stored(1, ctmp, 64);
                break;
              case 2:
                _tile_stored(2, ctmp, 64);
                break;
              default:
                _tile_stored(3, ctmp, 64);
                break;
            }
            for (int64_t a = 0; a < nt; a++)
              std::memcpy(dst + a * s.n_out, ctmp + a * 16, no * sizeof(float));
          };
          store(0, 0, 0);
          store(1, 0, 1);
          store(2, 1, 0);
          store(3, 1, 1);
        }
      }
    }
    _tile_release();
  });
}

#endif  // SQZ_MATMUL_AMX

size_t amx_scratch(const TensorView& W, int64_t n_tok, int n_threads) {
#if defined(SQZ_MATMUL_AMX)
  const AmxScratch a = amx_layout(W, n_tok);
  return a.xb_bytes + (size_t)n_threads * a.per_thread + kAlign;
#else
  (void)W, (void)n_tok, (void)n_threads;
  return 0;
#endif
}

}  // namespace

void openblas_single_thread_once() {
  // Our OpenMP threads each call sgemm; OpenBLAS must not spawn its own pool on top.
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

bool amx_available() {
#if defined(SQZ_MATMUL_AMX)
  static const bool ok = request_amx();
  return ok;
#else
  return false;
#endif
}

MatmulKernel matmul_auto_kernel(const TensorView& W, int64_t n_tok) {
  if (n_tok <= kDecodeMaxTokens) return MatmulKernel::kVecDot;
  return amx_available() ? MatmulKernel::kAmxBf16 : MatmulKernel::kTileF32;
}

size_t matmul_scratch_size(const TensorView& W, int64_t n_tok, int n_threads) {
  n_threads = std::max(n_threads, 1);
  return std::max({vecdot_scratch(W, n_tok, n_threads), tilef32_scratch(W, n_threads),
                   amx_scratch(W, n_tok, n_threads)});
}

void matmul_with(MatmulKernel kernel, const TensorView& W, const float* x, int64_t n_tok, float* y,
                 void* scratch, int n_threads) {
  if (n_tok <= 0 || !is_weight_type(W.type)) return;
  n_threads = std::max(n_threads, 1);
  if (kernel == MatmulKernel::kAuto) kernel = matmul_auto_kernel(W, n_tok);
  if (kernel == MatmulKernel::kAmxBf16 && !amx_available()) kernel = MatmulKernel::kTileF32;
  switch (kernel) {
    case MatmulKernel::kVecDot:
      return matmul_vecdot(W, x, n_tok, y, scratch, n_threads);
    case MatmulKernel::kTileF32:
      return matmul_tilef32(W, x, n_tok, y, scratch, n_threads);
#if defined(SQZ_MATMUL_AMX)
    case MatmulKernel::kAmxBf16:
      return matmul_amx(W, x, n_tok, y, scratch, n_threads);
#endif
    default:
      return;
  }
}

void matmul(const TensorView& W, const float* x, int64_t n_tok, float* y, void* scratch,
            int n_threads) {
  matmul_with(MatmulKernel::kAuto, W, x, n_tok, y, scratch, n_threads);
}

}  // namespace sqz::cpu
