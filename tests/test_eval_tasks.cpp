// Evaluation haystack extraction (POD / HTML stripping) and task generation: determinism, the
// length bound, and that every question is answerable from its context and unambiguous.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "eval/corpus.h"
#include "eval/tasks.h"
#include "util/test_util.h"

using namespace sqz::eval;

namespace {

size_t count_sub(const std::string& hay, const std::string& n) {
  size_t c = 0;
  for (size_t p = hay.find(n); p != std::string::npos; p = hay.find(n, p + 1)) c++;
  return c;
}

// Occurrences of w as a whole word (no letter or digit either side).
size_t count_word(const std::string& hay, const std::string& w) {
  size_t c = 0;
  for (size_t p = hay.find(w); p != std::string::npos; p = hay.find(w, p + 1)) {
    const bool l = p == 0 || !std::isalnum((unsigned char)hay[p - 1]);
    const bool r = p + w.size() >= hay.size() || !std::isalnum((unsigned char)hay[p + w.size()]);
    c += l && r;
  }
  return c;
}

// Stand-in tokenizer: one token per whitespace-separated word plus one per newline. Task
// generation only needs a monotone length measure; the harness passes the model's tokenizer.
int64_t word_count(const std::string& s) {
  int64_t n = 0;
  bool in = false;
  for (char c : s) {
    if (c == '\n') n++;
    const bool sp = c == ' ' || c == '\n' || c == '\t';
    if (!sp && !in) n++;
    in = !sp;
  }
  return n;
}

// A synthetic corpus (independent of the installed documentation): 400 paragraphs of random
// lowercase words, numbers and punctuation.
Corpus synthetic_corpus(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::vector<std::string> vocab = {
      "the",    "of",     "perl",   "python",  "module", "function", "returns", "value",
      "string", "number", "list",   "array",   "hash",   "file",     "handle",  "object",
      "class",  "method", "scalar", "context", "error",  "warning",  "option",  "syntax"};
  Corpus c;
  for (int p = 0; p < 400; p++) {
    std::string s;
    const int n = 20 + (int)(rng() % 60);
    for (int w = 0; w < n; w++) {
      if (w) s += ' ';
      if (rng() % 17 == 0)
        s += std::to_string(rng() % 100000);
      else
        s += vocab[rng() % vocab.size()];
    }
    c.paragraphs.push_back(s + ".");
  }
  for (int i = 0; i < 300; i++) {
    std::string w;
    for (int k = 0; k < 6; k++) w += (char)('a' + rng() % 26);
    c.words.push_back(w);
  }
  std::sort(c.words.begin(), c.words.end());
  c.words.erase(std::unique(c.words.begin(), c.words.end()), c.words.end());
  return c;
}

const TaskKind kAll[] = {TaskKind::kNiahSingle,     TaskKind::kNiahMultiKey,
                         TaskKind::kNiahMultiValue, TaskKind::kVariableTracking,
                         TaskKind::kCommonWords,    TaskKind::kPrefixQa};

}  // namespace

TEST(EvalCorpus, PodCodes) {
  EXPECT_EQ(strip_pod_codes("B<bold> I<it> C<< $a->b >> C<<< x >>> F<a/b>"), "bold it $a->b x a/b");
  EXPECT_EQ(strip_pod_codes("L<perlfunc/open> L<text|http://x> L<perlsyn> L<\"Sec\">"),
            "open text perlsyn Sec");
  EXPECT_EQ(strip_pod_codes("E<lt>E<gt> E<verbar> E<233>X<index entry>Z<>."), "<> | \xC3\xA9.");
  EXPECT_EQ(strip_pod_codes("B<nested I<inner> C<c>>"), "nested inner c");
  EXPECT_EQ(strip_pod_codes("a < b and Cx"), "a < b and Cx");  // no code
}

TEST(EvalCorpus, PodParagraphs) {
  const std::string prose =
      "This paragraph is ordinary prose that explains B<something> about the language in "
      "enough words to count as a paragraph of haystack text.";
  const std::string pod = "=head1 NAME\n\nperlfoo - a test\n\n=head1 DESCRIPTION\n\n" + prose +
                          "\n\n    my $code = 1;  # verbatim paragraph that is long enough to be "
                          "prose if it were not indented by four spaces ok\n\n=begin html\n\n"
                          "<p>Inside a begin block the text is dropped even when it is long "
                          "enough to count as prose, which this is indeed.</p>\n\n=end html\n\n"
                          "=over 4\n\n=item * an item\n\n=back\n\n=cut\n";
  const std::vector<std::string> ps = pod_paragraphs(pod);
  ASSERT_EQ(ps.size(), 1u);  // "perlfoo - a test" is too short; the prose is kept
  EXPECT_EQ(ps[0],
            "This paragraph is ordinary prose that explains something about the language in "
            "enough words to count as a paragraph of haystack text.");
}

TEST(EvalCorpus, HtmlParagraphs) {
  const std::string html =
      "<html><body><div class=\"nav\"><p>Navigation text that is long enough to count as a "
      "paragraph of prose but sits outside the main body of the page.</p></div>"
      "<div class=\"body\" role=\"main\"><h1>Title&para;</h1>"
      "<p>Classes provide a means of <em>bundling</em> data &amp; functionality together; "
      "Python&#8217;s class mechanism adds classes with a minimum of new syntax.</p>"
      "<pre>code that is not a paragraph</pre><p class=\"x\">short</p>"
      "<p>Another paragraph with &lt;tags&gt; decoded and &#x2019; entities, long enough to be "
      "kept as prose by the filter.</p></div>"
      "<div class=\"sphinxsidebar\"><p>Sidebar paragraph that is long enough to count as prose "
      "text but must be dropped because it is navigation.</p></div></body></html>";
  const std::vector<std::string> ps = html_paragraphs(html);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(
      ps[0],
      "Classes provide a means of bundling data & functionality together; Python\xE2\x80\x99s "
      "class mechanism adds classes with a minimum of new syntax.");
  EXPECT_NE(ps[1].find("<tags>"), std::string::npos);
}

TEST(EvalCorpus, MissingDirectoriesFail) {
  CorpusParams p;
  p.perl_pod_dir = "/nonexistent/pod";
  p.python_html_dir = "/nonexistent/html";
  auto c = load_corpus(p);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), sqz::Code::kIo);
}

TEST(EvalCorpus, InstalledDocumentation) {
  CorpusParams p;
  if (!std::filesystem::exists(p.perl_pod_dir) || !std::filesystem::exists(p.python_html_dir))
    GTEST_SKIP() << "perl-doc / python3.11-doc not installed (scripts/setup.sh installs them)";
  auto a = load_corpus(p);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_GT(a->paragraphs.size(), 5000u);
  EXPECT_GT(a->words.size(), 1000u);
  for (size_t i = 0; i < a->paragraphs.size(); i += 97) {
    const std::string& s = a->paragraphs[i];
    EXPECT_TRUE(is_prose(s)) << s;
    EXPECT_EQ(s.find('\n'), std::string::npos);
    EXPECT_EQ(s.find("<p>"), std::string::npos) << s;
  }
  auto b = load_corpus(p);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->paragraphs, b->paragraphs);
  EXPECT_EQ(a->words, b->words);
}

TEST(EvalTasks, NamesRoundTrip) {
  for (TaskKind k : kAll) {
    auto r = parse_task_name(task_name(k));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value(), k);
  }
  EXPECT_FALSE(parse_task_name("nope").ok());
}

TEST(EvalTasks, EveryKindIsWellFormed) {
  const Corpus corpus = synthetic_corpus(sqz::test::test_seed());
  for (TaskKind k : kAll)
    for (int64_t target : {300, 1500}) {
      TaskParams p;
      p.kind = k;
      p.target_tokens = target;
      p.n_items = 4;
      p.seed = 11;
      auto t = make_task(corpus, p, word_count);
      ASSERT_TRUE(t.ok()) << task_name(k) << " " << target << ": " << t.status().message();
      SCOPED_TRACE(std::string(task_name(k)) + " " + std::to_string(target));
      EXPECT_EQ(t->kind, k);
      EXPECT_EQ(t->n_tokens, word_count(t->context));
      EXPECT_LE(t->n_tokens, target);
      EXPECT_GE(t->n_tokens, target * 8 / 10);  // the haystack fills the requested length
      ASSERT_FALSE(t->questions.empty());
      std::set<std::string> ids;
      for (const auto& q : t->questions) {
        EXPECT_TRUE(ids.insert(q.id).second) << q.id;
        EXPECT_FALSE(q.text.empty());
        ASSERT_FALSE(q.expected.empty());
        for (const auto& v : q.expected) EXPECT_GE(count_sub(t->context, v), 1u) << v;
        EXPECT_GE(q.depth, 0.0);
        EXPECT_LE(q.depth, 1.0);
      }
      for (const auto& n : t->needles) EXPECT_EQ(count_sub(t->context, n), 1u) << n;
      const size_t expect_q = k == TaskKind::kNiahSingle || k == TaskKind::kCommonWords ? 1 : 4;
      EXPECT_EQ(t->questions.size(), expect_q);
    }
}

TEST(EvalTasks, Deterministic) {
  const Corpus corpus = synthetic_corpus(5);
  for (TaskKind k : kAll) {
    TaskParams p;
    p.kind = k;
    p.target_tokens = 800;
    p.seed = 3;
    auto a = make_task(corpus, p, word_count);
    auto b = make_task(corpus, p, word_count);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->context, b->context);
    ASSERT_EQ(a->questions.size(), b->questions.size());
    for (size_t i = 0; i < a->questions.size(); i++) {
      EXPECT_EQ(a->questions[i].text, b->questions[i].text);
      EXPECT_EQ(a->questions[i].expected, b->questions[i].expected);
    }
    p.index = 1;
    auto c = make_task(corpus, p, word_count);
    ASSERT_TRUE(c.ok());
    EXPECT_NE(a->context, c->context) << task_name(k);
    p.index = 0;
    p.seed = 4;
    auto d = make_task(corpus, p, word_count);
    ASSERT_TRUE(d.ok());
    EXPECT_NE(a->context, d->context) << task_name(k);
  }
}

TEST(EvalTasks, NeedleValuesAreUnambiguous) {
  const Corpus corpus = synthetic_corpus(9);
  for (TaskKind k : {TaskKind::kNiahMultiKey, TaskKind::kNiahMultiValue, TaskKind::kPrefixQa}) {
    TaskParams p;
    p.kind = k;
    p.target_tokens = 2000;
    p.n_items = 6;
    p.seed = 21;
    auto t = make_task(corpus, p, word_count);
    ASSERT_TRUE(t.ok()) << t.status().message();
    std::set<std::string> values;
    for (const auto& q : t->questions)
      for (const auto& v : q.expected) {
        EXPECT_TRUE(values.insert(v).second) << "value reused: " << v;
        // Each value sits in exactly one needle and nowhere else in the context.
        size_t holders = 0;
        for (const auto& n : t->needles) holders += count_word(n, v);
        EXPECT_EQ(holders, 1u) << v;
        EXPECT_EQ(count_word(t->context, v), 1u) << v;
      }
  }
}

TEST(EvalTasks, MultiValueAndVariableTracking) {
  const Corpus corpus = synthetic_corpus(13);
  TaskParams p;
  p.kind = TaskKind::kNiahMultiValue;
  p.target_tokens = 1200;
  p.n_items = 3;
  auto mv = make_task(corpus, p, word_count);
  ASSERT_TRUE(mv.ok());
  ASSERT_EQ(mv->needles.size(), 6u);
  for (const auto& q : mv->questions) {
    ASSERT_EQ(q.expected.size(), 2u);
    const std::string key =
        q.text.substr(q.text.rfind(' ') + 1, q.text.size() - q.text.rfind(' ') - 2);
    for (const auto& v : q.expected)
      EXPECT_EQ(count_sub(mv->context, "for " + key + " is: " + v + "."), 1u) << key << " " << v;
  }

  p.kind = TaskKind::kVariableTracking;
  p.n_items = 2;
  auto vt = make_task(corpus, p, word_count);
  ASSERT_TRUE(vt.ok());
  ASSERT_EQ(vt->needles.size(), 6u);
  for (size_t c = 0; c < 2; c++) {
    // Chain: VAR A = value. VAR B = VAR A. VAR C = VAR B. in context order; asked about C.
    const std::string& s0 = vt->needles[3 * c];
    const std::string& s1 = vt->needles[3 * c + 1];
    const std::string& s2 = vt->needles[3 * c + 2];
    const std::string a = s0.substr(4, 5), b = s1.substr(4, 5), cc = s2.substr(4, 5);
    EXPECT_EQ(s0, "VAR " + a + " = " + vt->questions[c].expected[0] + ".");
    EXPECT_EQ(s1, "VAR " + b + " = VAR " + a + ".");
    EXPECT_EQ(s2, "VAR " + cc + " = VAR " + b + ".");
    EXPECT_EQ(vt->questions[c].text, "What is the value of VAR " + cc + "?");
    EXPECT_LT(vt->context.find(s0), vt->context.find(s1));
    EXPECT_LT(vt->context.find(s1), vt->context.find(s2));
  }
}

TEST(EvalTasks, CommonWordIsTheStrictMode) {
  const Corpus corpus = synthetic_corpus(17);
  for (int64_t target : {300, 3000}) {
    TaskParams p;
    p.kind = TaskKind::kCommonWords;
    p.target_tokens = target;
    auto t = make_task(corpus, p, word_count);
    ASSERT_TRUE(t.ok());
    std::map<std::string, int> freq;
    std::istringstream in(t->context);
    std::string line;
    std::getline(in, line);  // header
    int items = 0;
    while (std::getline(in, line)) {
      const size_t dot = line.find(". ");
      ASSERT_NE(dot, std::string::npos) << line;
      EXPECT_EQ(line.substr(0, dot), std::to_string(++items));
      freq[line.substr(dot + 2)]++;
    }
    const std::string top = t->questions[0].expected[0];
    for (const auto& [w, n] : freq) {
      if (w == top) continue;
      EXPECT_GT(freq[top], n) << w;
    }
    EXPECT_GE(freq[top], 6);
  }
}

TEST(EvalTasks, RejectsBadParams) {
  const Corpus corpus = synthetic_corpus(1);
  TaskParams p;
  p.target_tokens = 10;
  EXPECT_FALSE(make_task(corpus, p, word_count).ok());
  Corpus empty;
  p.target_tokens = 1000;
  EXPECT_FALSE(make_task(empty, p, word_count).ok());
  // More needles than fit.
  p.kind = TaskKind::kPrefixQa;
  p.target_tokens = 100;
  p.n_items = 50;
  EXPECT_FALSE(make_task(corpus, p, word_count).ok());
}
