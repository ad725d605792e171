// Haystack text for the long-context evaluation: prose paragraphs extracted deterministically
// from documentation that Debian installs (scripts/setup.sh installs perl-doc and
// python3.11-doc), so every machine that runs the setup script builds the same tasks.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace sqz::eval {

struct CorpusParams {
  std::string perl_pod_dir = "/usr/share/perl/5.36.0/pod";
  std::string python_html_dir = "/usr/share/doc/python3.11/html";
  // Sub-directories of python_html_dir to read (the library reference is mostly API listings).
  std::vector<std::string> python_subdirs = {"tutorial", "howto", "faq", "reference"};
};

struct Corpus {
  std::vector<std::string> paragraphs;  // prose paragraphs, one line each, in file order
  std::vector<std::string> words;       // lowercase words (5-9 letters) in >= 10 paragraphs, sorted
};

// Reads every *.pod of perl_pod_dir except the perl5*delta change logs, then the *.html files
// of the python sub-directories, each list in byte order of the path. Fails when no paragraph
// can be found (documentation not installed).
Result<Corpus> load_corpus(const CorpusParams& p);

// Prose paragraphs of a POD document: command paragraphs (=head, =item, ...), verbatim
// (indented) paragraphs and =begin/=end and =for blocks are dropped; formatting codes are
// replaced by their text (B<x> -> x, L<text|link> -> text, E<gt> -> >, X<..>/Z<> -> nothing).
std::vector<std::string> pod_paragraphs(std::string_view pod);
// Text of a POD paragraph with formatting codes resolved (also C<< a->b >> forms).
std::string strip_pod_codes(std::string_view s);

// Prose paragraphs of a Sphinx HTML page: the text of each <p> element of the main body
// (between role="main" and the sidebar), tags removed and entities decoded.
std::vector<std::string> html_paragraphs(std::string_view html);
// Removes tags and decodes character references (&amp; &#8217; &#x2019; ...).
std::string strip_html(std::string_view s);

// Collapses runs of whitespace to one space and trims both ends.
std::string collapse_spaces(std::string_view s);
// The filter that keeps a paragraph as haystack prose: 80-1200 bytes, at least 60% letters
// or spaces, at least 10 words.
bool is_prose(std::string_view p);

}  // namespace sqz::eval
