// Descriptor passing over SOCK_SEQPACKET: one message plus its SCM_RIGHTS descriptors. The one
// place that calls recvmsg, and where the receiving rules live:
//
// - MSG_CMSG_CLOEXEC, so no received descriptor leaks into a child exec'd meanwhile;
// - a control buffer of exactly CMSG_SPACE(max_fds * sizeof(int)) bytes for the most
//   descriptors the reply may carry (none when it carries none), so the kernel refuses what does
//   not fit (MSG_CTRUNC) instead of installing it;
// - every descriptor of every SCM_RIGHTS header is taken into a UniqueFd before anything is
//   checked (CMSG_SPACE rounds up: room for one int holds two on 64-bit Linux);
// - MSG_CTRUNC or MSG_TRUNC, or more than max_fds descriptors, is a protocol error, and every
//   descriptor that did arrive closes.
//
// What this module is not: it knows nothing of protobuf, tickets or which reply carries what
// (fd_socket.cpp checks that a reply carries exactly the descriptors its kind announces).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "gpushare/unique_fd.hpp"

namespace gpushare::fdpass {

/// The largest message either side sends.
inline constexpr std::size_t kMaxMessage = 16 * 1024;
/// The most descriptors a caller may make room for in one message (fd.sock's replies carry at
/// most two: a semaphore and its memop word's buffer).
inline constexpr std::size_t kMaxExpectedFds = 4;

/// One received message.
struct Message {
  std::string bytes;
  /// Every descriptor that came with it (at most max_fds: more is a protocol error).
  std::vector<UniqueFd> fds;
};

/// Connects a SOCK_SEQPACKET | SOCK_CLOEXEC Unix socket to `path`.
UniqueFd connect(const std::string& path);

/// Sends one message without descriptors. Never raises SIGPIPE.
void send(int sock, std::string_view bytes);

/// Receives one message with room for up to `max_fds` descriptors (<= kMaxExpectedFds), waiting
/// at most `timeout` when it is not zero (then Error kSystem ETIMEDOUT, code
/// DEADLINE_EXCEEDED). Throws Error::protocol for MSG_CTRUNC, MSG_TRUNC and more than `max_fds`
/// descriptors (after closing what arrived), and a kProtocol error of code UNAVAILABLE when the
/// peer closed the connection. Fewer than `max_fds` is not an error here: the caller checks the
/// count against what the message says it carries.
Message recv(int sock, std::size_t max_fds,
             std::chrono::milliseconds timeout = std::chrono::milliseconds{0});

}  // namespace gpushare::fdpass
