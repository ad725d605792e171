// The `--device cuda` paths of the engine and of squeezed sessions: the same loops and pack
// format as the CPU paths, with the forward pass on the GPU (src/backend/cuda/fwd/). Engine,
// compile_context and ask dispatch here when the engine was created with Device::kCuda.
//
// Built without CUDA (SQZ_HAVE_CUDA undefined), gpu_backend_create returns kUnsupported and the
// rest is unreachable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/squeeze_session.h"

namespace sqz {

// Loads the model's weights onto the current GPU (kUnsupported: no CUDA build / no GPU).
Result<std::shared_ptr<GpuBackend>> gpu_backend_create(const LlamaModel& m);
// "NVIDIA H100 80GB HBM3 (132 SMs), 0.27 GB f16 weights loaded in 0.41 s"
std::string gpu_backend_describe(const GpuBackend& b);

// Engine::generate on the GPU (dense KV cache).
Result<GenerateResult> gpu_generate(const Engine& e, const std::vector<int32_t>& prompt,
                                    const GenerateParams& gp);

// Logits [n_logits, n_vocab] of the last n_logits prompt tokens (dense causal prefill from
// position 0). For tests and comparisons with the CPU path.
Result<std::vector<float>> gpu_prompt_logits(const Engine& e, const std::vector<int32_t>& tokens,
                                             int64_t n_logits);

// compile_context on the GPU: prefill, then gpu_squeeze_and_write (engine/gpu_compile.h): K/V
// stay on the device for the K-means, cluster statistics and calibration, and the pack is
// streamed from there. CompileReport::capture_s is the K/V check and the observation window's
// copy to the host.
Result<CompileReport> gpu_compile_context(const Engine& e, const std::string& context_text,
                                          const CompileParams& cp, const std::string& out_path,
                                          ProgressFn progress);

// ask / ask_first_logits on the GPU. The lookup scores clusters with the mean or mean_iso
// estimator (--estimator auto: the pack's default), thresholds and budgets come from that
// estimator's calibration table, and it implements the calibrated coarse rule only
// (SelectParams::CoarseRule::kCalibrated). Attention sinks are supported (rows moved out of
// their clusters at upload, always attended); alternative selectors, per-head budgets,
// per-block selection, mass measurement and the mean_var estimator are CPU-only (kUnsupported).
Result<AskResult> gpu_ask(const Engine& e, const Pack& pack, const std::string& question,
                          const AskParams& ap);
Result<std::vector<float>> gpu_ask_first_logits(const Engine& e, const Pack& pack,
                                                const std::vector<int32_t>& question_tokens,
                                                const AskParams& ap, AskResult* stats);

}  // namespace sqz
