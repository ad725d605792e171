// Tensor-core (mma.sync m16n8k16, f32 accumulation) flash attention over 64-row key tiles,
// shared by the sparse prefill (keys = the plan's kept row ranges, split-KV work items) and the
// dense causal attention of user tokens (keys = contiguous rows, causal mask).
//
// CTA = 4 warps x 16 query rows (kPrefillBM = 64; 8 warps x 16 ran 23% slower at one CTA per SM),
// two CTAs per SM; K and V tiles triple-buffered in swizzled shared memory via cp.async (row
// gather: each 256-byte row is one contiguous copy), online softmax in base 2.
#pragma once

#include "backend/cuda/merge.cuh"
#include "backend/cuda/mma_tile.cuh"
#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

constexpr int kRowWin = 1024;  // kept rows whose physical index is staged in smem at once
constexpr int kStages = 3;     // K/V tiles in flight
constexpr int kAttnThreads = kPrefillBM / 16 * 32;

template <int D, typename T>
constexpr int attn_mma_smem_bytes() {
  return 2 * kStages * kTileRows * D * (int)sizeof(T) + kStages * kTileRows * (int)sizeof(int64_t) +
         kRowWin * (int)sizeof(int32_t);
}

// SPARSE: persistent over the plan's items. !SPARSE: dense causal, item = (blockIdx.x query
// block, blockIdx.y KV head), keys [0, n_keys) masked by position.
template <int D, typename T, bool SPARSE>
__global__ void __launch_bounds__(kAttnThreads, 2) attn_mma_kernel(RunArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);                                     // [kStages][64 * D]
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

    // Query fragments, staged through the K buffers (free between items).
    load_q_tile_async<D, T, kPrefillBM>(sK, static_cast<const T*>(a.q), a.q_tok_stride, group, h,
                                        qb * kPrefillBM, qtot);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4];
    load_q_frags<D, T>(qf, sK, warp, lane);
    __syncthreads();

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
      if (tid < kTileRows) {
        const int v = vb + t * kTileRows + tid;
        int64_t off = -1;
        if (v < ve) {
          const int64_t row = SPARSE ? s_rows[(t * kTileRows) % kRowWin + tid] : v;
          off = row * a.kv_row_stride;
        }
        s_off[buf * kTileRows + tid] = off;
      }
    };
    auto issue = [&](int buf) {
      load_rows_async<D, T>(sK + buf * kTileRows * D, Kh, s_off + buf * kTileRows);
      load_rows_async<D, T>(sV + buf * kTileRows * D, Vh, s_off + buf * kTileRows);
      cp_async_commit();
    };

    float acc[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
    const int rowA = warp * 16 + (lane >> 2);  // this thread's rows rowA, rowA + 8 of the block
    const int mA = qb * kPrefillBM + rowA, mB = mA + 8;
    const int64_t posA = a.q_pos0 + mA / group, posB = a.q_pos0 + mB / group;

    // Tile t lives in stage t % kStages; tiles t+1 and t+2 are in flight while t is computed.
    if (nt > 0) {
      fill_off(0, 0);
      if (nt > 1) fill_off(1, 1);
      __syncthreads();
      issue(0);
      if (nt > 1) issue(1);
    }
    for (int t = 0; t < nt; t++) {
      const int buf = t % kStages;
      if (t + 2 < nt) {
        fill_off((t + 2) % kStages, t + 2);
        __syncthreads();
        issue((t + 2) % kStages);
        cp_async_wait<2>();
      } else if (t + 1 < nt) {
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      float s[8][4];
      qk_tile<D, T>(s, qf, sK + buf * kTileRows * D, lane);
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          bool ok = s_off[buf * kTileRows + col] >= 0;
          bool okA = ok, okB = ok;
          if (!SPARSE) {
            const int64_t kpos = a.key_pos0 + t * kTileRows + col;
            okA = ok && kpos <= posA;
            okB = ok && kpos <= posB;
          }
          s[j][c] = okA ? s[j][c] * a.scale_log2 : kNegInf;
          s[j][c + 2] = okB ? s[j][c + 2] * a.scale_log2 : kNegInf;
          mx0 = fmaxf(mx0, s[j][c]);
          mx1 = fmaxf(mx1, s[j][c + 2]);
        }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
      // A row with nothing visible yet keeps reference 0: every p is exp2(-inf) = 0.
      const float ref0 = n0 == kNegInf ? 0.0f : n0, ref1 = n1 == kNegInf ? 0.0f : n1;
      const float c0 = exp2f(m0 - ref0), c1 = exp2f(m1 - ref1);
      m0 = n0;
      m1 = n1;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        s[j][0] = exp2f(s[j][0] - ref0);
        s[j][1] = exp2f(s[j][1] - ref0);
        s[j][2] = exp2f(s[j][2] - ref1);
        s[j][3] = exp2f(s[j][3] - ref1);
        sum0 += s[j][0] + s[j][1];
        sum1 += s[j][2] + s[j][3];
      }
      l0 = l0 * c0 + sum0;
      l1 = l1 * c1 + sum1;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        acc[j][0] *= c0;
        acc[j][1] *= c0;
        acc[j][2] *= c1;
        acc[j][3] *= c1;
      }
      uint32_t pa[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        pa[kk][0] = Elem<T>::from_f2(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = Elem<T>::from_f2(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = Elem<T>::from_f2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = Elem<T>::from_f2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
      pv_tile<D, T>(acc, pa, sV + buf * kTileRows * D, lane);
      __syncthreads();
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    if (ns == 1) {
#pragma unroll
      for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int d = j * 8 + 2 * (lane & 3) + c;
          if (mA < qtot) write_final(a.o, D, h, mA, d, acc[j][c], m0, l0);
          if (mB < qtot) write_final(a.o, D, h, mB, d, acc[j][c + 2], m1, l1);
        }
    } else {
      const int64_t rA = (int64_t)it * kPrefillBM + rowA, rB = rA + 8;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        const int d = j * 8 + 2 * (lane & 3);
        *reinterpret_cast<float2*>(a.p.pacc + rA * D + d) = make_float2(acc[j][0], acc[j][1]);
        *reinterpret_cast<float2*>(a.p.pacc + rB * D + d) = make_float2(acc[j][2], acc[j][3]);
      }
      if ((lane & 3) == 0) {
        a.p.pml[rA] = make_float2(m0, l0);
        a.p.pml[rB] = make_float2(m1, l1);
      }
      if (last_of_group(a.p, grp, ns))
        merge_split_group(a.p, a.o, D, h, first, ns, kPrefillBM, qb * kPrefillBM, qtot);
    }
    __syncthreads();
  }
}

}  // namespace sqz::cuda
