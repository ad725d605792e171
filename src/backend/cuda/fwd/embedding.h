// Token embedding lookup into the f32 residual stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sqz::fwd {

// x[t, :] = table[tokens[t], :]. tokens: [n_tok] int32 (validated by the caller);
// table: [n_vocab, n_embd] f16; x: [n_tok, n_embd] f32 (all device).
int embed_f32(const int32_t* tokens, const void* table, float* x, int64_t n_tok, int n_embd,
              cudaStream_t stream);

}  // namespace sqz::fwd
