// sqz: command-line front end. Only this binary exits the process; the library returns errors.
#include <cstdio>

#include "cmd_eval.h"
#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"sqz: Squeezed Attention inference engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "sqz 0.1.0");
  sqz::cli::Runners runners;
  sqz::cli::register_basic_commands(app, runners);
  sqz::cli::register_squeeze_commands(app, runners);
  sqz::cli::register_genmodel_command(app, runners);
  sqz::cli::register_eval_command(app, runners);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  int rc = 0;
  for (auto& r : runners) rc = r();
  return rc;
}
