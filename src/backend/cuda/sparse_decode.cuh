// Split-KV sparse attention for few query rows per KV head (decode: n_q * group <= 8).
//
// A fixed grid of decode_iph CTAs per KV head; CTA i takes chunk i of its head's kept rows, and
// one CTA serves every query row of that KV head (GQA group x tokens), so each selected K/V row
// is read from memory exactly once per step. The CTAs do not wait for the whole plan: each waits
// on its head's ready word, which the plan publishes as soon as that head's merged ranges exist,
// then maps its chunk to physical rows from the ranges itself (no row list, no work items). The
// run of early heads thus overlaps the plan's tails and partition. Rows are read with 16-byte
// streaming loads (D/8 lanes per row, several rows in flight per lane group); the CTA's partial
// state is merged across its warps in shared memory and written as the head's split partial. With
// one query row per KV head (MHA decode) the head's last CTA to finish merges the partials into
// the output; with more, a second kernel (PDL, after the whole grid) does.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/plan.cuh"

namespace sqz::cuda {

int launch_sparse_decode(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                         cudaStream_t stream);

}  // namespace sqz::cuda
