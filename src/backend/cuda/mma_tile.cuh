// Tensor-core tile helpers shared by the prefill attention and the centroid-scoring kernels.
//
// CTA layout: 4 warps, each owning 16 query rows of a 64-row query tile; key/centroid tiles of
// 64 rows x D live in swizzled shared memory (see swz in common.cuh). Fragments follow the PTX
// m16n8k16 layouts: thread (lane) holds rows g = lane/4 and g + 8, columns 2*(lane%4) + {0,1}.
#pragma once

#include "backend/cuda/common.cuh"

namespace sqz::cuda {

constexpr int kTileRows = 64;  // query rows per CTA and key rows per tile
constexpr int kRowWin = 1024;  // prefill attention: kept rows whose physical index is staged in
                               // smem at once (attn_mma.cuh, attn_wgmma.cuh)

// Issues cp.async for a ROWS-row query tile: row r is query row m = m0 + r of KV head h, i.e.
// token t = m / group, query head h * group + m % group. Rows past qtot are zero-filled.
// SW128: the wgmma layout (swz128) instead of swz. NT: the CTA's thread count when known at
// compile time (the loop unrolls and each thread keeps one chunk column), else 0 (blockDim.x).
template <int D, typename T, int ROWS = kTileRows, bool SW128 = false, int NT = 0>
__device__ __forceinline__ void load_q_tile_async(T* sbuf, const T* q, int64_t q_tok_stride,
                                                  int group, int h, int m0, int qtot) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  auto one = [&](int row, int ch) {
    const int m = m0 + row;
    const bool valid = m < qtot;
    const T* src = q;
    if (valid) {
      const int t = m / group, hg = m - t * group;
      src = q + (int64_t)t * q_tok_stride + (int64_t)(h * group + hg) * D + ch * 8;
    }
    cp_async16(sbuf + (SW128 ? swz128<ROWS>(row, ch) : swz<D>(row, ch)), src, valid);
  };
  if constexpr (NT > 0) {
    static_assert(NT % CPR == 0 && (ROWS * CPR) % NT == 0, "whole rows per pass");
#pragma unroll
    for (int i = 0; i < ROWS * CPR / NT; i++)
      one((int)threadIdx.x / CPR + i * (NT / CPR), (int)threadIdx.x % CPR);
  } else {
    for (int id = threadIdx.x; id < ROWS * CPR; id += blockDim.x) one(id / CPR, id % CPR);
  }
}

// A fragments of the warp's 16 query rows for every 16-wide k step.
template <int D, typename T>
__device__ __forceinline__ void load_q_frags(uint32_t (&qf)[D / 16][4], const T* sbuf, int warp,
                                             int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++)
    ldmatrix_x4(qf[kk], sbuf + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
}

// s[j][.] = Q(16 rows) . K(tile rows j*8 .. j*8+7)^T for the 64-row K tile in shared memory.
template <int D, typename T>
__device__ __forceinline__ void qk_tile(float (&s)[8][4], const uint32_t (&qf)[D / 16][4],
                                        const T* sK, int lane) {
#pragma unroll
  for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      uint32_t b[4];
      ldmatrix_x4(b,
                  sK + swz<D>(j * 8 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
      Elem<T>::mma(s[j], qf[kk], b[0], b[1]);
      Elem<T>::mma(s[j + 1], qf[kk], b[2], b[3]);
    }
  }
}

// acc[j][.] += P(16 x 64) . V(tile, 64 x D) with P given as bf16/f16 A fragments per 16 keys.
template <int D, typename T>
__device__ __forceinline__ void pv_tile(float (&acc)[D / 8][4], const uint32_t (&pa)[4][4],
                                        const T* sV, int lane) {
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
#pragma unroll
    for (int j = 0; j < D / 8; j += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(
          b, sV + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), j + (lane >> 4)));
      Elem<T>::mma(acc[j], pa[kk], b[0], b[1]);
      Elem<T>::mma(acc[j + 1], pa[kk], b[2], b[3]);
    }
  }
}

// The prefill attention's K and V tiles together, for a CTA of NT threads: 64 rows each; row
// r < nvalid from byte offset row_off[r] past K / V, rows from nvalid on zero-filled (their
// offsets must still be valid, e.g. 0). Each thread copies one chunk column of rows 8 apart
// (NT / CPR is a multiple of 8), so its swizzled column is the same in every row: one shared
// address per operand plus a constant per row, one offset load serving both copies, and per
// copy only the pointer add and one predicated LDGSTS (session 11's ncu profile: address work
// was over half of the wgmma kernel's instructions per tile).
template <int D, typename T, bool SW128, int NT>
__device__ __forceinline__ void load_kv_rows_async(T* sK, T* sV, const T* K, const T* V,
                                                   const int64_t* row_off, int nvalid) {
  constexpr int CPR = D / 8;
  constexpr int RS = NT / CPR;  // rows between a thread's copies
  static_assert(NT % CPR == 0 && RS % 8 == 0 && kTileRows % RS == 0, "fixed swizzle column");
  const int r0 = (int)threadIdx.x / CPR, ch = (int)threadIdx.x % CPR;
  const int e0 = SW128 ? swz128<kTileRows>(r0, ch) : swz<D>(r0, ch);
  const uint32_t dk = static_cast<uint32_t>(__cvta_generic_to_shared(sK + e0));
  const uint32_t dv = static_cast<uint32_t>(__cvta_generic_to_shared(sV + e0));
  const char* kb = reinterpret_cast<const char*>(K + ch * 8);
  const char* vb = reinterpret_cast<const char*>(V + ch * 8);
  constexpr uint32_t kStep = RS * (SW128 ? 64 : D) * sizeof(T);  // bytes from row r to r + RS
#pragma unroll
  for (int i = 0; i < kTileRows / RS; i++) {
    const int64_t off = row_off[r0 + i * RS];
    cp_async16_zf(dk + i * kStep, kb + off, r0 + i * RS, nvalid);
    cp_async16_zf(dv + i * kStep, vb + off, r0 + i * RS, nvalid);
  }
}

}  // namespace sqz::cuda
