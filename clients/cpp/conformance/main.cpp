// gpushare-conformance: the C++ client's scenario CLI (tests/conformance/README.md).
//
//   gpushare-conformance <scenario>
//   gpushare-conformance redeem-child <ticket-hex> <resource-id> <size>
//
// Exit status 0 pass, 1 fail (one `FAIL: ...` line on stderr), 77 skip (`SKIP: ...`), 2 for a
// command line it does not understand. Every scenario runs between two counts of
// /proc/self/fd: a count above the baseline at the end fails it.
#include <grpc/grpc.h>

#include <cstring>
#include <iostream>
#include <thread>

#include "checks.hpp"
#include "gpushare/client.hpp"
#include "scenarios.hpp"

namespace {

using conformance::Env;

struct Scenario {
  const char* name;
  void (*run)(const Env&);
};

constexpr Scenario kScenarios[] = {
    {"connect", conformance::scenario_connect},
    {"session", conformance::scenario_session},
    {"resources", conformance::scenario_resources},
    {"export-redeem", conformance::scenario_export_redeem},
    {"host-sync", conformance::scenario_host_sync},
    {"fd-wait", conformance::scenario_fd_wait},
    {"ops", conformance::scenario_ops},
    {"tickets", conformance::scenario_tickets},
    {"foreign", conformance::scenario_foreign},
    {"extra-fds", conformance::scenario_extra_fds},
    {"stream", conformance::scenario_stream},
    {"fast-path", conformance::scenario_fast_path},
};

int usage() {
  std::cerr << "usage: gpushare-conformance <scenario>\n"
               "       gpushare-conformance redeem-child <ticket-hex> <resource-id> <size>\n"
               "scenarios:";
  for (const Scenario& s : kScenarios) std::cerr << ' ' << s.name;
  std::cerr << std::endl;
  return 2;
}

/// Runs `body`, turning its outcome into the contract's exit status and stderr line.
template <typename F>
int outcome(F&& body) {
  try {
    body();
    return 0;
  } catch (const conformance::Skipped& e) {
    std::cerr << "SKIP: " << e.what() << std::endl;
    return 77;
  } catch (const conformance::Failure& e) {
    std::cerr << "FAIL: " << e.what() << std::endl;
  } catch (const gpushare::Error& e) {
    std::cerr << "FAIL: unexpected error: " << e.what() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "FAIL: unexpected exception: " << e.what() << std::endl;
  }
  return 1;
}

/// Opens one channel (a GetInfo call) and closes it, so that what the gRPC runtime keeps open
/// for the process (its pollers and wake-up descriptors) is in the baseline. The call's
/// outcome does not matter here: a scenario that needs the daemon fails on its own.
void warm_up(const Env& env) {
  try {
    gpushare::Client(env.runtime_dir).get_info();
  } catch (const gpushare::Error& e) {
    std::cout << "warm-up GetInfo failed: " << e.what() << std::endl;
  }
}

/// The descriptors open once their count has not changed for 100 ms (at most 2 s), so that
/// what gRPC's threads close after the warm-up is closed.
std::map<int, std::string> settled_fds() {
  const auto start = std::chrono::steady_clock::now();
  std::map<int, std::string> last = conformance::open_fds();
  auto since = std::chrono::steady_clock::now();
  while (conformance::elapsed_ms(start) < 2000 && conformance::elapsed_ms(since) < 100) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::map<int, std::string> now = conformance::open_fds();
    if (now.size() != last.size()) {
      last = std::move(now);
      since = std::chrono::steady_clock::now();
    }
  }
  return last;
}

/// Descriptors above `baseline` once everything the scenario opened is closed. gRPC closes a
/// destroyed channel's socket on its own threads, so this waits up to 2 s for the count to come
/// back before calling what is left a leak.
int leaked_fds(const std::map<int, std::string>& baseline) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const std::map<int, std::string> now = conformance::open_fds();
    const int leaked = static_cast<int>(now.size()) - static_cast<int>(baseline.size());
    if (leaked <= 0) return 0;
    if (conformance::elapsed_ms(start) >= 2000) {
      for (const auto& [fd, target] : now) {
        const auto before = baseline.find(fd);
        if (before == baseline.end() || before->second != target) {
          std::cout << "open at the end, not in the baseline: fd " << fd << " -> " << target
                    << std::endl;
        }
      }
      return leaked;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const Env env{gpushare::default_runtime_dir()};

  if (std::strcmp(argv[1], "redeem-child") == 0) {
    if (argc != 5) return usage();
    // fd.sock only: no gRPC here.
    return outcome([&] { conformance::redeem_child(env, argv[2], argv[3], argv[4]); });
  }
  if (argc != 2) return usage();
  const Scenario* scenario = nullptr;
  for (const Scenario& s : kScenarios) {
    if (std::strcmp(argv[1], s.name) == 0) scenario = &s;
  }
  if (!scenario) return usage();

  // The gRPC runtime lives for the whole process, as a library's runtime would in a program.
  grpc_init();
  warm_up(env);
  const std::map<int, std::string> baseline = settled_fds();
  int rc = outcome([&] { scenario->run(env); });
  if (rc == 0) {
    rc = outcome([&] {
      const int leaked = leaked_fds(baseline);
      if (leaked > 0) conformance::fail("leaked " + std::to_string(leaked) + " fds");
    });
  }
  grpc_shutdown_blocking();
  return rc;
}
