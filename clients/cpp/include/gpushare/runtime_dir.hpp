// Where the daemon's sockets are, as every gpushare client finds them.
#pragma once

#include <string>

namespace gpushare {

/// The name of the control socket (gRPC) in the runtime directory.
inline constexpr const char* kControlSocket = "control.sock";
/// The name of the descriptor socket (SOCK_SEQPACKET) in the runtime directory.
inline constexpr const char* kFdSocket = "fd.sock";

/// `$GPUSHARE_RUNTIME_DIR` if set, else `$XDG_RUNTIME_DIR/gpushare` if XDG_RUNTIME_DIR is set,
/// else `/run/gpushare`. Empty variables count as unset.
std::string default_runtime_dir();

/// `<runtime_dir>/<name>`.
std::string socket_path(const std::string& runtime_dir, const char* name);

}  // namespace gpushare
