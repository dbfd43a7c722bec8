// fd.sock: the daemon's SOCK_SEQPACKET socket that hands out descriptors (ticket redeem, direct
// export), serves low-latency host waits and a frame stream's frame calls. One FdRequest
// protobuf per message, one FdReply per message back, the descriptors as SCM_RIGHTS (an
// `exported` reply carries one, or two for a semaphore's memop word when asked for; every other
// reply none).
//
// gRPC cannot carry descriptors, so this is raw sendmsg/recvmsg, with the receiving rules every
// gpushare client keeps (see fdpass.hpp). Not thread-safe: one request at a time per FdSocket
// (the protocol carries one request at a time per connection anyway); open one per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "gpushare/error.hpp"
#include "gpushare/unique_fd.hpp"
#include "gpushare/v1/gpushare.pb.h"

namespace gpushare {

/// An exported descriptor and everything needed to import it.
///
/// Importing takes ownership of `fd` only when it succeeds (see vulkan_import.hpp): until then
/// the descriptor is this object's and closes with it.
struct Exported {
  /// The descriptor, close-on-exec.
  UniqueFd fd;
  /// Its metadata: kind, handle type, device and driver UUIDs, the buffer's sizes and memory
  /// type, ...
  v1::ExportedFd info;
  /// A semaphore's memop word buffer (the CUDA fast path), close-on-exec: only when the request
  /// asked for it (`word` true) and the semaphore has one; `info.semaphore().word()` describes it
  /// (import it as memory of that allocation size; the word is its first 8 bytes, a
  /// little-endian u64). Empty otherwise.
  UniqueFd word;
};

/// One connection to fd.sock. Open, use, destroy; the connection may carry any number of
/// requests. The daemon closes idle connections after a while: a request on one it closed
/// fails with a protocol error of code UNAVAILABLE (a ticket it never read is not consumed),
/// and a fresh FdSocket is the remedy.
class FdSocket {
 public:
  /// Connects to the fd.sock at `path` (a SOCK_SEQPACKET | SOCK_CLOEXEC socket).
  static FdSocket connect(const std::string& path);
  /// Wraps a connected SOCK_SEQPACKET socket (one from socket activation, or a socketpair).
  static FdSocket from_fd(UniqueFd connected) noexcept { return FdSocket(std::move(connected)); }

  FdSocket(FdSocket&&) noexcept = default;
  FdSocket& operator=(FdSocket&&) noexcept = default;

  /// Redeems an export ticket (ExportResponse.ticket, 16 bytes). `word` (FdRequest.word): for
  /// a semaphore that has a memop word, the word's buffer comes too (Exported::word).
  Exported redeem(std::string_view ticket, bool word = false);

  /// Exports the caller's own resource `id` directly (one round trip, no ticket). `word`: as in
  /// redeem.
  Exported export_resource(std::string_view id, bool word = false);

  /// Waits on the host until semaphore `id` reaches `value`, at most `timeout_ms` (capped by
  /// the daemon's max_wait_timeout_ms; 0 checks once). Returns the value seen (>= `value`).
  /// The daemon's refusals come as ErrorSource::kFdReply: DEADLINE_EXCEEDED at the timeout,
  /// NOT_FOUND, ABORTED, RESOURCE_EXHAUSTED, UNAVAILABLE.
  std::uint64_t wait(std::string_view id, std::uint64_t value, std::uint32_t timeout_ms,
                     std::uint32_t spin_us = 0);

  // ---- a frame stream's frame calls (FdRequest.stream; see Client::create_stream) ----

  /// Sends one frame call (`StreamCall`: AcquireSlot, Present, AcquireFrame or ReleaseFrame)
  /// and returns its `StreamReply`, which must answer the call's kind. No descriptor travels
  /// either way: a reply carrying one is a protocol error (ErrorSource::kProtocol; what arrived
  /// is closed). The daemon's refusals come as ErrorSource::kFdReply with the FdError's code
  /// (DEADLINE_EXCEEDED: no slot or frame in time; NOT_FOUND: no such handle;
  /// FAILED_PRECONDITION: a slot the role does not hold; ABORTED: the stream ended; ...).
  /// `reply_timeout` bounds the wait for the reply like set_reply_timeout (0: the socket's);
  /// an acquire's own `timeout_ms` is the daemon's, so leave room above it.
  v1::StreamReply stream_call(
      const v1::StreamCall& call,
      std::chrono::milliseconds reply_timeout = std::chrono::milliseconds{0});

  /// The producer's AcquireSlot: a free slot within `timeout_ms` (0 answers at once).
  v1::SlotGrant acquire_slot(std::string_view handle, std::uint32_t timeout_ms,
                             bool host_wait = false);
  /// The producer's Present of `slot` (its ready point `ready_value`; 0: the daemon signals).
  v1::Presented present(std::string_view handle, std::uint32_t slot, std::uint64_t ready_value,
                        const v1::FrameMetadata& metadata = {});
  /// A consumer's AcquireFrame: the next frame within `timeout_ms` (0 answers at once).
  v1::Frame acquire_frame(std::string_view handle, std::uint32_t timeout_ms,
                          bool host_wait = false);
  /// A consumer's ReleaseFrame of `slot` (its release point `release_value`; 0: the daemon
  /// signals). Returns the release point's value.
  std::uint64_t release_frame(std::string_view handle, std::uint32_t slot,
                              std::uint64_t release_value);

  /// Bounds how long a request waits for its reply (0, the default: no bound). A request whose
  /// reply does not come in time fails with DEADLINE_EXCEEDED (ErrorSource::kSystem, ETIMEDOUT)
  /// and closes the connection, since a late reply would otherwise answer the next request.
  void set_reply_timeout(std::chrono::milliseconds timeout) { reply_timeout_ = timeout; }

  /// The socket (-1 after a reply timeout closed it). Still owned by this object.
  int native_handle() const noexcept { return sock_.get(); }

 private:
  explicit FdSocket(UniqueFd sock) noexcept : sock_(std::move(sock)) {}
  /// Sends `request` and returns the exported descriptors of its reply: exactly the ones its
  /// metadata announces (the word's buffer second, only when `request.word()` asked for it).
  Exported request_export(const v1::FdRequest& request);
  /// Sends `request` and receives its reply, which carries no descriptor (room for none).
  v1::FdReply request_plain(const v1::FdRequest& request, v1::FdReply::ReplyCase expected,
                            std::chrono::milliseconds reply_timeout);

  UniqueFd sock_;
  std::chrono::milliseconds reply_timeout_{0};
};

}  // namespace gpushare
