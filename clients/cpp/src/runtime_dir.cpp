#include "gpushare/runtime_dir.hpp"

#include <cstdlib>

namespace gpushare {

namespace {
/// The variable's value; empty when unset.
std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}
}  // namespace

std::string default_runtime_dir() {
  if (std::string dir = env("GPUSHARE_RUNTIME_DIR"); !dir.empty()) return dir;
  if (std::string xdg = env("XDG_RUNTIME_DIR"); !xdg.empty()) return xdg + "/gpushare";
  return "/run/gpushare";
}

std::string socket_path(const std::string& runtime_dir, const char* name) {
  if (!runtime_dir.empty() && runtime_dir.back() == '/') return runtime_dir + name;
  return runtime_dir + "/" + name;
}

}  // namespace gpushare
