// The scenarios of tests/conformance/README.md, each run with the C++ client against the daemon
// in `runtime_dir`. A scenario returns on success and throws Failure or Skipped otherwise;
// main.cpp turns that into the exit status and counts descriptors around it.
#pragma once

#include <string>

namespace conformance {

/// What every scenario gets.
struct Env {
  /// GPUSHARE_RUNTIME_DIR, else the clients' default.
  std::string runtime_dir;
};

// scenarios_control.cpp: the control API.
void scenario_connect(const Env& env);
void scenario_session(const Env& env);
void scenario_resources(const Env& env);
void scenario_host_sync(const Env& env);
void scenario_ops(const Env& env);

// scenarios_fd.cpp: fd.sock and descriptors.
void scenario_export_redeem(const Env& env);
void scenario_fd_wait(const Env& env);
void scenario_tickets(const Env& env);
void scenario_foreign(const Env& env);
void scenario_extra_fds(const Env& env);

// scenarios_stream.cpp: a frame stream, over gRPC and fd.sock.
void scenario_stream(const Env& env);

// scenarios_fastpath.cpp: the CUDA fast path's surface (memop words, signal paths).
void scenario_fast_path(const Env& env);

/// The second process of export-redeem: redeems `ticket_hex` and checks what came back.
void redeem_child(const Env& env, const std::string& ticket_hex, const std::string& id,
                  const std::string& size);

}  // namespace conformance
