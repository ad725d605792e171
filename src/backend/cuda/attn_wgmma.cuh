// Hopper (sm_90a) flash attention over 64-row key tiles with warpgroup MMA: the prefill
// counterpart of attn_mma.cuh for head_dim 128, same items, partials and split merge.
//
// Why: the mma.sync kernel peaks at ~211 TFLOP/s on an H100 (v8, dev/kernels/NOTES.md): its
// two 16-row blocks per warp reload Q fragments from shared memory for every key tile. wgmma
// reads Q and K straight from shared memory and runs a 64 x 64 x 16 (S = Q K^T) or
// 64 x 128 x 16 (O += P V, P from registers) step per instruction across a warpgroup.
//
// CTA = one warpgroup x 64 query rows: half of one of the plan's 128-row query blocks, so each
// item is two CTAs that read the same K/V tiles (L2 has room: the session 11 profile had it at
// 11-14%), and two CTAs share an SM. K and V tiles (row gather from the plan's row list,
// cp.async, 16-byte chunks) go through rings in the swz128 layout (wgmma.cuh): K two slots, V
// three; Q is loaded once per item. Per key tile: 8 wgmma for S (K-major Q and K), online
// softmax in base 2 on the accumulators, P converted in registers to the A fragments, 4 wgmma
// for O (V MN-major). The S of tile t and the P V of tile t - 1 are issued together and tile
// t's softmax runs while the P V is in flight (FA3's intra-warpgroup overlap).
//
// History (dev/kernels/NOTES.md, sessions 11-13). Session 11's form was one CTA of two
// warpgroups per query block, a 4-slot ring and the S of tile t + 1 issued before tile t's
// softmax: 1.158 ms against mma.sync's 1.092 (128K, 1,024 tokens, 10% kept). ptxas serialised
// its wgmma (C7511, 218 registers), the CTA barrier per tile kept both warpgroups in lock step,
// and ncu found it issue-bound (976 instructions per warp and tile, 56% of them address and
// integer work). Session 12 went to one warpgroup per CTA, dropped the early S and cut the
// per-tile work (copies with a fixed swizzle column per thread, descriptors advanced by
// addition, a positional mask only on an item's last tile, the scale folded into the
// exponent's FFMA, the accumulator rescale skipped once the warp's row maxima have settled):
// 0.83-0.85 ms, still behind mma.sync's 0.78-0.80, as every tile ran S -> wait -> softmax ->
// P V -> wait in series. Session 13 added the overlap (v19): 0.61-0.63 ms against mma.sync's
// 0.70 (H100, same call), 0.163 against 0.218 ms at 128 tokens, so it is the default on sm_90a.
//
// The item decoding, masked online softmax and write-out repeat attn_mma.cuh's on purpose:
// moving them into shared helpers changed the mma.sync kernels' register allocation (dense
// causal: 28 -> 66 spill stores), and the mma.sync kernels still serve sm_80, head_dim 64 and
// the dense causal attention (dev/kernels/NOTES.md, session 11).
#pragma once

#include "backend/cuda/merge.cuh"
#include "backend/cuda/mma_tile.cuh"
#include "backend/cuda/plan.cuh"
#include "backend/cuda/wgmma.cuh"

namespace sqz::cuda {

constexpr int kWgKSlots = 2;     // K ring: tile t + 1 scored while tile t + 2 lands
constexpr int kWgVSlots = 3;     // V ring: tile t in P V while t + 1 waits and t + 2 lands
constexpr int kWgThreads = 128;  // one warpgroup
constexpr int kWgRows = 64;      // query rows per CTA
constexpr int kWgPerItem = kPrefillBM / kWgRows;  // CTAs per plan item (query block halves)
static_assert(kPrefillBM == kWgPerItem * kWgRows, "whole halves of a query block");

template <typename T>
constexpr int attn_wgmma_smem_bytes() {
  constexpr int D = 128;
  return 1024 /* 1024-byte alignment of the swizzled tiles */ + kWgRows * D * (int)sizeof(T) +
         (kWgKSlots + kWgVSlots) * kTileRows * D * (int)sizeof(T) +
         kWgKSlots * kTileRows * (int)sizeof(int64_t) + kRowWin * (int)sizeof(int32_t);
}

// Persistent over (item, half) pairs (sparse prefill only: the dense causal attention keeps
// attn_mma.cuh's kernel).
template <typename T>
__global__ void __launch_bounds__(kWgThreads, 2) attn_wgmma_kernel(RunArgs a) {
#ifdef SQZ_WGMMA
  constexpr int D = 128;
  constexpr uint32_t kTileBytes = kTileRows * D * sizeof(T);  // one K or V slot: 16 KB
  constexpr uint32_t kHalfBytes = 64 * 64 * sizeof(T);        // 64 rows x 64 elements: 8 KB
  extern __shared__ unsigned char smem_raw[];
  // The swizzled tiles must start 1024-byte aligned; static shared memory (the split merge's)
  // may precede the dynamic block.
  const unsigned s0 = static_cast<unsigned>(__cvta_generic_to_shared(smem_raw));
  T* sQ = reinterpret_cast<T*>(smem_raw + ((1024u - (s0 & 1023u)) & 1023u));  // [2][64][64]
  T* sK = sQ + kWgRows * D;                // [kWgKSlots][2][64][64]
  T* sV = sK + kWgKSlots * kTileRows * D;  // [kWgVSlots][2][64][64]
  int64_t* s_off =                         // [kWgKSlots][64] byte offsets of a tile's rows
      reinterpret_cast<int64_t*>(sV + kWgVSlots * kTileRows * D);
  int32_t* s_rows = reinterpret_cast<int32_t*>(s_off + kWgKSlots * kTileRows);  // [kRowWin]
  pdl_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qtot = a.qtot, group = a.o.group;
  const int n_items = a.p.meta[kMetaItems];
  const int n_qb = a.p.meta[kMetaQBlocks];
  // Descriptors of slot 0 / the Q tile; the others are these plus a byte offset >> 4 (the
  // start address is the low 14 bits, and shared addresses stay below 2^18).
  const uint64_t dQ = wg_desc(sQ, 16, 1024);
  const uint64_t dK0 = wg_desc(sK, 16, 1024);
  const uint64_t dV0 = wg_desc(sV, kTileRows * 128, 1024);

  for (int w = blockIdx.x; w < n_items * kWgPerItem; w += gridDim.x) {
    const int it = w / kWgPerItem, half = w % kWgPerItem;
    const int4 item = a.p.items[it];
    const int h = item.x, qb = item.y, vb = item.z, ve = item.w;
    const int grp = h * n_qb + qb;
    const int first = a.p.group_off[grp];
    const int ns = a.p.group_off[grp + 1] - first;
    const int n = ve - vb;
    const int nt = ceil_div_dev(n, kTileRows);
    const int mq = qb * kPrefillBM + half * kWgRows;  // this CTA's first query row
    if (mq >= qtot) {  // a half past the last query row: nothing to compute, only to arrive
      if (ns > 1 && last_of_group(a.p, grp, ns * kWgPerItem))
        merge_split_group(a.p, a.o, D, h, first, ns, kPrefillBM, qb * kPrefillBM, qtot);
      continue;
    }
    const T* Kh = static_cast<const T*>(a.k) + (int64_t)h * a.kv_head_stride;
    const T* Vh = static_cast<const T*>(a.v) + (int64_t)h * a.kv_head_stride;

    load_q_tile_async<D, T, kWgRows, true, kWgThreads>(sQ, static_cast<const T*>(a.q),
                                                       a.q_tok_stride, group, h, mq, qtot);
    cp_async_commit();

    const int32_t* ridx = a.p.rowidx + (int64_t)h * a.p.n_ctx;
    // Row offsets of tile t into ring slot buf; a barrier must follow before they are used.
    auto fill_off = [&](int buf, int t) {
      if ((t * kTileRows) % kRowWin == 0) {
        const int w0 = vb + t * kTileRows;
        for (int i = tid; i < kRowWin; i += kWgThreads)
          s_rows[i] = w0 + i < ve ? __ldg(ridx + w0 + i) : -1;
        __syncthreads();
      }
      // Byte offsets; rows past the end read offset 0 and are zero-filled by the loader.
      if (tid < kTileRows) {
        const int v = vb + t * kTileRows + tid;
        int64_t off = 0;
        if (v < ve)
          off = (int64_t)s_rows[(t * kTileRows) % kRowWin + tid] * a.kv_row_stride *
                (int64_t)sizeof(T);
        s_off[buf * kTileRows + tid] = off;
      }
    };
    // Tile u: K into slot u % 2, V into slot u % 3, offsets through s_off[u % 2] (one
    // cp.async group).
    auto prefetch = [&](int u) {
      const int kb = u % kWgKSlots;
      fill_off(kb, u);
      __syncthreads();
      load_kv_rows_async<D, T, true, kWgThreads>(sK + kb * kTileRows * D,
                                                 sV + (u % kWgVSlots) * kTileRows * D, Kh, Vh,
                                                 s_off + kb * kTileRows, n - u * kTileRows);
      cp_async_commit();
    };

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = 0.0f;
    float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
    // This thread's rows within the CTA's 64: rA and rA + 8.
    const int rA = warp * 16 + (lane >> 2);
    float s[32];        // S of one tile, then its P (f32)
    uint32_t pa[4][4];  // P of the tile in P V, as the A fragments of 4 steps of 16 keys

    // S = Q K^T for tile u: 64 query rows x 64 keys, K = 128 in 8 steps of 16 (32 bytes inside
    // a 128-byte row, the second 64 dims one 8 KB half further). Issued, not waited.
    auto qk = [&](int u) {
      const uint64_t dK = dK0 + (((u % kWgKSlots) * kTileBytes) >> 4);
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        const uint32_t o = ((kk >> 2) * kHalfBytes + (kk & 3) * 32) >> 4;
        wg_m64n64k16_ss<T>(s, dQ + o, dK + o, kk > 0);
      }
    };
    // O += P V from V slot vs: V rows 16 kk .. 16 kk + 15 (2 KB per 16 rows), both 64-column
    // halves (8 KB apart, the descriptor's leading offset) in one 128-wide instruction.
    auto pv = [&](int vs) {
      const uint64_t dV = dV0 + ((vs * kTileBytes) >> 4);
#pragma unroll
      for (int kk = 0; kk < 4; kk++)
        wg_m64n128k16_rs<T>(acc, pa[kk], dV + ((kk * 16 * 128) >> 4), 1);
    };
    // Online softmax of tile u's S in s: new maxima and sums, p = 2^(s * scale - m) in place
    // (one FFMA each, scale > 0), c = the factors the accumulators owe.
    auto softmax = [&](int u, float& c0, float& c1) {
      const int lim = n - u * kTileRows;  // columns past the item's end: only its last tile
      if (lim < kTileRows) {
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            if (j * 8 + 2 * (lane & 3) + c >= lim) {
              s[4 * j + c] = kNegInf;
              s[4 * j + 2 + c] = kNegInf;
            }
          }
      }
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * j + 0], s[4 * j + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float n0 = fmaxf(m0, mx0 * a.scale_log2), n1 = fmaxf(m1, mx1 * a.scale_log2);
      // A row with nothing visible yet keeps reference 0: every p is exp2(-inf) = 0.
      const float ref0 = n0 == kNegInf ? 0.0f : n0, ref1 = n1 == kNegInf ? 0.0f : n1;
      c0 = exp2f(m0 - ref0);
      c1 = exp2f(m1 - ref1);
      m0 = n0;
      m1 = n1;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; j++) {
        s[4 * j + 0] = exp2f(fmaf(s[4 * j + 0], a.scale_log2, -ref0));
        s[4 * j + 1] = exp2f(fmaf(s[4 * j + 1], a.scale_log2, -ref0));
        s[4 * j + 2] = exp2f(fmaf(s[4 * j + 2], a.scale_log2, -ref1));
        s[4 * j + 3] = exp2f(fmaf(s[4 * j + 3], a.scale_log2, -ref1));
        sum0 += s[4 * j + 0] + s[4 * j + 1];
        sum1 += s[4 * j + 2] + s[4 * j + 3];
      }
      l0 = l0 * c0 + sum0;
      l1 = l1 * c1 + sum1;
    };
    auto to_pa = [&]() {  // the m16n8k16 A layout per warp
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        pa[kk][0] = Elem<T>::from_f2(s[8 * kk + 0], s[8 * kk + 1]);
        pa[kk][1] = Elem<T>::from_f2(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = Elem<T>::from_f2(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = Elem<T>::from_f2(s[8 * kk + 6], s[8 * kk + 7]);
      }
    };

    // Iteration t issues the S of tile t and the P V of tile t - 1 together, then runs tile
    // t's softmax while the P V is in flight (FA3's intra-warpgroup overlap); the accumulators
    // are rescaled once the P V is waited for. Every iteration issues both (ptxas serialises
    // every wgmma of the kernel when one sits in a branch, C7520): iteration 0's P V has P = 0
    // over tile 0's V (landed, and read by tile 0's own P V anyway), and the extra iteration nt
    // scores a stale K slot whose S is dropped.
#pragma unroll
    for (int kk = 0; kk < 4; kk++) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
    if (nt > 0) prefetch(0);
    const int iters = nt > 0 ? nt + 1 : 0;
    for (int t = 0; t < iters; t++) {
      // Tile t has landed (this thread's copies, the proxy fence, everyone's), and every
      // thread is past iteration t - 1: K slot (t + 1) % 2 (tile t - 1, scored) and V slot
      // (t + 1) % 3 (tile t - 2, in its P V) are free for tile t + 1.
      cp_async_wait<0>();
      fence_proxy_async_smem();
      __syncthreads();
      if (t + 1 < nt) prefetch(t + 1);
      wg_fence();
      qk(t);
      wg_commit();
      pv(t == 0 ? 0 : (t - 1) % kWgVSlots);
      wg_commit();
      float c0 = 1.0f, c1 = 1.0f;
      wg_wait<1>();  // groups retire in order: the S is done, the P V may still run
      if (t < nt) softmax(t, c0, c1);
      wg_wait<0>();
      if (t < nt) {
        // c is exactly 1 once a row's max has settled: skip the 64 multiplies unless some row
        // of the warp moved (warp-uniform; the accumulators are this warp's own rows).
        if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
          for (int j = 0; j < D / 8; j++) {
            acc[4 * j + 0] *= c0;
            acc[4 * j + 1] *= c0;
            acc[4 * j + 2] *= c1;
            acc[4 * j + 3] *= c1;
          }
        }
        to_pa();
      }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int mA = mq + rA, mB = mA + 8;
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
      // Partial rows of item it, as the mma.sync kernel lays them out (128 per item).
      const int64_t pA = (int64_t)it * kPrefillBM + half * kWgRows + rA, pB = pA + 8;
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
    // The group's last CTA (of ns items x both halves) merges all 128 rows.
    if (ns > 1 && last_of_group(a.p, grp, ns * kWgPerItem))
      merge_split_group(a.p, a.o, D, h, first, ns, kPrefillBM, qb * kPrefillBM, qtot);
    cp_async_wait<0>();  // a tile-less item's Q copy
    __syncthreads();     // shared buffers are rewritten by the next item
  }
#else
  (void)a;
#endif
}

}  // namespace sqz::cuda
