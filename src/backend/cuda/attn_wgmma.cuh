// Hopper (sm_90a) flash attention over 64-row key tiles with warpgroup MMA: the prefill
// counterpart of attn_mma.cuh for head_dim 128, same items, partials and split merge.
//
// Why: the mma.sync kernel peaks at ~211 TFLOP/s on an H100 (v8, dev/kernels/NOTES.md): its
// two 16-row blocks per warp reload Q fragments from shared memory for every key tile and can
// keep only two warps per scheduler. wgmma reads Q and K straight from shared memory and runs
// a 64 x 64 x 16 (S = Q K^T) or 64 x 128 x 16 (O += P V, P from registers) step per
// instruction across a warpgroup, so the tensor cores no longer wait on ldmatrix.
//
// CTA = 2 warpgroups x 64 query rows (kPrefillBM = 128, the plan's query block), one CTA per SM.
// K and V tiles (row gather from the plan's row list, cp.async, 16-byte rows chunks) go into a
// kWgStages-deep ring in the swz128 layout (wgmma.cuh); Q is loaded once per item in the same
// layout. Per key tile and warpgroup: 8 wgmma for S (K-major Q and K), online softmax in base 2
// on the accumulators, P converted in registers to the A fragments, 4 wgmma for O (V MN-major).
// The S of tile t + 1 is issued before tile t's softmax (FA3's intra-warpgroup overlap), so the
// tensor cores work through it. No warp specialisation yet: both warpgroups load, and a CTA
// barrier per tile keeps them in step.
//
// Status (H100, session 11, dev/kernels/NOTES.md): correct (the GPU checks run it beside the
// mma.sync kernel) but not faster: the sparse prefill run at 128K, 1,024 tokens, 10% kept took
// 1.158 ms against mma.sync's 1.092 in the same call, so neither kernel is bound by its MMAs.
// It is opt-in (sqz_cuda_set_prefill_kernel) until a profile says what holds both back. ptxas
// also serialises its wgmma here (C7511: too few registers for the pipeline at 218), so the
// early S does not overlap yet.
//
// The item decoding, masked online softmax and write-out repeat attn_mma.cuh's on purpose for
// now: moving them into shared helpers changed the mma.sync kernels' register allocation
// (dense causal: 28 -> 66 spill stores), and those kernels are the default path, so that
// refactor waits for a GPU session that can time it (dev/kernels/NOTES.md, session 11).
#pragma once

#include "backend/cuda/merge.cuh"
#include "backend/cuda/mma_tile.cuh"
#include "backend/cuda/plan.cuh"
#include "backend/cuda/wgmma.cuh"

namespace sqz::cuda {

constexpr int kWgStages = 4;     // K/V tiles in the ring (3 in flight while one is computed)
constexpr int kWgThreads = 256;  // 2 warpgroups
static_assert(kPrefillBM == 2 * 64, "one 64-row warpgroup tile per half of the query block");

template <typename T>
constexpr int attn_wgmma_smem_bytes() {
  constexpr int D = 128;
  return 1024 /* 1024-byte alignment of the swizzled tiles */ + kPrefillBM * D * (int)sizeof(T) +
         2 * kWgStages * kTileRows * D * (int)sizeof(T) +
         kWgStages * kTileRows * (int)sizeof(int64_t) + kRowWin * (int)sizeof(int32_t);
}

// Persistent over the plan's items (sparse prefill only: the dense causal attention keeps
// attn_mma.cuh's kernel).
template <typename T>
__global__ void __launch_bounds__(kWgThreads, 1) attn_wgmma_kernel(RunArgs a) {
#ifdef SQZ_WGMMA
  constexpr int D = 128, S = kWgStages;
  extern __shared__ unsigned char smem_raw[];
  // The swizzled tiles must start 1024-byte aligned; static shared memory (the split merge's)
  // may precede the dynamic block.
  const unsigned s0 = static_cast<unsigned>(__cvta_generic_to_shared(smem_raw));
  T* sQ = reinterpret_cast<T*>(smem_raw + ((1024u - (s0 & 1023u)) & 1023u));  // [2][128][64]
  T* sK = sQ + kPrefillBM * D;                                                // [S][2][64][64]
  T* sV = sK + S * kTileRows * D;                                             // [S][2][64][64]
  int64_t* s_off = reinterpret_cast<int64_t*>(sV + S * kTileRows * D);        // [S][64]
  int32_t* s_rows = reinterpret_cast<int32_t*>(s_off + S * kTileRows);        // [kRowWin]
  pdl_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;  // warpgroup; warp within it (its 16 rows)
  const int qtot = a.qtot, group = a.o.group;
  const int n_items = a.p.meta[kMetaItems];
  const int n_qb = a.p.meta[kMetaQBlocks];
  // S tile accumulators: s is tile t's, s_nxt the next tile's (in flight during this tile's
  // softmax); every wgmma S chain starts by overwriting them.
  float s[32], s_nxt[32];
#pragma unroll
  for (int i = 0; i < 32; i++) s[i] = s_nxt[i] = 0.0f;

  for (int it = blockIdx.x; it < n_items; it += gridDim.x) {
    const int4 item = a.p.items[it];
    const int h = item.x, qb = item.y, vb = item.z, ve = item.w;
    const int grp = h * n_qb + qb;
    const int first = a.p.group_off[grp];
    const int ns = a.p.group_off[grp + 1] - first;
    const int n = ve - vb;
    const int nt = ceil_div_dev(n, kTileRows);
    const T* Kh = static_cast<const T*>(a.k) + (int64_t)h * a.kv_head_stride;
    const T* Vh = static_cast<const T*>(a.v) + (int64_t)h * a.kv_head_stride;

    load_q_tile_async<D, T, kPrefillBM, true>(sQ, static_cast<const T*>(a.q), a.q_tok_stride, group,
                                              h, qb * kPrefillBM, qtot);
    cp_async_commit();

    const int32_t* ridx = a.p.rowidx + (int64_t)h * a.p.n_ctx;
    // Row offsets of tile t into ring slot buf; a barrier must follow before they are used.
    auto fill_off = [&](int buf, int t) {
      if ((t * kTileRows) % kRowWin == 0) {
        const int w0 = vb + t * kTileRows;
        for (int i = tid; i < kRowWin; i += blockDim.x)
          s_rows[i] = w0 + i < ve ? __ldg(ridx + w0 + i) : -1;
        __syncthreads();
      }
      if (tid < kTileRows) {
        const int v = vb + t * kTileRows + tid;
        int64_t off = -1;
        if (v < ve) off = (int64_t)s_rows[(t * kTileRows) % kRowWin + tid] * a.kv_row_stride;
        s_off[buf * kTileRows + tid] = off;
      }
    };
    // Tile t into slot t % S, one cp.async group per tile slot (empty past the last tile, so
    // that the group count stays in step with the ring).
    auto prefetch = [&](int t) {
      if (t < nt) {
        const int buf = t % S;
        fill_off(buf, t);
        __syncthreads();
        load_rows_async<D, T, true>(sK + buf * kTileRows * D, Kh, s_off + buf * kTileRows);
        load_rows_async<D, T, true>(sV + buf * kTileRows * D, Vh, s_off + buf * kTileRows);
      }
      cp_async_commit();
    };

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.0f;
    float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
    // This thread's rows within the query block: rA and rA + 8.
    const int rA = wg * 64 + wq * 16 + (lane >> 2);

    // S = Q K^T for key tile u: this warpgroup's 64 query rows x 64 keys, K = 128 in 8 steps.
    auto qk = [&](float(&d)[32], int u) {
      const T* sKb = sK + (u % S) * kTileRows * D;
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        const uint64_t da =
            wg_desc(sQ + (kk >> 2) * (kPrefillBM * 64) + wg * 64 * 64 + (kk & 3) * 16, 16, 1024);
        const uint64_t db = wg_desc(sKb + (kk >> 2) * (kTileRows * 64) + (kk & 3) * 16, 16, 1024);
        wg_m64n64k16_ss<T>(d, da, db, kk > 0);
      }
      wg_commit();
    };

    for (int t = 0; t < S - 1; t++) prefetch(t);
    if (nt > 0) {  // S of tile 0; in the loop, S of tile t + 1 runs beside tile t's softmax
      cp_async_wait<S - 2>();
      fence_proxy_async_smem();
      __syncthreads();
      qk(s, 0);
      wg_wait<0>();
    }
    for (int t = 0; t < nt; t++) {
      const int buf = t % S;
      // Tile t + 1 must have landed (this thread's copies, then everyone's); slot (t - 1) % S
      // is free again after the barrier.
      cp_async_wait<S - 3>();
      fence_proxy_async_smem();
      __syncthreads();
      prefetch(t + S - 1);
      const T* sVb = sV + buf * kTileRows * D;
      if (t + 1 < nt) qk(s_nxt, t + 1);  // in flight through this tile's softmax

      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const bool ok = s_off[buf * kTileRows + col] >= 0;
          s[4 * j + c] = ok ? s[4 * j + c] * a.scale_log2 : kNegInf;
          s[4 * j + 2 + c] = ok ? s[4 * j + 2 + c] * a.scale_log2 : kNegInf;
          mx0 = fmaxf(mx0, s[4 * j + c]);
          mx1 = fmaxf(mx1, s[4 * j + 2 + c]);
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
        s[4 * j + 0] = exp2f(s[4 * j + 0] - ref0);
        s[4 * j + 1] = exp2f(s[4 * j + 1] - ref0);
        s[4 * j + 2] = exp2f(s[4 * j + 2] - ref1);
        s[4 * j + 3] = exp2f(s[4 * j + 3] - ref1);
        sum0 += s[4 * j + 0] + s[4 * j + 1];
        sum1 += s[4 * j + 2] + s[4 * j + 3];
      }
      l0 = l0 * c0 + sum0;
      l1 = l1 * c1 + sum1;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        acc[4 * j + 0] *= c0;
        acc[4 * j + 1] *= c0;
        acc[4 * j + 2] *= c1;
        acc[4 * j + 3] *= c1;
      }
      // P as the A fragments of 4 steps of 16 keys (the m16n8k16 A layout per warp).
      uint32_t pa[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        pa[kk][0] = Elem<T>::from_f2(s[8 * kk + 0], s[8 * kk + 1]);
        pa[kk][1] = Elem<T>::from_f2(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = Elem<T>::from_f2(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = Elem<T>::from_f2(s[8 * kk + 6], s[8 * kk + 7]);
      }
      // O += P V: V rows 16 kk .. 16 kk + 15 (8-row groups 1024 bytes apart), both 64-column
      // halves (8192 bytes apart) in one 128-wide instruction.
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < 4; kk++)
        wg_m64n128k16_rs<T>(acc, pa[kk], wg_desc(sVb + kk * 16 * 64, kTileRows * 128, 1024), 1);
      wg_commit();
      wg_wait<0>();  // P V and the next tile's S done
#pragma unroll
      for (int i = 0; i < 32; i++) s[i] = s_nxt[i];
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int mA = qb * kPrefillBM + rA, mB = mA + 8;
    if (ns == 1) {
#pragma unroll
      for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int d = j * 8 + 2 * (lane & 3) + c;
          if (mA < qtot) write_final(a.o, D, h, mA, d, acc[4 * j + c], m0, l0);
          if (mB < qtot) write_final(a.o, D, h, mB, d, acc[4 * j + 2 + c], m1, l1);
        }
    } else {
      const int64_t pA = (int64_t)it * kPrefillBM + rA, pB = pA + 8;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        const int d = j * 8 + 2 * (lane & 3);
        *reinterpret_cast<float2*>(a.p.pacc + pA * D + d) = make_float2(acc[4 * j], acc[4 * j + 1]);
        *reinterpret_cast<float2*>(a.p.pacc + pB * D + d) =
            make_float2(acc[4 * j + 2], acc[4 * j + 3]);
      }
      if ((lane & 3) == 0) {
        a.p.pml[pA] = make_float2(m0, l0);
        a.p.pml[pB] = make_float2(m1, l1);
      }
    }
    if (ns > 1 && last_of_group(a.p, grp, ns))
      merge_split_group<true>(a.p, a.o, D, h, first, ns, kPrefillBM, qb * kPrefillBM, qtot);
    cp_async_wait<0>();  // the ring's trailing (empty or unused) groups and a tile-less item's Q
    __syncthreads();     // shared buffers are rewritten by the next item
  }
#else
  (void)a;
#endif
}

}  // namespace sqz::cuda
