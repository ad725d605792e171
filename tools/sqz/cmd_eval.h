// `sqz eval`: the long-context accuracy evaluation (squeezed attention vs baselines at equal
// budget). main() calls register_eval_command next to the other register_* functions.
#pragma once

#include "commands.h"

namespace sqz::cli {

void register_eval_command(CLI::App& app, Runners& runners);

}  // namespace sqz::cli
