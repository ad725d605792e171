// Probe (session 15): what one head barrier plus the exchange of split partials costs in the
// fused decode plan, and what a thread-block cluster would cost instead.
//
// The decode plan's path to its first ranges is a chain of phases separated by head barriers
// (NOTES.md, "What 7x at 128K on the H100 needs now"). Each barrier today is an acq_rel ticket
// on a global counter plus a spin, and each exchange reads the other CTAs' partials back from
// L2. A cluster of the head's CTAs (sm_90) could replace both with barrier.cluster and
// distributed shared memory. Before rewriting the plan around that, this measures the two
// mechanisms alone, with the plan's grid: G = 32 heads x NS splits of 256 threads, rounds of
// "write a partial, barrier, every CTA reduces the NS partials", each round depending on the
// last (so the time per round is latency, not throughput).
//
//   mode ticket:  head_barrier (common.cuh: cta_ticket + ld.acquire spin), partials through global
//   (__ldcg) mode cluster: cooperative_groups cluster.sync(), partials read by ld.shared::cluster
//
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -Isrc dev/kernels/barrier_probe.cu -o barrier_probe
// Prints one line per (mode, NS): microseconds per round (median of 7 launches) and the first
// round alone (entry of the earliest CTA to the last CTA past the first barrier).
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "backend/cuda/common.cuh"

namespace cg = cooperative_groups;
using namespace sqz::cuda;

constexpr int kG = 32;  // heads (LLaMA-2-7B KV heads)

__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

// t: [G * ns, 3] entry, after the first round, after all rounds (ns)
__global__ void __launch_bounds__(256) ticket_kernel(unsigned* cnt, float* part, int ns, int rounds,
                                                     unsigned long long* t, float* sink) {
  const int g = blockIdx.y, r = blockIdx.x, tid = threadIdx.x;
  const unsigned long long t0 = gtime();
  unsigned long long t1 = 0;
  __shared__ float s_acc;
  float acc = (float)r;
  for (int k = 0; k < rounds; k++) {
    float* buf = part + ((size_t)(k & 1) * kG + g) * 32;
    if (tid == 0) __stcg(buf + r, acc * 0.5f + 1.0f);
    head_barrier(cnt + g, (unsigned)((k + 1) * ns));  // the plan's own barrier (common.cuh)
    if (tid < 32) {
      float v = tid < ns ? __ldcg(buf + tid) : 0.0f;
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (tid == 0) s_acc = v;
    }
    __syncthreads();
    acc = s_acc;
    if (k == 0) t1 = gtime();
  }
  if (tid == 0) {
    t[(g * ns + r) * 3 + 0] = t0;
    t[(g * ns + r) * 3 + 1] = t1;
    t[(g * ns + r) * 3 + 2] = gtime();
    sink[g * ns + r] = acc;
  }
}

__global__ void __launch_bounds__(256)
    cluster_kernel(int ns, int rounds, unsigned long long* t, float* sink) {
  cg::cluster_group cl = cg::this_cluster();
  const int g = blockIdx.y, r = (int)cl.block_rank(), tid = threadIdx.x;
  const unsigned long long t0 = gtime();
  unsigned long long t1 = 0;
  __shared__ float s_part[2];
  __shared__ float s_acc;
  float acc = (float)r;
  for (int k = 0; k < rounds; k++) {
    if (tid == 0) s_part[k & 1] = acc * 0.5f + 1.0f;
    cl.sync();
    if (tid < 32) {
      float v = 0.0f;
      if (tid < ns) v = *cl.map_shared_rank(&s_part[k & 1], tid);
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (tid == 0) s_acc = v;
    }
    __syncthreads();
    acc = s_acc;
    if (k == 0) t1 = gtime();
  }
  cl.sync();  // no CTA leaves while another may still read its shared memory
  if (tid == 0) {
    t[(g * ns + r) * 3 + 0] = t0;
    t[(g * ns + r) * 3 + 1] = t1;
    t[(g * ns + r) * 3 + 2] = gtime();
    sink[g * ns + r] = acc;
  }
}

static bool ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) printf("%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

int main() {
  cudaDeviceProp prop;
  if (!ok(cudaGetDeviceProperties(&prop, 0), "device")) return 1;
  printf("barrier_probe on %s, %d SMs; G = %d heads, 256 threads per CTA\n", prop.name,
         prop.multiProcessorCount, kG);
  unsigned* cnt;
  float *part, *sink;
  unsigned long long* t;
  const int max_ns = 16;
  if (!ok(cudaMalloc(&cnt, kG * sizeof(unsigned)), "malloc") ||
      !ok(cudaMalloc(&part, 2 * kG * 32 * sizeof(float)), "malloc") ||
      !ok(cudaMalloc(&sink, kG * max_ns * sizeof(float)), "malloc") ||
      !ok(cudaMalloc(&t, kG * max_ns * 3 * sizeof(unsigned long long)), "malloc"))
    return 1;
  cudaFuncSetAttribute(cluster_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  std::vector<unsigned long long> h(kG * max_ns * 3);
  for (int mode = 0; mode < 2; mode++) {
    for (int ns : {4, 8, 12, 16}) {
      for (int rounds : {1, 64}) {
        std::vector<double> per, first;
        bool fail = false;
        for (int rep = 0; rep < 7; rep++) {
          cudaMemset(cnt, 0, kG * sizeof(unsigned));
          cudaLaunchConfig_t cfg = {};
          cfg.gridDim = dim3(ns, kG);
          cfg.blockDim = dim3(256);
          cudaLaunchAttribute at[1];
          at[0].id = cudaLaunchAttributeClusterDimension;
          at[0].val.clusterDim.x = ns;
          at[0].val.clusterDim.y = 1;
          at[0].val.clusterDim.z = 1;
          cudaError_t e;
          if (mode == 0) {
            e = cudaLaunchKernelEx(&cfg, ticket_kernel, cnt, part, ns, rounds, t, sink);
          } else {
            cfg.attrs = at;
            cfg.numAttrs = 1;
            e = cudaLaunchKernelEx(&cfg, cluster_kernel, ns, rounds, t, sink);
          }
          if (!ok(e, "launch") || !ok(cudaDeviceSynchronize(), "sync")) {
            fail = true;
            break;
          }
          cudaMemcpy(h.data(), t, kG * ns * 3 * sizeof(unsigned long long), cudaMemcpyDeviceToHost);
          unsigned long long a = ~0ull, b = 0, c = 0;
          for (int i = 0; i < kG * ns; i++) {
            a = std::min(a, h[i * 3]);
            b = std::max(b, h[i * 3 + 1]);
            c = std::max(c, h[i * 3 + 2]);
          }
          per.push_back((c - a) * 1e-3 / rounds);
          first.push_back((b - a) * 1e-3);
        }
        if (fail) {
          printf("%-7s ns=%2d rounds=%2d: not launched\n", mode ? "cluster" : "ticket", ns, rounds);
          cudaGetLastError();
          continue;
        }
        std::sort(per.begin(), per.end());
        std::sort(first.begin(), first.end());
        printf("%-7s ns=%2d rounds=%2d: %.2f us per round, first round %.2f us\n",
               mode ? "cluster" : "ticket", ns, rounds, per[3], first[3]);
      }
    }
  }
  return 0;
}
