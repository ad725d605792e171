// Lookup (plan step), large query path (n_q * group > 8, e.g. prefill): centroid scoring on
// tensor cores, two passes per stage (denominators, then column sums); the last CTA of each head
// selects. See lookup.cuh for the algorithm, lookup_impl.cuh for the shared helpers.
#include "backend/cuda/lookup_impl.cuh"

namespace sqz::cuda {

namespace {

// One step of col_sums' reduce-scatter (score_mma_kernel): lanes 4 * (8 / HALF) apart swap
// halves of their HALF * 2 values and each keeps the sum of one half.
template <int HALF>
__device__ __forceinline__ void rs_step(float (&v)[16], int lane) {
  constexpr int kMask = 4 * (8 / HALF);
  const bool up = lane & kMask;
#pragma unroll
  for (int i = 0; i < HALF; i++) {
    const float send = up ? v[i] : v[i + HALF];
    const float keep = up ? v[i + HALF] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kMask);
  }
}

// ISO: besides the code, the window of per-entry statistics would not fit the static shared
// memory next to the mean path's.
template <int D, typename T, bool COLSUM, bool ISO>
__global__ void __launch_bounds__(128) score_mma_kernel(LookupArgs a, int stage, int nsplit) {
  // Two centroid tiles, in dynamic shared memory: with the child rule's per-column inputs the
  // static arrays alone would pass the 48 KB static limit (mean_iso COLSUM).
  extern __shared__ __align__(128) unsigned char s_dyn[];
  T(*sC)[kTileRows * D] = reinterpret_cast<T(*)[kTileRows * D]>(s_dyn);
  __shared__ const T* s_ptr[2][kTileRows];
  __shared__ float s_w[2][kTileRows];
  __shared__ int s_sign[2][kTileRows];
  __shared__ float s_cs[4][kTileRows];
  // Child rule, coarse stage: the tile's per-cluster bound inputs and column sums of the bound.
  __shared__ float4 s_cb[2][kTileRows];
  __shared__ float s_bs[4][kTileRows];
  // Entry info of a window of kWin entries, computed by all threads at once (one latency chain
  // per window instead of per tile).
  constexpr int kWin = 512;
  __shared__ const T* w_ptr[kWin];
  __shared__ float w_w[kWin];
  __shared__ int8_t w_s[kWin];
  __shared__ float2 w_st[ISO ? kWin : 1];          // mean_iso {vbar, radius} of the window
  __shared__ float2 s_st[2][ISO ? kTileRows : 1];  // ... of the tile's columns
  pdl_wait();
  const int split = blockIdx.x, qb = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qtot = a.qtot;
  int n_pos, n_neg;
  stage_counts(a, stage, h, &n_pos, &n_neg);
  const int n = n_pos + n_neg;
  const int per = ceil_div_dev(ceil_div_dev(n, nsplit), kTileRows) * kTileRows;
  const int e0 = min(n, split * per), e1 = min(n, e0 + per);
  float* S = stage == kCoarse ? a.p.s_coarse + (int64_t)h * a.p.n_coarse
                              : a.p.s_fine + (int64_t)h * a.p.n_fine;
  const bool child = stage == kCoarse && a.child;  // also sums the child-bound scores
  float* B = a.p.b_coarse + (int64_t)h * a.p.n_coarse;
  if (!COLSUM) {  // the COLSUM launch accumulates into S (and B): zero them here, one launch
                  // earlier
    const int cid = qb * gridDim.x + split, nct = gridDim.x * gridDim.y;
    for (int e = cid * blockDim.x + tid; e < n_pos; e += nct * blockDim.x) {
      S[e] = 0.0f;
      if (child) B[e] = 0.0f;
    }
  }

  // Query fragments (staged through the second centroid buffer).
  load_q_tile_async<D, T>(sC[1], static_cast<const T*>(a.q), a.q_tok_stride, a.p.group, h,
                          qb * kTileRows, qtot);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4];
  load_q_frags<D, T>(qf, sC[1], warp, lane);
  const int r0 = warp * 16 + (lane >> 2);  // this thread's rows r0 and r0 + 8 of the tile
  // mean_iso factors of rows r0 and r0 + 8: the 4 lanes sharing a row each sum a quarter of it.
  float2 qn0 = make_float2(0.0f, 0.0f), qn1 = qn0;
  if (ISO || (COLSUM && child)) {
    float s0 = 0.0f, s1 = 0.0f;
    for (int ch = lane & 3; ch < D / 8; ch += 4) {
      float f0[8], f1[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(sC[1] + swz<D>(r0, ch)), f0);
      unpack8<T>(*reinterpret_cast<const uint4*>(sC[1] + swz<D>(r0 + 8, ch)), f1);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        s0 = fmaf(f0[i], f0[i], s0);
        s1 = fmaf(f1[i], f1[i], s1);
      }
    }
    s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
    s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
    const float sl2 = a.scale_log2 * a.scale_log2;
    qn0 = iso_row(s0 * sl2);
    qn1 = iso_row(s1 * sl2);
  }
  __syncthreads();

  const int m0 = qb * kTileRows + r0, m1 = m0 + 8;
  const bool v0 = m0 < qtot, v1 = m1 < qtot;
  float L0 = kNegInf, L1 = kNegInf;
  if (COLSUM) {
    if (v0) L0 = finish_lse(a, stage, h, m0, nsplit);
    if (v1) L1 = finish_lse(a, stage, h, m1, nsplit);
    if (stage == kCoarse && split == 0 && (lane & 3) == 0) {
      if (v0) a.p.lse_coarse[(int64_t)h * a.p.q_max + m0] = L0;
      if (v1) a.p.lse_coarse[(int64_t)h * a.p.q_max + m1] = L1;
    }
  }
  Stat st0{kNegInf, 0.0f, 0.0f}, st1{kNegInf, 0.0f, 0.0f};

  auto fill_info = [&](int buf, int t) {
    if ((t * kTileRows) % kWin == 0) {  // every thread: new window, then a barrier
      constexpr int PER = kWin / 128;
      const int ew = e0 + t * kTileRows;
      for (int i0 = 0; i0 < kWin; i0 += blockDim.x * PER) {
        int ev[PER];
        Entry<T> inf[PER];
#pragma unroll
        for (int u = 0; u < PER; u++) ev[u] = ew + i0 + tid + u * blockDim.x;
        entry_batch<D, T, PER, ISO>(a, stage, h, ev, e1, n_pos, inf);
#pragma unroll
        for (int u = 0; u < PER; u++) {
          const int i = i0 + tid + u * blockDim.x;
          if (i < kWin) {
            w_ptr[i] = inf[u].c;
            w_w[i] = inf[u].log2w;
            w_s[i] = (int8_t)inf[u].sign;
            if (ISO) w_st[i] = inf[u].st;
          }
        }
      }
      __syncthreads();
    }
    if (tid < kTileRows) {
      const int i = (t * kTileRows) % kWin + tid;
      s_ptr[buf][tid] = w_ptr[i];
      s_w[buf][tid] = w_w[i];
      s_sign[buf][tid] = w_s[i];
      if (ISO) s_st[buf][tid] = w_st[i];
      if (COLSUM && child) {
        const int e = e0 + t * kTileRows + tid;  // coarse stage: the entry is the cluster
        s_cb[buf][tid] = e < e1 ? __ldg(a.child + (int64_t)h * a.p.n_coarse + e)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
  };
  auto issue = [&](int buf) {
    constexpr int CPR = D / 8;
    for (int id = tid; id < kTileRows * CPR; id += blockDim.x) {
      const int row = id / CPR, ch = id % CPR;
      const T* src = s_ptr[buf][row];
      cp_async16(sC[buf] + swz<D>(row, ch), src ? src + ch * 8 : static_cast<const T*>(a.fine_c),
                 src != nullptr);
    }
    cp_async_commit();
  };

  // Sums over the warp's 16 rows of the 16 tile columns a thread holds (v[2 j + c] is column
  // 8 j + 2 (lane & 3) + c; the 8 lanes sharing lane & 3 hold the same columns), then stored
  // to dst[col]. A reduce-scatter: each of 3 exchange steps halves the columns a lane keeps, so
  // the warp runs 14 shuffles in 3 dependent rounds where one sum per column took 48 in 16
  // chains of 3. A lane ends with two sums, of value indices jc0 and jc0 + 1 (below).
  auto col_sums = [lane](float(&v)[16], float* dst) {
    rs_step<8>(v, lane);
    rs_step<4>(v, lane);
    rs_step<2>(v, lane);
    // v[0], v[1] hold value indices jc0 + {0, 1}: bit 3 of jc0 from lane bit 2, bit 2 from
    // lane bit 3, bit 1 from lane bit 4.
    const int jc0 = ((lane >> 2) & 1) * 8 + ((lane >> 3) & 1) * 4 + ((lane >> 4) & 1) * 2;
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int jc = jc0 + u;
      dst[(jc >> 1) * 8 + 2 * (lane & 3) + (jc & 1)] = v[u];
    }
  };
  const int nt = ceil_div_dev(e1 - e0, kTileRows);
  if (nt > 0) {
    fill_info(0, 0);
    __syncthreads();
    issue(0);
  }
  for (int t = 0; t < nt; t++) {
    const int buf = t & 1;
    if (t + 1 < nt) {
      fill_info(buf ^ 1, t + 1);
      __syncthreads();
      issue(buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float s[8][4];
    qk_tile<D, T>(s, qf, sC[buf], lane);
    if (!COLSUM) {
      // Per-row tile max, one rescale, then the weighted exponentials.
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const float w = s_w[buf][col];
          if (ISO) {
            const float2 cs = s_st[buf][col];
            s[j][c] = s[j][c] * a.scale_log2 + iso_corr(qn0, cs) + w;
            s[j][c + 2] = s[j][c + 2] * a.scale_log2 + iso_corr(qn1, cs) + w;
          } else {
            s[j][c] = s[j][c] * a.scale_log2 + w;
            s[j][c + 2] = s[j][c + 2] * a.scale_log2 + w;
          }
          mx0 = fmaxf(mx0, s[j][c]);
          mx1 = fmaxf(mx1, s[j][c + 2]);
        }
      if (mx0 > st0.m) {
        const float cc = exp2_diff(st0.m, mx0);
        st0 = Stat{mx0, st0.sp * cc, st0.sn * cc};
      }
      if (mx1 > st1.m) {
        const float cc = exp2_diff(st1.m, mx1);
        st1 = Stat{mx1, st1.sp * cc, st1.sn * cc};
      }
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const int sg = s_sign[buf][col];
          if (s[j][c] != kNegInf) {
            const float e = exp2f(s[j][c] - st0.m);
            if (sg > 0)
              st0.sp += e;
            else if (sg < 0)
              st0.sn += e;
          }
          if (s[j][c + 2] != kNegInf) {
            const float e = exp2f(s[j][c + 2] - st1.m);
            if (sg > 0)
              st1.sp += e;
            else if (sg < 0)
              st1.sn += e;
          }
        }
    } else {
      float pv[16], bv[16];
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const bool pos = s_sign[buf][col] > 0;
          float p = 0.0f;
          if (ISO) {
            const float2 cs = s_st[buf][col];
            if (pos && v0 && L0 != kNegInf)
              p += exp2f(s[j][c] * a.scale_log2 + iso_corr(qn0, cs) - L0);
            if (pos && v1 && L1 != kNegInf)
              p += exp2f(s[j][c + 2] * a.scale_log2 + iso_corr(qn1, cs) - L1);
          } else {
            if (pos && v0 && L0 != kNegInf) p += exp2f(s[j][c] * a.scale_log2 - L0);
            if (pos && v1 && L1 != kNegInf) p += exp2f(s[j][c + 2] * a.scale_log2 - L1);
          }
          pv[2 * j + c] = p;
          if (child) {  // the same from the plain products and the column's child bound
            const float4 cb = s_cb[buf][col];
            float b = 0.0f;
            if (pos && v0 && L0 != kNegInf)
              b += exp2f(child_logit(s[j][c] * a.scale_log2, qn0, cb) - L0);
            if (pos && v1 && L1 != kNegInf)
              b += exp2f(child_logit(s[j][c + 2] * a.scale_log2, qn1, cb) - L1);
            bv[2 * j + c] = b;
          }
        }
      col_sums(pv, s_cs[warp]);
      if (child) col_sums(bv, s_bs[warp]);
      __syncthreads();
      if (tid < kTileRows && s_sign[buf][tid] > 0) {
        const float tot = s_cs[0][tid] + s_cs[1][tid] + s_cs[2][tid] + s_cs[3][tid];
        atomicAdd(S + e0 + t * kTileRows + tid, tot);
        if (child)
          atomicAdd(B + e0 + t * kTileRows + tid,
                    s_bs[0][tid] + s_bs[1][tid] + s_bs[2][tid] + s_bs[3][tid]);
      }
    }
    __syncthreads();
  }

  pdl_trigger();
  if (!COLSUM) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      st0 = stat_merge(st0, shfl_stat(st0, o));
      st1 = stat_merge(st1, shfl_stat(st1, o));
    }
    if ((lane & 3) == 0) {
      float4* part = a.p.score_part + (int64_t)h * a.p.q_max * kMaxScoreSplits;
      if (v0) part[(int64_t)m0 * kMaxScoreSplits + split] = make_float4(st0.m, st0.sp, st0.sn, 0.f);
      if (v1) part[(int64_t)m1 * kMaxScoreSplits + split] = make_float4(st1.m, st1.sp, st1.sn, 0.f);
    }
    return;
  }
  if (!last_of_head(a.p, stage == kCoarse ? 0 : 1, h, gridDim.x * gridDim.y)) return;
  select_stage(a, stage, h);
}

}  // namespace

template <int D, typename T, bool ISO>
int launch_lookup_mma(const sqz_cuda_shape& s, const LookupArgs& a, int num_sms,
                      cudaStream_t stream) {
  const bool hier = s.n_coarse > 0;
  const int n_kv = s.n_kv_heads;
  const int n_qb = (a.qtot + kTileRows - 1) / kTileRows;
  const int nsplit =
      std::min(kMaxScoreSplits, std::max(1, (3 * num_sms + n_kv * n_qb - 1) / (n_kv * n_qb)));
  const dim3 grid(nsplit, n_qb, n_kv);
  constexpr int smem = 2 * kTileRows * D * (int)sizeof(T);
  // Function attributes are per kernel, so set them once.
  static const bool attr_ok =
      cudaFuncSetAttribute(score_mma_kernel<D, T, false, ISO>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem) == cudaSuccess &&
      cudaFuncSetAttribute(score_mma_kernel<D, T, true, ISO>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem) == cudaSuccess;
  if (!attr_ok) return SQZ_CUDA_ECUDA;
  auto run = [&](int stage) {
    launch_k(score_mma_kernel<D, T, false, ISO>, grid, 128, smem, stream, a, stage, nsplit);
    launch_k(score_mma_kernel<D, T, true, ISO>, grid, 128, smem, stream, a, stage, nsplit);
  };
  run_stages(hier, run);
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

template int launch_lookup_mma<128, __half, false>(const sqz_cuda_shape&, const LookupArgs&, int,
                                                   cudaStream_t);
template int launch_lookup_mma<128, __half, true>(const sqz_cuda_shape&, const LookupArgs&, int,
                                                  cudaStream_t);
template int launch_lookup_mma<128, __nv_bfloat16, false>(const sqz_cuda_shape&, const LookupArgs&,
                                                          int, cudaStream_t);
template int launch_lookup_mma<128, __nv_bfloat16, true>(const sqz_cuda_shape&, const LookupArgs&,
                                                         int, cudaStream_t);
template int launch_lookup_mma<64, __half, false>(const sqz_cuda_shape&, const LookupArgs&, int,
                                                  cudaStream_t);
template int launch_lookup_mma<64, __half, true>(const sqz_cuda_shape&, const LookupArgs&, int,
                                                 cudaStream_t);
template int launch_lookup_mma<64, __nv_bfloat16, false>(const sqz_cuda_shape&, const LookupArgs&,
                                                         int, cudaStream_t);
template int launch_lookup_mma<64, __nv_bfloat16, true>(const sqz_cuda_shape&, const LookupArgs&,
                                                        int, cudaStream_t);

}  // namespace sqz::cuda
