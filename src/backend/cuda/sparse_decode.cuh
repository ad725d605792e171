// Split-KV sparse attention for few query rows per KV head (decode: n_q * group <= 8).
//
// Persistent CTAs walk the plan's work items; one item = one KV head x a chunk of its kept rows,
// and one CTA serves every query row of that KV head (GQA group x tokens), so each selected K/V
// row is read from memory exactly once per step. Rows are read with 16-byte streaming loads
// (D/8 lanes per row, several rows in flight per lane group); the CTA's partial state is merged
// across its warps in shared memory, and the last CTA to finish a head merges the head's splits.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

int launch_sparse_decode(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                         cudaStream_t stream);

}  // namespace sqz::cuda
