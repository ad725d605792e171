#include "eval/corpus.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace sqz::eval {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

// Appends code point cp as UTF-8.
void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x110000) {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

// Named entities of POD E<...> and HTML &...; that occur in the documentation we read; unknown
// names decode to nothing (deterministic, and rare enough not to matter for haystack text).
bool named_entity(std::string_view name, std::string& out) {
  static const std::pair<const char*, uint32_t> kNames[] = {
      {"lt", '<'},        {"gt", '>'},       {"amp", '&'},      {"quot", '"'},
      {"apos", '\''},     {"verbar", '|'},   {"sol", '/'},      {"nbsp", ' '},
      {"copy", 0xA9},     {"reg", 0xAE},     {"mdash", 0x2014}, {"ndash", 0x2013},
      {"hellip", 0x2026}, {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C},
      {"rdquo", 0x201D},  {"para", 0xB6},    {"times", 0xD7},   {"eacute", 0xE9},
      {"auml", 0xE4},     {"ouml", 0xF6},    {"uuml", 0xFC},    {"laquo", 0xAB},
      {"raquo", 0xBB},    {"middot", 0xB7},  {"deg", 0xB0},     {"sect", 0xA7}};
  for (const auto& [n, cp] : kNames)
    if (name == n) {
      append_utf8(out, cp);
      return true;
    }
  return false;
}

// Numeric entity body: "8217" or "x2019" / "X2019".
bool numeric_entity(std::string_view body, std::string& out) {
  if (body.empty()) return false;
  int base = 10;
  if (body[0] == 'x' || body[0] == 'X') {
    base = 16;
    body.remove_prefix(1);
  }
  if (body.empty() || body.size() > 8) return false;
  uint32_t cp = 0;
  for (char c : body) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return false;
    cp = cp * (uint32_t)base + (uint32_t)d;
  }
  append_utf8(out, cp);
  return true;
}

// Parses POD text from s[i] until the closer (">" for single-bracket codes, " >>" style for
// multi-bracket codes, end of input when close_n == 0), resolving nested codes. Returns the
// index after the closer.
size_t parse_pod(std::string_view s, size_t i, int close_n, std::string& out) {
  while (i < s.size()) {
    const char c = s[i];
    if (close_n == 1 && c == '>') return i + 1;
    if (close_n > 1 && is_space(c)) {
      // Multi-bracket closer: whitespace then exactly close_n '>'.
      size_t j = i;
      while (j < s.size() && is_space(s[j])) j++;
      size_t n = 0;
      while (j + n < s.size() && s[j + n] == '>') n++;
      if ((int)n >= close_n) return j + (size_t)close_n;
    }
    if (c >= 'A' && c <= 'Z' && i + 1 < s.size() && s[i + 1] == '<') {
      size_t j = i + 1, n = 0;
      while (j < s.size() && s[j] == '<') {
        j++;
        n++;
      }
      int inner_close = 1;
      if (n >= 2 && j < s.size() && is_space(s[j])) {
        inner_close = (int)n;
        while (j < s.size() && is_space(s[j])) j++;
      } else if (n >= 2) {
        // "C<<x" without a space is a single-bracket code whose text starts with '<'.
        j = i + 2;
      }
      std::string inner;
      i = parse_pod(s, j, inner_close, inner);
      switch (c) {
        case 'X':
        case 'Z':
          break;
        case 'E': {
          std::string e;
          if (!named_entity(inner, e)) numeric_entity(inner, e);
          out += e;
          break;
        }
        case 'L': {
          // L<text|target>, L<name/"section">, L<"section">, L<name>.
          std::string t = inner;
          const size_t bar = t.find('|');
          if (bar != std::string::npos) {
            t = t.substr(0, bar);
          } else {
            const size_t slash = t.find('/');
            if (slash != std::string::npos && slash + 1 < t.size()) t = t.substr(slash + 1);
            t.erase(std::remove(t.begin(), t.end(), '"'), t.end());
          }
          out += t;
          break;
        }
        default:
          out += inner;
      }
      continue;
    }
    out += c;
    i++;
  }
  return i;
}

std::vector<std::string> split_blocks(std::string_view text) {
  // Paragraphs are separated by lines holding only whitespace.
  std::vector<std::string> blocks;
  std::string cur;
  size_t i = 0;
  while (i <= text.size()) {
    const size_t nl = text.find('\n', i);
    const size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(i, end - i);
    const bool blank = std::all_of(line.begin(), line.end(), is_space);
    if (blank) {
      if (!cur.empty()) blocks.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.append(line);
      cur += '\n';
    }
    if (nl == std::string_view::npos) break;
    i = nl + 1;
  }
  if (!cur.empty()) blocks.push_back(std::move(cur));
  return blocks;
}

Result<std::string> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return Error(Code::kIo, "cannot read {}", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::filesystem::path> sorted_files(const std::filesystem::path& dir,
                                                const std::string& ext, bool recursive) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  auto add = [&](const std::filesystem::directory_entry& e) {
    if (e.is_regular_file() && e.path().extension() == ext) out.push_back(e.path());
  };
  if (recursive) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) add(e);
  } else {
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) add(e);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string collapse_spaces(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending = false;
  for (char c : s) {
    if (is_space(c)) {
      pending = !out.empty();
      continue;
    }
    if (pending) out += ' ';
    pending = false;
    out += c;
  }
  return out;
}

bool is_prose(std::string_view p) {
  if (p.size() < 80 || p.size() > 1200) return false;
  size_t letters = 0, spaces = 0;
  for (unsigned char c : p) {
    if (std::isalpha(c) || c >= 0x80) letters++;
    if (c == ' ') spaces++;
  }
  return (double)(letters + spaces) >= 0.6 * (double)p.size() && spaces >= 9;
}

std::string strip_pod_codes(std::string_view s) {
  std::string out;
  parse_pod(s, 0, 0, out);
  return out;
}

std::vector<std::string> pod_paragraphs(std::string_view pod) {
  std::vector<std::string> out;
  std::string skip_until;  // "=end X" of an open =begin block
  for (const std::string& b : split_blocks(pod)) {
    if (!skip_until.empty()) {
      if (b.rfind(skip_until, 0) == 0) skip_until.clear();
      continue;
    }
    if (b[0] == '=') {
      if (b.rfind("=begin", 0) == 0) {
        std::string fmt = collapse_spaces(std::string_view(b).substr(6));
        fmt = fmt.substr(0, fmt.find(' '));
        skip_until = "=end " + fmt;
      }
      continue;  // command paragraph (=head, =item, =over, =for ...)
    }
    if (is_space(b[0])) continue;  // verbatim (code) paragraph
    std::string p = collapse_spaces(strip_pod_codes(b));
    if (is_prose(p)) out.push_back(std::move(p));
  }
  return out;
}

std::string strip_html(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '<') {
      const size_t e = s.find('>', i);
      if (e == std::string_view::npos) break;
      i = e + 1;
      continue;
    }
    if (c == '&') {
      const size_t e = s.find(';', i);
      if (e != std::string_view::npos && e - i <= 10) {
        std::string_view body = s.substr(i + 1, e - i - 1);
        std::string dec;
        const bool ok = !body.empty() && body[0] == '#' ? numeric_entity(body.substr(1), dec)
                                                        : named_entity(body, dec);
        if (ok) {
          out += dec;
          i = e + 1;
          continue;
        }
      }
    }
    out += c;
    i++;
  }
  return out;
}

std::vector<std::string> html_paragraphs(std::string_view html) {
  size_t begin = html.find("role=\"main\"");
  if (begin == std::string_view::npos) begin = 0;
  size_t end = html.find("class=\"sphinxsidebar\"", begin);
  if (end == std::string_view::npos) end = html.size();
  const std::string_view body = html.substr(begin, end - begin);
  std::vector<std::string> out;
  size_t i = 0;
  while (true) {
    // "<p>" or "<p class=...>", not "<pre>" or "<param>".
    size_t p = body.find("<p", i);
    if (p == std::string_view::npos) break;
    if (p + 2 >= body.size() || (body[p + 2] != '>' && body[p + 2] != ' ')) {
      i = p + 2;
      continue;
    }
    const size_t open_end = body.find('>', p);
    const size_t close = body.find("</p>", p);
    if (open_end == std::string_view::npos || close == std::string_view::npos) break;
    std::string t = collapse_spaces(strip_html(body.substr(open_end + 1, close - open_end - 1)));
    if (is_prose(t)) out.push_back(std::move(t));
    i = close + 4;
  }
  return out;
}

Result<Corpus> load_corpus(const CorpusParams& p) {
  Corpus c;
  for (const auto& f : sorted_files(p.perl_pod_dir, ".pod", false)) {
    if (f.filename().string().rfind("perl5", 0) == 0 &&
        f.filename().string().find("delta") != std::string::npos)
      continue;
    SQZ_ASSIGN_OR_RETURN(std::string text, read_file(f));
    for (auto& para : pod_paragraphs(text)) c.paragraphs.push_back(std::move(para));
  }
  for (const auto& sub : p.python_subdirs) {
    for (const auto& f :
         sorted_files(std::filesystem::path(p.python_html_dir) / sub, ".html", true)) {
      SQZ_ASSIGN_OR_RETURN(std::string text, read_file(f));
      for (auto& para : html_paragraphs(text)) c.paragraphs.push_back(std::move(para));
    }
  }
  if (c.paragraphs.empty())
    return Error(Code::kIo,
                 "no haystack text under {} or {} (install perl-doc and python3.11-doc: "
                 "scripts/setup.sh)",
                 p.perl_pod_dir, p.python_html_dir);
  // Words used by at least 10 paragraphs: real English words, not identifiers like "iterinit".
  std::map<std::string, int> df;
  for (const auto& para : c.paragraphs) {
    std::set<std::string> words;
    size_t i = 0;
    while (i < para.size()) {
      size_t j = i;
      while (j < para.size() && para[j] >= 'a' && para[j] <= 'z') j++;
      // Whole lowercase words only: the neighbours must not be letters, digits or '_'.
      const bool left_ok = i == 0 || !std::isalnum((unsigned char)para[i - 1]);
      const bool right_ok = j == para.size() || !(std::isalnum((unsigned char)para[j]) ||
                                                  para[j] == '_' || para[j] == '(');
      if (j - i >= 5 && j - i <= 9 && left_ok && right_ok) words.insert(para.substr(i, j - i));
      i = j == i ? i + 1 : j;
    }
    for (const auto& w : words) df[w]++;
  }
  for (const auto& [w, n] : df)
    if (n >= 10) c.words.push_back(w);
  return c;
}

}  // namespace sqz::eval
