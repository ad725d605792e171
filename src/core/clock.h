// Monotonic wall clock in seconds, for the stage timings the engine, compile and eval report.
#pragma once

#include <chrono>

namespace sqz {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace sqz
