// The control API client: one gRPC channel to control.sock, an optional client session, and a
// method per call the reference client needs. Every method throws gpushare::Error (source kRpc,
// the call's status code and message) on failure.
//
// Threads: the call methods may run concurrently from several threads; start_session and
// end_session must not race with them. Not part of it: descriptors (fd_socket.hpp: gRPC cannot
// pass them) and Vulkan (vulkan_import.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpushare/error.hpp"
#include "gpushare/fd_socket.hpp"
#include "gpushare/runtime_dir.hpp"
#include "gpushare/v1/gpushare.grpc.pb.h"

namespace gpushare {

/// The metadata header that names the caller's session.
inline constexpr const char* kSessionHeader = "x-gpushare-session";

/// A semaphore and a value: a wait point or a signal point of an operation.
struct Point {
  std::string semaphore_id;
  std::uint64_t value = 0;
};

/// What an operation (Write, Read, Fill, Copy) waits for before it runs and signals after.
struct Sync {
  std::vector<Point> wait;
  std::vector<Point> signal;
  /// Upper bound on waiting for the wait points; 0: the daemon's max_wait_timeout_ms.
  std::uint32_t timeout_ms = 0;
};

/// Options of the Create calls.
struct CreateOptions {
  /// Unique among the owner's live resources; empty for none.
  std::string name;
  /// Keep a reference owned by the uid until ReleaseResource, beyond any session.
  bool pin = false;
  /// The daemon's device index.
  std::uint32_t device = 0;
  /// Semaphores and streams only (create_buffer refuses it, kUsage): mirror the semaphore (a
  /// stream's timelines) in a memop word for CUDA users, the CUDA fast path, where the device
  /// offers it (DeviceInfo.fast_path); elsewhere it is made without one, and
  /// SemaphoreDetails.word_unavailable says why.
  bool word = false;
  /// Semaphores and streams only (create_buffer refuses it, kUsage): how the calling session
  /// signals the semaphore (a stream's ready timeline). UNSPECIFIED means SIGNAL_PATH_SEMAPHORE:
  /// the daemon then bridges this session's signals into the word. SIGNAL_PATH_WORD: through
  /// the word (a CUDA fast-path signaler) or through the daemon only (Signal, ...).
  v1::SignalPath signal_path = v1::SIGNAL_PATH_UNSPECIFIED;
};

/// An export ticket: redeem it on fd.sock within ttl_ms, from a process of the same uid.
struct Ticket {
  std::string bytes;
  std::uint32_t ttl_ms = 0;
  /// The ticket as lowercase hex.
  std::string hex() const;
  /// Parses lowercase or uppercase hex (Error kUsage when malformed).
  static std::string bytes_from_hex(std::string_view hex);
};

/// A stream of a semaphore's values (Watch): the current value first, then every change seen.
/// A thread reads the stream into a queue; destroying the Watch cancels the stream and joins
/// the thread.
class Watch {
 public:
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  /// The next value, waiting at most `timeout`; nullopt when none came in time. Throws the
  /// stream's error once it ended (CANCELLED after cancel(), ABORTED when the semaphore ended,
  /// UNAVAILABLE on daemon shutdown).
  std::optional<std::uint64_t> next(std::chrono::milliseconds timeout);

  /// Cancels the stream (idempotent); next() then drains what was queued and throws CANCELLED.
  void cancel();

 private:
  friend class Client;
  struct State;
  explicit Watch(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

/// A client of the gpushare daemon.
class Client {
 public:
  /// A channel to `unix:<runtime_dir>/control.sock`. Nothing connects until the first call.
  explicit Client(const std::string& runtime_dir = default_runtime_dir());
  /// Ends the session, if one was started: the daemon releases every reference it held.
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::string& runtime_dir() const noexcept { return runtime_dir_; }

  // ---- session ----

  /// Opens a Session stream and keeps it open; its id goes into the x-gpushare-session header
  /// of every later call. Returns the id. Error kUsage when a session is already open.
  const std::string& start_session(const std::string& client_name = "gpushare-cpp");
  /// Closes the Session stream (the daemon then releases what the session held). Idempotent.
  void end_session();
  /// The session id; empty without a session.
  const std::string& session_id() const noexcept { return session_id_; }

  // ---- resources ----

  v1::GetInfoResponse get_info();
  v1::Resource create_buffer(std::uint64_t size, const CreateOptions& options = {});
  /// A timeline semaphore at `initial_value`; `options.word` and `options.signal_path` for the
  /// CUDA fast path (describe() then says whether it got a word: SemaphoreDetails.word).
  v1::Resource create_semaphore(std::uint64_t initial_value, const CreateOptions& options = {});
  /// CreateSemaphore with the whole request.
  v1::Resource create_semaphore(const v1::CreateSemaphoreRequest& request);
  /// Adds a reference of this client's session (it needs one) to resource `id`. With `signal`,
  /// for a semaphore, the session also becomes one of its signalers, signaling by
  /// `signal_path` (see CreateOptions::signal_path). Idempotent per session.
  v1::Resource open(const std::string& id, bool signal = false,
                    v1::SignalPath signal_path = v1::SIGNAL_PATH_UNSPECIFIED);
  /// Open with the whole request (a capability token, or an owner's named resource).
  v1::Resource open(const v1::OpenRequest& request);
  v1::Resource describe(const std::string& id);
  std::vector<v1::Resource> list_resources();
  /// Drops the session's reference (or the pin). Returns whether the resource was freed.
  bool release(const std::string& id);
  /// Issues a one-time ticket for the resource's descriptor (FdSocket::redeem).
  Ticket export_ticket(const std::string& id);

  // ---- semaphores ----

  /// Host-signals to `value`; returns the value.
  std::uint64_t signal(const std::string& id, std::uint64_t value);
  std::uint64_t get_value(const std::string& id);
  /// Waits until the value is >= `value`, at most `timeout_ms` (DEADLINE_EXCEEDED).
  std::uint64_t wait(const std::string& id, std::uint64_t value, std::uint32_t timeout_ms);
  std::unique_ptr<Watch> watch(const std::string& id);

  // ---- operations the daemon runs ----

  void write(const std::string& buffer_id, std::uint64_t offset, std::string_view data,
             const Sync& sync = {});
  std::string read(const std::string& buffer_id, std::uint64_t offset, std::uint64_t length,
                   const Sync& sync = {});
  /// Fills [offset, offset + length) with the 32-bit word `value` (multiples of 4).
  void fill(const std::string& buffer_id, std::uint64_t offset, std::uint64_t length,
            std::uint32_t value, const Sync& sync = {});
  void copy(const std::string& src_id, std::uint64_t src_offset, const std::string& dst_id,
            std::uint64_t dst_offset, std::uint64_t length, const Sync& sync = {});

  // ---- frame streams (the frame calls themselves go over fd.sock: FdSocket::acquire_slot,
  // present, acquire_frame, release_frame, stream_call) ----

  /// Creates a stream of `slots` buffers of `buffer_size` bytes (2 to 64 slots); the caller's
  /// session produces unless `no_producer`. The attachment's handle names the role in every
  /// frame call; `slots(i).resource_id()` is slot i's buffer.
  v1::StreamAttachment create_stream(std::uint32_t slots, std::uint64_t buffer_size,
                                     const CreateOptions& options = {}, bool no_producer = false);
  /// CreateStream with the whole request (image slots, ...).
  v1::StreamAttachment create_stream(const v1::CreateStreamRequest& request);
  /// Attaches the caller's session as the producer of a stream created with no_producer
  /// (`signal_path`: how it signals the ready timeline, see CreateOptions::signal_path).
  v1::StreamAttachment attach_producer(
      const std::string& stream_id, v1::SignalPath signal_path = v1::SIGNAL_PATH_UNSPECIFIED);
  /// Attaches the caller's session as a consumer (`limit`: frames it may hold at once, >= 1;
  /// `signal_path`: how it signals its release timeline).
  v1::StreamAttachment attach_consumer(
      const std::string& stream_id, v1::DeliveryMode mode, std::uint32_t limit,
      v1::SignalPath signal_path = v1::SIGNAL_PATH_UNSPECIFIED);
  /// Detaches a role: a producer's detach ends the stream (consumers drain, then ABORTED).
  v1::StreamInfo detach(const std::string& handle);
  v1::StreamInfo describe_stream(const std::string& stream_id);
  std::vector<v1::StreamInfo> list_streams();

  // ---- fd.sock, one connection per call (keep an FdSocket for many requests) ----

  /// Connects to this daemon's fd.sock.
  FdSocket connect_fd() const;
  /// Redeems a ticket on a fresh fd.sock connection (`word`: a semaphore's memop word buffer
  /// too, Exported::word, when it has one).
  Exported redeem(std::string_view ticket, bool word = false) const;
  /// Exports the caller's own resource directly on a fresh fd.sock connection (`word`: as in
  /// redeem).
  Exported export_fd(const std::string& id, bool word = false) const;

 private:
  struct SessionStream;
  /// A context carrying the session header, if any.
  std::unique_ptr<grpc::ClientContext> context() const;

  std::string runtime_dir_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<v1::GpuShare::Stub> stub_;
  std::unique_ptr<SessionStream> session_;
  std::string session_id_;
};

}  // namespace gpushare
