// Subcommand registration for the sqz CLI. Each register_* adds subcommands whose callbacks
// push a runner; main() runs the selected one and returns its exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

#include "common.h"

#define SQZ_ASSIGN_OR_RETURN_CLI(lhs, expr)                         \
  auto SQZ_CONCAT(_cres_, __LINE__) = (expr);                       \
  if (!SQZ_CONCAT(_cres_, __LINE__).ok())                           \
    return ::sqz::cli::fail(SQZ_CONCAT(_cres_, __LINE__).status()); \
  lhs = std::move(SQZ_CONCAT(_cres_, __LINE__)).value()

namespace sqz::cli {

using Runners = std::vector<std::function<int()>>;

void register_basic_commands(CLI::App& app, Runners& runners);
void register_squeeze_commands(CLI::App& app, Runners& runners);
void register_genmodel_command(CLI::App& app, Runners& runners);

// `sqz chat --pack PACK`: the squeezed chat lives with the squeeze commands.
void register_chat_pack_option(CLI::App* chat);
bool chat_has_pack(CLI::App* chat);
int run_chat_pack(const CommonFlags& common, const GenFlags& gen);

}  // namespace sqz::cli
