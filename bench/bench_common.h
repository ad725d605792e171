// Helpers shared by the benchmark programs: timing, machine description, memory bandwidth,
// JSON result files under bench/results/.
#pragma once

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sqz::bench {

// "1,2,4" -> {1, 2, 4}
inline std::vector<double> parse_list(const std::string& s) {
  std::vector<double> v;
  size_t i = 0;
  while (i <= s.size()) {
    const size_t j = std::min(s.find(',', i), s.size());
    if (j > i) v.push_back(std::stod(s.substr(i, j - i)));
    i = j + 1;
  }
  return v;
}

// Concatenated Debian perl documentation (perl-doc): a deterministic long text.
inline std::string perl_pods(std::initializer_list<const char*> files) {
  std::string text;
  for (const char* f : files) {
    std::ifstream in(std::string("/usr/share/perl/5.36.0/pod/") + f);
    text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return text;
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline std::string shell(const char* cmd) {
  std::string out;
  if (FILE* p = popen(cmd, "r")) {
    char buf[512];
    while (fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

inline nlohmann::json machine_info() {
  nlohmann::json j;
  j["cpu"] = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'");
  j["cores"] = shell("nproc");
  j["mem_gib"] = shell("free -g | awk '/Mem:/{print $2}'");
  struct utsname u;
  if (uname(&u) == 0) j["kernel"] = std::string(u.release);
  j["commit"] = shell("git -C " SQZ_SOURCE_DIR " rev-parse --short HEAD 2>/dev/null");
  char date[32];
  std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  j["date"] = date;
  return j;
}

inline int64_t peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) / 1024;
  return 0;
}

// Read bandwidth (GB/s): threads sum a buffer far larger than the caches. This is the floor
// that decode (weights + KV streamed once per token) is measured against.
double measure_read_bandwidth(int n_threads, size_t bytes = (size_t)1 << 30);

inline void write_result(const std::string& name, const nlohmann::json& j) {
  char date[32];
  std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y%m%d-%H%M%S", std::gmtime(&t));
  const std::string path =
      std::string(SQZ_SOURCE_DIR) + "/bench/results/" + name + "_" + date + ".json";
  std::ofstream(path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace sqz::bench

namespace sqz {
double measure_read_bandwidth_gbs(int n_threads, size_t bytes);
}
inline double sqz::bench::measure_read_bandwidth(int n_threads, size_t bytes) {
  return sqz::measure_read_bandwidth_gbs(n_threads, bytes);
}
