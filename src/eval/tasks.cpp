#include "eval/tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>

#include "eval/rng.h"

namespace sqz::eval {

namespace {

// Word lists for keys and values. Hand-written so task generation needs no external word list;
// chosen to be common English words that tokenize into few tokens.
const std::vector<std::string> kAdj = {
    "amber",   "ancient", "bitter", "bold",   "brave",  "bright", "calm",  "clever", "cold",
    "crimson", "curious", "dark",   "eager",  "early",  "faint",  "fancy", "gentle", "golden",
    "grand",   "green",   "happy",  "hidden", "hollow", "humble", "icy",   "jolly",  "lively",
    "lucky",   "mellow",  "misty",  "noble",  "proud",  "quiet",  "rapid", "rough",  "rusty",
    "silent",  "silver",  "sleepy", "smooth", "steady", "stormy", "sunny", "swift",  "tender",
    "tidy",    "wild",    "windy",  "wise",   "young"};
const std::vector<std::string> kNoun = {
    "anchor",  "badger",  "banner",  "barrel",  "basket",   "beacon",  "bridge",   "brook",
    "candle",  "canyon",  "castle",  "cedar",   "comet",    "compass", "cottage",  "crane",
    "dragon",  "falcon",  "feather", "forest",  "fountain", "garden",  "glacier",  "harbor",
    "hammer",  "island",  "kettle",  "lantern", "meadow",   "mirror",  "mountain", "oasis",
    "orchard", "otter",   "palace",  "pebble",  "pepper",   "pilgrim", "planet",   "prairie",
    "quarry",  "rabbit",  "raven",   "ribbon",  "river",    "saddle",  "shadow",   "spruce",
    "summit",  "thistle", "thunder", "tiger",   "tower",    "valley",  "violin",   "walrus",
    "willow",  "wizard",  "zephyr"};
const std::vector<std::string> kValueWords = {
    "apple",    "biscuit", "cabbage", "carrot", "cherry",  "cocoa",  "coffee",  "cotton",
    "diamond",  "engine",  "glove",   "guitar", "helmet",  "honey",  "jacket",  "ladder",
    "lemon",    "marble",  "melon",   "needle", "onion",   "orange", "paper",   "peach",
    "pencil",   "piano",   "pillow",  "potato", "pumpkin", "rocket", "saddle",  "salmon",
    "scarf",    "shovel",  "spoon",   "sugar",  "teapot",  "tomato", "trumpet", "turnip",
    "umbrella", "velvet",  "wagon",   "walnut", "whistle", "window", "yogurt",  "zipper"};
const std::vector<std::string> kFirst = {
    "Alice",   "Bruno", "Clara",  "Daniel", "Elena",  "Felix",  "Greta", "Hugo",  "Irene",
    "Jonas",   "Karla", "Leon",   "Marta",  "Nils",   "Olga",   "Pablo", "Quinn", "Rosa",
    "Simon",   "Tilda", "Ulrich", "Vera",   "Walter", "Xenia",  "Yusuf", "Zora",  "Arne",
    "Bettina", "Cyril", "Dora",   "Emil",   "Frida",  "Gustav", "Hanna", "Ivo",   "Juno"};
const std::vector<std::string> kLast = {
    "Abbott",       "Baxter",    "Calloway",  "Dunmore",    "Ellery",   "Fairfax",
    "Garrick",      "Holloway",  "Ingram",    "Jessup",     "Kimball",  "Lockhart",
    "Merriweather", "Norcross",  "Oakley",    "Pemberton",  "Quimby",   "Radcliffe",
    "Sheffield",    "Thackeray", "Underhill", "Vandermeer", "Whitlock", "Yardley",
    "Ashdown",      "Blackwood", "Carrow",    "Drummond",   "Eastwick"};
const std::vector<std::string> kTownA = {"Bram",  "Cold", "Dun",   "Elder", "Fern",  "Glen",
                                         "Hazel", "Iron", "Kings", "Lark",  "Marsh", "North",
                                         "Oak",   "Pine", "Raven", "Stone", "Thorn", "Wester"};
const std::vector<std::string> kTownB = {"wick", "ford", "bury", "haven", "mere",  "stead",
                                         "holm", "gate", "moor", "field", "cliff", "dale"};
const std::vector<std::string> kFruit = {"apricot", "banana", "blueberry", "coconut",   "fig",
                                         "grape",   "kiwi",   "mango",     "papaya",    "pear",
                                         "plum",    "quince", "raspberry", "strawberry"};
const std::vector<std::string> kJob = {"baker",   "carpenter",    "dentist",    "electrician",
                                       "farmer",  "gardener",     "journalist", "librarian",
                                       "pilot",   "plumber",      "sailor",     "tailor",
                                       "teacher", "veterinarian", "architect",  "chemist"};

std::string hex_string(Rng& r, int n) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; i++) s += kHex[r.below(16)];
  return s;
}

std::string upper_name(Rng& r, int n) {
  std::string s;
  for (int i = 0; i < n; i++) s += (char)('A' + r.below(26));
  return s;
}

// Occurrences as a whole word (no letter or digit on either side), so "pear" in "appear" or
// "4821" in "48213" do not count.
size_t count_words(const std::string& hay, const std::string& w) {
  auto alnum = [](char c) { return std::isalnum((unsigned char)c) != 0; };
  size_t n = 0;
  for (size_t p = hay.find(w); p != std::string::npos; p = hay.find(w, p + 1)) {
    const bool left = p == 0 || !alnum(hay[p - 1]);
    const bool right = p + w.size() >= hay.size() || !alnum(hay[p + w.size()]);
    if (left && right) n++;
  }
  return n;
}

// Draws values no haystack paragraph or earlier draw can contain (retries on a clash).
class UniqueDraw {
 public:
  explicit UniqueDraw(Rng& r) : r_(r) {}
  template <typename F>
  std::string draw(F gen) {
    for (int attempt = 0;; attempt++) {
      std::string v = gen(r_);
      if (used_.insert(v).second || attempt > 1000) return v;
    }
  }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    for (int attempt = 0;; attempt++) {
      const T& x = r_.pick(v);
      if (used_.insert(x).second || attempt > 1000) return x;
    }
  }

 private:
  Rng& r_;
  std::set<std::string> used_;
};

struct Needle {
  std::string text;
  double depth = 0;  // requested relative position in [0, 1]
};

// Haystack paragraphs with needles inserted at paragraph boundaries; the context has at most
// target tokens. Returns the context and the character offset of each needle.
struct Assembled {
  std::string context;
  std::vector<size_t> offsets;  // [needles.size()] byte offset of each needle
  int64_t n_tokens = 0;
};

Result<Assembled> assemble(const Corpus& corpus, Rng& rng, const std::vector<Needle>& needles,
                           int64_t target, const TokenCounter& count) {
  // Tokens the blank line between two paragraphs adds, as this counter sees it.
  const int64_t sep = std::max<int64_t>(0, count("word\n\nword") - 2 * count("word"));
  int64_t needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += count(n.text) + sep;
  if (needle_tokens >= target)
    return Error(Code::kInvalidArgument, "needles take {} tokens, more than the target {}",
                 needle_tokens, target);
  std::vector<const std::string*> hay;
  const size_t np = corpus.paragraphs.size();
  size_t at = (size_t)rng.below(np);
  int64_t used = needle_tokens;
  // Consecutive paragraphs; once one does not fit, the next few are tried so a long paragraph
  // does not leave the context much shorter than asked.
  int misses = 0;
  for (size_t taken = 0; taken < np && misses < 24; taken++) {
    const std::string& p = corpus.paragraphs[(at + taken) % np];
    const int64_t t = count(p) + sep;
    if (used + t > target) {
      misses++;
      continue;
    }
    used += t;
    hay.push_back(&p);
  }
  // Exact count of the whole text; drop trailing haystack paragraphs until it fits (token
  // merges across paragraph boundaries make the sum an estimate).
  while (true) {
    const size_t m = hay.size();
    std::vector<std::vector<size_t>> at_slot(m + 1);
    for (size_t i = 0; i < needles.size(); i++) {
      const double d = std::clamp(needles[i].depth, 0.0, 1.0);
      at_slot[(size_t)std::lround(d * (double)m)].push_back(i);
    }
    Assembled a;
    a.offsets.assign(needles.size(), 0);
    for (size_t s = 0; s <= m; s++) {
      for (size_t i : at_slot[s]) {
        if (!a.context.empty()) a.context += "\n\n";
        a.offsets[i] = a.context.size();
        a.context += needles[i].text;
      }
      if (s < m) {
        if (!a.context.empty()) a.context += "\n\n";
        a.context += *hay[s];
      }
    }
    a.n_tokens = count(a.context);
    if (a.n_tokens <= target) return a;
    if (hay.empty()) return Error(Code::kInvalidArgument, "needles alone exceed {} tokens", target);
    hay.pop_back();
  }
}

// Evenly spread depths with jitter, shuffled: needle i lands in the i-th of n equal bands of
// [0.03, 0.93] (the last tokens of the context are always attended by every method, so
// evidence there would not test selection).
std::vector<double> spread_depths(Rng& r, size_t n) {
  std::vector<double> d(n);
  for (size_t i = 0; i < n; i++) d[i] = 0.03 + 0.90 * ((double)i + r.uniform()) / (double)n;
  r.shuffle(d);
  return d;
}

std::string value_noun(const std::string& kind) {
  return kind == "number" ? "number" : kind == "word" ? "word" : "code";
}

std::string draw_value(UniqueDraw& u, const std::string& kind) {
  if (kind == "number")
    return u.draw([](Rng& r) { return std::to_string(r.range(1000000, 9999999)); });
  if (kind == "word") return u.pick(kValueWords);
  return u.draw([](Rng& r) { return hex_string(r, 8) + "-" + hex_string(r, 4); });
}

std::string draw_key(UniqueDraw& u) {
  return u.draw([](Rng& r) { return r.pick(kAdj) + "-" + r.pick(kNoun); });
}

void set_depths(TaskInstance& t, const Assembled& a, const std::vector<int>& first_needle) {
  for (size_t q = 0; q < t.questions.size(); q++)
    t.questions[q].depth =
        a.context.empty() ? 0
                          : (double)a.offsets[(size_t)first_needle[q]] / (double)a.context.size();
}

const std::vector<std::string> kValueKinds = {"number", "word", "uuid"};

Result<TaskInstance> make_niah(const Corpus& corpus, const TaskParams& p, Rng& r,
                               const TokenCounter& count) {
  TaskInstance t;
  UniqueDraw u(r);
  std::vector<Needle> needles;
  std::vector<int> first;
  if (p.kind == TaskKind::kNiahMultiValue) {
    // Each key has two values at independent depths; numbers, as in RULER's multi-value task.
    const int nk = std::max(1, p.n_items);
    const std::vector<double> depth = spread_depths(r, (size_t)(2 * nk));
    for (int k = 0; k < nk; k++) {
      const std::string key = draw_key(u);
      Question q;
      q.text = "What are the special magic numbers for " + key + "?";
      q.value_kind = "number";
      for (int v = 0; v < 2; v++) {
        q.expected.push_back(draw_value(u, "number"));
        needles.push_back(
            {"One of the special magic numbers for " + key + " is: " + q.expected.back() + ".",
             depth[(size_t)(2 * k + v)]});
      }
      first.push_back(depth[(size_t)(2 * k)] < depth[(size_t)(2 * k + 1)] ? 2 * k : 2 * k + 1);
      t.questions.push_back(std::move(q));
    }
  } else {
    const int n = p.kind == TaskKind::kNiahSingle ? 1 : std::max(1, p.n_items);
    const std::vector<double> depth = spread_depths(r, (size_t)n);
    for (int i = 0; i < n; i++) {
      const std::string kind = kValueKinds[(size_t)(i + p.index) % kValueKinds.size()];
      const std::string key = draw_key(u), value = draw_value(u, kind);
      const std::string noun = value_noun(kind);
      needles.push_back(
          {"One of the special magic " + noun + "s for " + key + " is: " + value + ".",
           depth[(size_t)i]});
      Question q;
      q.text = "What is the special magic " + noun + " for " + key + "?";
      q.expected = {value};
      q.value_kind = kind;
      first.push_back(i);
      t.questions.push_back(std::move(q));
    }
  }
  SQZ_ASSIGN_OR_RETURN(Assembled a, assemble(corpus, r, needles, p.target_tokens, count));
  set_depths(t, a, first);
  for (const auto& n : needles) t.needles.push_back(n.text);
  t.context = std::move(a.context);
  t.n_tokens = a.n_tokens;
  return t;
}

Result<TaskInstance> make_vt(const Corpus& corpus, const TaskParams& p, Rng& r,
                             const TokenCounter& count) {
  // Chains of three variables: VAR A = 12345. VAR B = VAR A. VAR C = VAR B. The statements of a
  // chain appear in order (depths sorted), chains interleave and distract each other.
  TaskInstance t;
  UniqueDraw u(r);
  const int nc = std::max(1, p.n_items);
  std::vector<Needle> needles;
  std::vector<int> first;
  for (int c = 0; c < nc; c++) {
    std::vector<std::string> names;
    for (int i = 0; i < 3; i++) names.push_back(u.draw([](Rng& g) { return upper_name(g, 5); }));
    const std::string value = u.draw([](Rng& g) { return std::to_string(g.range(10000, 99999)); });
    std::vector<double> d = {r.uniform(), r.uniform(), r.uniform()};
    for (auto& x : d) x = 0.03 + 0.90 * x;
    std::sort(d.begin(), d.end());
    first.push_back((int)needles.size());
    needles.push_back({"VAR " + names[0] + " = " + value + ".", d[0]});
    needles.push_back({"VAR " + names[1] + " = VAR " + names[0] + ".", d[1]});
    needles.push_back({"VAR " + names[2] + " = VAR " + names[1] + ".", d[2]});
    Question q;
    q.text = "What is the value of VAR " + names[2] + "?";
    q.expected = {value};
    q.value_kind = "number";
    t.questions.push_back(std::move(q));
  }
  SQZ_ASSIGN_OR_RETURN(Assembled a, assemble(corpus, r, needles, p.target_tokens, count));
  set_depths(t, a, first);
  for (const auto& n : needles) t.needles.push_back(n.text);
  t.context = std::move(a.context);
  t.n_tokens = a.n_tokens;
  return t;
}

Result<TaskInstance> make_cwe(const Corpus& corpus, const TaskParams& p, Rng& r,
                              const TokenCounter& count) {
  // A numbered list: one word repeated many times (about 1 item in 12), every other word 1-3
  // times. Asked for the most frequent word.
  if (corpus.words.size() < 64)
    return Error(Code::kInvalidArgument, "corpus has only {} distinct words", corpus.words.size());
  const std::string header = "Below is a numbered list of words.";
  std::vector<std::string> vocab = corpus.words;
  r.shuffle(vocab);
  const std::string top = vocab[0];
  auto build = [&](int64_t n_items, Rng& g) {
    std::vector<std::string> items;
    const int64_t n_top = std::max<int64_t>(6, n_items / 12);
    for (int64_t i = 0; i < n_top; i++) items.push_back(top);
    size_t w = 1;
    while ((int64_t)items.size() < n_items) {
      const int64_t rep = std::min<int64_t>(g.range(1, 3), n_items - (int64_t)items.size());
      const std::string& word = vocab[1 + (w - 1) % (vocab.size() - 1)];
      w++;
      for (int64_t k = 0; k < rep; k++) items.push_back(word);
    }
    g.shuffle(items);
    std::string s = header + "\n";
    for (size_t i = 0; i < items.size(); i++) s += std::to_string(i + 1) + ". " + items[i] + "\n";
    return s;
  };
  // Tokens per item from a trial list, then shrink until the exact count fits.
  Rng trial_rng(r.next());
  const int64_t trial_items = 64;
  const double per_item =
      (double)(count(build(trial_items, trial_rng)) - count(header)) / (double)trial_items;
  int64_t n_items = std::max<int64_t>(
      8, (int64_t)((double)(p.target_tokens - count(header) - 2) / std::max(per_item, 1.0)));
  const uint64_t list_seed = r.next();
  while (true) {
    Rng g(list_seed);
    std::string ctx = build(n_items, g);
    const int64_t n = count(ctx);
    if (n <= p.target_tokens) {
      TaskInstance t;
      t.context = std::move(ctx);
      t.n_tokens = n;
      Question q;
      q.text = "What is the most common word in the list above?";
      q.expected = {top};
      q.value_kind = "word";
      q.depth = 0;
      t.questions.push_back(std::move(q));
      return t;
    }
    if (n_items <= 8) return Error(Code::kInvalidArgument, "target {} too short", p.target_tokens);
    n_items -= std::max<int64_t>(1, n_items / 50);
  }
}

// PreFixQA-style facts: a subject unique in the document and a value.
struct FactTemplate {
  const char* fact;      // {S} subject, {V} value
  const char* question;  // {S}
  bool person;           // subject is a person (else a town)
  const char* value_kind;
};
const FactTemplate kFacts[] = {
    {"{S}'s locker number is {V}.", "What is {S}'s locker number?", true, "number"},
    {"The password of the {S} office is {V}.", "What is the password of the {S} office?", false,
     "word"},
    {"{S} was born in the town of {V}.", "In which town was {S} born?", true, "name"},
    {"The {S} bridge was built in the year {V}.", "In which year was the {S} bridge built?", false,
     "year"},
    {"The serial code of the {S} generator is {V}.",
     "What is the serial code of the {S} generator?", false, "uuid"},
    {"The favourite fruit of {S} is the {V}.", "What is the favourite fruit of {S}?", true,
     "fruit"},
    {"The {S} train leaves from platform {V}.", "From which platform does the {S} train leave?",
     false, "number"},
    {"{S} works as a {V}.", "What is {S}'s job?", true, "job"},
};

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
    s.replace(p, from.size(), to);
  return s;
}

Result<TaskInstance> make_prefixqa(const Corpus& corpus, const TaskParams& p, Rng& r,
                                   const TokenCounter& count) {
  TaskInstance t;
  UniqueDraw u(r);
  const int n = std::max(1, p.n_items);
  const int n_templates = (int)(sizeof(kFacts) / sizeof(kFacts[0]));
  const std::vector<double> depth = spread_depths(r, (size_t)n);
  std::vector<Needle> needles;
  std::vector<int> first;
  auto town = [](Rng& g) { return g.pick(kTownA) + g.pick(kTownB); };
  for (int i = 0; i < n; i++) {
    const FactTemplate& f = kFacts[(i + p.index) % n_templates];
    const std::string subj =
        f.person ? u.draw([](Rng& g) { return g.pick(kFirst) + " " + g.pick(kLast); })
                 : u.draw(town);
    const std::string vk = f.value_kind;
    std::string value;
    if (vk == "number" && f.person)
      value = u.draw([](Rng& g) { return std::to_string(g.range(1000, 9999)); });
    else if (vk == "number")
      value = u.draw([](Rng& g) { return std::to_string(g.range(11, 98)); });
    else if (vk == "word")
      value = u.pick(kValueWords);
    else if (vk == "name")
      value = u.draw(town);
    else if (vk == "year")
      value = u.draw([](Rng& g) { return std::to_string(g.range(1700, 1999)); });
    else if (vk == "uuid")
      value = u.draw([](Rng& g) { return hex_string(g, 8) + "-" + hex_string(g, 4); });
    else if (vk == "fruit")
      value = u.pick(kFruit);
    else
      value = u.pick(kJob);
    needles.push_back(
        {replace_all(replace_all(f.fact, "{S}", subj), "{V}", value), depth[(size_t)i]});
    Question q;
    q.text = replace_all(f.question, "{S}", subj);
    q.expected = {value};
    q.value_kind = vk;
    first.push_back(i);
    t.questions.push_back(std::move(q));
  }
  SQZ_ASSIGN_OR_RETURN(Assembled a, assemble(corpus, r, needles, p.target_tokens, count));
  set_depths(t, a, first);
  for (const auto& n : needles) t.needles.push_back(n.text);
  t.context = std::move(a.context);
  t.n_tokens = a.n_tokens;
  return t;
}

}  // namespace

const char* task_name(TaskKind k) {
  switch (k) {
    case TaskKind::kNiahSingle:
      return "niah_single";
    case TaskKind::kNiahMultiKey:
      return "niah_multikey";
    case TaskKind::kNiahMultiValue:
      return "niah_multivalue";
    case TaskKind::kVariableTracking:
      return "variable_tracking";
    case TaskKind::kCommonWords:
      return "common_words";
    case TaskKind::kPrefixQa:
      return "prefixqa";
  }
  return "?";
}

Result<TaskKind> parse_task_name(const std::string& s) {
  for (TaskKind k : {TaskKind::kNiahSingle, TaskKind::kNiahMultiKey, TaskKind::kNiahMultiValue,
                     TaskKind::kVariableTracking, TaskKind::kCommonWords, TaskKind::kPrefixQa})
    if (s == task_name(k)) return k;
  return Error(Code::kInvalidArgument,
               "unknown task '{}' (niah_single, niah_multikey, niah_multivalue, "
               "variable_tracking, common_words, prefixqa)",
               s);
}

Result<TaskInstance> make_task(const Corpus& corpus, const TaskParams& p,
                               const TokenCounter& count) {
  if (corpus.paragraphs.empty()) return Error(Code::kInvalidArgument, "empty corpus");
  if (p.target_tokens < 64)
    return Error(Code::kInvalidArgument, "target length {} tokens is too short", p.target_tokens);
  // One stream per (seed, task, length, instance): instances do not shift when others change.
  const uint64_t base =
      derive_seed(derive_seed(derive_seed(p.seed, (uint64_t)p.kind + 1), (uint64_t)p.target_tokens),
                  (uint64_t)p.index);
  Status last = Error(Code::kInternal, "no attempt");
  // A drawn value may occur in the haystack by accident (a 4-digit number in the docs); such a
  // draw is rejected and the next attempt's stream used, so the answer is unambiguous.
  for (uint64_t attempt = 0; attempt < 16; attempt++) {
    Rng r(derive_seed(base, attempt));
    Result<TaskInstance> res = Error(Code::kInternal, "unreachable");
    switch (p.kind) {
      case TaskKind::kNiahSingle:
      case TaskKind::kNiahMultiKey:
      case TaskKind::kNiahMultiValue:
        res = make_niah(corpus, p, r, count);
        break;
      case TaskKind::kVariableTracking:
        res = make_vt(corpus, p, r, count);
        break;
      case TaskKind::kCommonWords:
        res = make_cwe(corpus, p, r, count);
        break;
      case TaskKind::kPrefixQa:
        res = make_prefixqa(corpus, p, r, count);
        break;
    }
    if (!res.ok()) return res.status();
    TaskInstance t = std::move(res).value();
    t.kind = p.kind;
    t.target_tokens = p.target_tokens;
    t.index = p.index;
    bool clean = true;
    for (size_t i = 0; i < t.questions.size(); i++) {
      Question& q = t.questions[i];
      q.id = fmt::format("{}/{}/{}/{}", task_name(p.kind), p.target_tokens, p.index, i);
      for (const auto& v : q.expected) {
        size_t in_needles = 0;
        for (const auto& n : t.needles) in_needles += count_words(n, v);
        const size_t in_context = count_words(t.context, v);
        if (in_context == 0)
          return Error(Code::kInternal, "{}: expected answer '{}' not in the context", q.id, v);
        // Needle tasks: the value occurs only where a needle put it.
        if (!t.needles.empty() && in_context != in_needles) clean = false;
      }
    }
    if (clean) return t;
    last = Error(Code::kInternal, "{} instance {}: every draw clashed with the haystack",
                 task_name(p.kind), p.index);
  }
  return last;
}

}  // namespace sqz::eval
