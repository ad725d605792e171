// Tensor-core (mma.sync m16n8k16, f32 accumulation) flash attention over 64-row key tiles,
// shared by the sparse prefill (keys = the plan's kept row ranges, split-KV work items) and the
// dense causal attention of user tokens (keys = contiguous rows, causal mask).
//
// CTA = 4 warps x 32 query rows (kPrefillBM = 128), two CTAs per SM. Each warp runs two 16-row
// mma blocks against every K / V fragment it loads with ldmatrix, so one key tile's shared-memory
// reads and L2 -> shared copy serve twice the query rows of the 16-row warps used before v8. Q
// stays in shared memory and its fragments are reloaded per key tile: keeping two blocks of
// them in registers next to the 128 accumulators would spill. K and V are double-buffered in
// swizzled shared memory via cp.async (row gather: each row is one contiguous copy); online
// softmax in base 2. Measured at 128K, 1024 tokens, 10% (dev/kernels/NOTES.md v8): 171 -> 211
// TFLOP/s, with equal-size items and the batched split merge. ncu put the 16-row kernel at 40%
// issue utilisation with 2 warps per scheduler (latency-bound, not bandwidth-bound).
// Session 12 cut the instructions per warp and key tile from 1,912 to 1,142 (ncu): K/V copies
// by load_kv_rows_async, positional masks only on the tiles that need one, the scale folded
// into the exponent's FFMA, the rescale skipped once the warp's row maxima settle. The run at
// 128K, 1,024 tokens, 10% went from 1.09 to 0.80 ms on an H100 (~280 TFLOP/s).
#pragma once

#include "backend/cuda/merge.cuh"
#include "backend/cuda/mma_tile.cuh"
#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

constexpr int kStages = 2;     // K/V tiles in flight (3 stages would allow only one CTA per SM)
constexpr int kWarpRows = 32;  // query rows per warp: kMB blocks of 16
constexpr int kMB = kWarpRows / 16;
constexpr int kAttnThreads = kPrefillBM / kWarpRows * 32;

template <int D, typename T>
constexpr int attn_mma_smem_bytes() {
  return kPrefillBM * D * (int)sizeof(T) + 2 * kStages * kTileRows * D * (int)sizeof(T) +
         kStages * kTileRows * (int)sizeof(int64_t) + kRowWin * (int)sizeof(int32_t);
}

// SPARSE: persistent over the plan's items. !SPARSE: dense causal, item = (blockIdx.x query
// block, blockIdx.y KV head), keys [0, n_keys) masked by position.
template <int D, typename T, bool SPARSE>
__global__ void __launch_bounds__(kAttnThreads, 2) attn_mma_kernel(RunArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);                                     // [kPrefillBM * D]
  T* sK = sQ + kPrefillBM * D;                                                // [kStages][64 * D]
  T* sV = sK + kStages * kTileRows * D;                                       // [kStages][64 * D]
  int64_t* s_off = reinterpret_cast<int64_t*>(sV + kStages * kTileRows * D);  // [kStages][64]
  int32_t* s_rows = reinterpret_cast<int32_t*>(s_off + kStages * kTileRows);  // [kRowWin]
  pdl_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qtot = a.qtot, group = a.o.group;
  const int n_items = SPARSE ? a.p.meta[kMetaItems] : 1;
  const int n_qb = SPARSE ? a.p.meta[kMetaQBlocks] : 0;

  for (int it = SPARSE ? (int)blockIdx.x : 0; it < n_items; it += SPARSE ? gridDim.x : 1) {
    int h, qb, vb, ve, first = 0, ns = 1, grp = 0;
    if (SPARSE) {
      const int4 item = a.p.items[it];
      h = item.x;
      qb = item.y;
      vb = item.z;
      ve = item.w;
      grp = h * n_qb + qb;
      first = a.p.group_off[grp];
      ns = a.p.group_off[grp + 1] - first;
    } else {
      qb = blockIdx.x;
      h = blockIdx.y;
      vb = 0;
      // Keys past the block's last query position are invisible to every row of the block.
      const int last_m = min(qtot, (qb + 1) * kPrefillBM) - 1;
      const int64_t last_pos = a.q_pos0 + last_m / group;
      const int64_t lim = last_pos - a.key_pos0 + 1;
      ve = (int)max((int64_t)0, min((int64_t)a.n_keys, lim));
    }
    const int n = ve - vb;
    const int nt = ceil_div_dev(n, kTileRows);
    const T* Kh = static_cast<const T*>(a.k) + (int64_t)h * a.kv_head_stride;
    const T* Vh = static_cast<const T*>(a.v) + (int64_t)h * a.kv_head_stride;

    // Query tile (its own cp.async group, committed before the first K/V tile's).
    load_q_tile_async<D, T, kPrefillBM, false, kAttnThreads>(
        sQ, static_cast<const T*>(a.q), a.q_tok_stride, group, h, qb * kPrefillBM, qtot);
    cp_async_commit();

    // Sparse: physical rows come from the plan's row list, staged kRowWin at a time by every
    // thread (independent coalesced loads, one latency per window rather than per tile).
    const int32_t* ridx = SPARSE ? a.p.rowidx + (int64_t)h * a.p.n_ctx : nullptr;
    auto fill_off = [&](int buf, int t) {
      if (SPARSE && (t * kTileRows) % kRowWin == 0) {
        const int w0 = vb + t * kTileRows;
        for (int i = tid; i < kRowWin; i += blockDim.x)
          s_rows[i] = w0 + i < ve ? __ldg(ridx + w0 + i) : -1;
        __syncthreads();
      }
      // Byte offsets; rows past the end read offset 0 and are zero-filled by the loader.
      if (tid < kTileRows) {
        const int v = vb + t * kTileRows + tid;
        int64_t off = 0;
        if (v < ve) {
          const int64_t row = SPARSE ? s_rows[(t * kTileRows) % kRowWin + tid] : v;
          off = row * a.kv_row_stride * (int64_t)sizeof(T);
        }
        s_off[buf * kTileRows + tid] = off;
      }
    };
    auto issue = [&](int buf, int t) {
      load_kv_rows_async<D, T, false, kAttnThreads>(sK + buf * kTileRows * D,
                                                    sV + buf * kTileRows * D, Kh, Vh,
                                                    s_off + buf * kTileRows, n - t * kTileRows);
      cp_async_commit();
    };

    float acc[kMB][D / 8][4];
    float m[kMB][2], l[kMB][2];
    int64_t pos[kMB][2];
#pragma unroll
    for (int b = 0; b < kMB; b++) {
#pragma unroll
      for (int j = 0; j < D / 8; j++)
        acc[b][j][0] = acc[b][j][1] = acc[b][j][2] = acc[b][j][3] = 0.0f;
      m[b][0] = m[b][1] = kNegInf;
      l[b][0] = l[b][1] = 0.0f;
      // This thread's rows of block b: r and r + 8 with r = warp * 32 + b * 16 + lane / 4.
      const int mr = qb * kPrefillBM + warp * kWarpRows + b * 16 + (lane >> 2);
      pos[b][0] = a.q_pos0 + mr / group;
      pos[b][1] = a.q_pos0 + (mr + 8) / group;
    }
    // Causal: the position of the warp's first row, the lowest of its rows.
    const int64_t wpos0 = a.q_pos0 + (qb * kPrefillBM + warp * kWarpRows) / group;

    // Tile t lives in stage t % kStages; tile t + 1 is in flight while t is computed.
    if (nt > 0) {
      fill_off(0, 0);
      __syncthreads();
      issue(0, 0);
    }
    for (int t = 0; t < nt; t++) {
      const int buf = t % kStages;
      if (t + 1 < nt) {
        fill_off((t + 1) % kStages, t + 1);
        __syncthreads();
        issue((t + 1) % kStages, t + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const T* sKb = sK + buf * kTileRows * D;
      const T* sVb = sV + buf * kTileRows * D;
      // S = Q K^T for both 16-row blocks; each K fragment feeds kMB mma pairs.
      float s[kMB][8][4];
#pragma unroll
      for (int b = 0; b < kMB; b++)
#pragma unroll
        for (int j = 0; j < 8; j++) s[b][j][0] = s[b][j][1] = s[b][j][2] = s[b][j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t qa[kMB][4];
#pragma unroll
        for (int b = 0; b < kMB; b++)
          ldmatrix_x4(qa[b],
                      sQ + swz<D>(warp * kWarpRows + b * 16 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
          uint32_t bk[4];
          ldmatrix_x4(bk, sKb + swz<D>(j * 8 + (lane & 7) + ((lane >> 4) << 3),
                                       kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
          for (int b = 0; b < kMB; b++) {
            Elem<T>::mma(s[b][j], qa[b], bk[0], bk[1]);
            Elem<T>::mma(s[b][j + 1], qa[b], bk[2], bk[3]);
          }
        }
      }
      // Masks only where a tile needs one: its columns past the item's end (both kernels) or
      // keys after one of the warp's rows (causal). Columns are masked by position: tile t's
      // column col is key v = vb + 64 t + col, valid while v < ve. Full tiles skip the test.
      const int lim = n - t * kTileRows;
      const bool full =
          lim >= kTileRows && (SPARSE || a.key_pos0 + (int64_t)(t + 1) * kTileRows - 1 <= wpos0);
      if (!full) {
#pragma unroll
        for (int b = 0; b < kMB; b++)
#pragma unroll
          for (int j = 0; j < 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
              const int col = j * 8 + 2 * (lane & 3) + c;
              bool okA = col < lim, okB = okA;
              if (!SPARSE) {
                const int64_t kpos = a.key_pos0 + t * kTileRows + col;
                okA = okA && kpos <= pos[b][0];
                okB = okB && kpos <= pos[b][1];
              }
              if (!okA) s[b][j][c] = kNegInf;
              if (!okB) s[b][j][c + 2] = kNegInf;
            }
      }
      uint32_t pa[kMB][4][4];
#pragma unroll
      for (int b = 0; b < kMB; b++) {
        // Max of the raw products, then p = 2^(s * scale - m) by one FFMA per element (scale >
        // 0, so the max commutes with it; -inf stays -inf).
        float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          mx0 = fmaxf(mx0, fmaxf(s[b][j][0], s[b][j][1]));
          mx1 = fmaxf(mx1, fmaxf(s[b][j][2], s[b][j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m[b][0], mx0 * a.scale_log2),
                    n1 = fmaxf(m[b][1], mx1 * a.scale_log2);
        // A row with nothing visible yet keeps reference 0: every p is exp2(-inf) = 0.
        const float ref0 = n0 == kNegInf ? 0.0f : n0, ref1 = n1 == kNegInf ? 0.0f : n1;
        const float c0 = exp2f(m[b][0] - ref0), c1 = exp2f(m[b][1] - ref1);
        m[b][0] = n0;
        m[b][1] = n1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          s[b][j][0] = exp2f(fmaf(s[b][j][0], a.scale_log2, -ref0));
          s[b][j][1] = exp2f(fmaf(s[b][j][1], a.scale_log2, -ref0));
          s[b][j][2] = exp2f(fmaf(s[b][j][2], a.scale_log2, -ref1));
          s[b][j][3] = exp2f(fmaf(s[b][j][3], a.scale_log2, -ref1));
          sum0 += s[b][j][0] + s[b][j][1];
          sum1 += s[b][j][2] + s[b][j][3];
        }
        l[b][0] = l[b][0] * c0 + sum0;
        l[b][1] = l[b][1] * c1 + sum1;
        // Once a row's max has settled c is exactly 1: skip the 64 multiplies unless some row
        // of the warp moved (a warp-uniform branch).
        if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
          for (int j = 0; j < D / 8; j++) {
            acc[b][j][0] *= c0;
            acc[b][j][1] *= c0;
            acc[b][j][2] *= c1;
            acc[b][j][3] *= c1;
          }
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
          pa[b][kk][0] = Elem<T>::from_f2(s[b][2 * kk][0], s[b][2 * kk][1]);
          pa[b][kk][1] = Elem<T>::from_f2(s[b][2 * kk][2], s[b][2 * kk][3]);
          pa[b][kk][2] = Elem<T>::from_f2(s[b][2 * kk + 1][0], s[b][2 * kk + 1][1]);
          pa[b][kk][3] = Elem<T>::from_f2(s[b][2 * kk + 1][2], s[b][2 * kk + 1][3]);
        }
      }
      // O += P V; each V fragment feeds kMB mma pairs.
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
#pragma unroll
        for (int j = 0; j < D / 8; j += 2) {
          uint32_t bv[4];
          ldmatrix_x4_trans(
              bv, sVb + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), j + (lane >> 4)));
#pragma unroll
          for (int b = 0; b < kMB; b++) {
            Elem<T>::mma(acc[b][j], pa[b][kk], bv[0], bv[1]);
            Elem<T>::mma(acc[b][j + 1], pa[b][kk], bv[2], bv[3]);
          }
        }
      }
      __syncthreads();
    }

#pragma unroll
    for (int b = 0; b < kMB; b++) {
      float l0 = l[b][0], l1 = l[b][1];
      l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
      l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
      l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
      l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
      const int rowA = warp * kWarpRows + b * 16 + (lane >> 2);  // rows rowA, rowA + 8 of the block
      const int mA = qb * kPrefillBM + rowA, mB = mA + 8;
      if (ns == 1) {
#pragma unroll
        for (int j = 0; j < D / 8; j++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            const int d = j * 8 + 2 * (lane & 3) + c;
            if (mA < qtot) write_final(a.o, D, h, mA, d, acc[b][j][c], m[b][0], l0);
            if (mB < qtot) write_final(a.o, D, h, mB, d, acc[b][j][c + 2], m[b][1], l1);
          }
      } else {
        const int64_t rA = (int64_t)it * kPrefillBM + rowA, rB = rA + 8;
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
          const int d = j * 8 + 2 * (lane & 3);
          *reinterpret_cast<float2*>(a.p.pacc + rA * D + d) =
              make_float2(acc[b][j][0], acc[b][j][1]);
          *reinterpret_cast<float2*>(a.p.pacc + rB * D + d) =
              make_float2(acc[b][j][2], acc[b][j][3]);
        }
        if ((lane & 3) == 0) {
          a.p.pml[rA] = make_float2(m[b][0], l0);
          a.p.pml[rB] = make_float2(m[b][1], l1);
        }
      }
    }
    if (ns > 1 && last_of_group(a.p, grp, ns))
      merge_split_group(a.p, a.o, D, h, first, ns, kPrefillBM, qb * kPrefillBM, qtot);
    cp_async_wait<0>();  // an item with no key tiles never waited for its query copy
    __syncthreads();     // shared buffers are rewritten by the next item
  }
}

}  // namespace sqz::cuda
