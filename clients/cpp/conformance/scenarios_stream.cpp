// Scenario 11, stream: a frame stream's gRPC calls (CreateStream, AttachConsumer, Detach) and
// its frame calls on fd.sock (AcquireSlot, Present, AcquireFrame, ReleaseFrame).
#include <chrono>
#include <string>

#include "checks.hpp"
#include "gpushare/client.hpp"
#include "scenarios.hpp"

namespace conformance {

using gpushare::Client;
using gpushare::Code;
namespace v1 = gpushare::v1;

namespace {

constexpr const char* kClientName = "gpushare-conformance-cpp";
constexpr std::uint32_t kSlots = 2;
constexpr std::uint64_t kSlotSize = 4096;
constexpr std::uint32_t kAcquireTimeoutMs = 2000;
/// A bound on every fd.sock reply, well above the acquires' own timeout, so that a daemon that
/// never answers fails the scenario instead of hanging it.
constexpr std::chrono::milliseconds kReplyTimeout{10000};

/// `length` bytes of byte[i] = (i + n) % 251.
std::string round_pattern(std::size_t length, std::uint64_t n) {
  std::string out(length, '\0');
  for (std::size_t i = 0; i < length; ++i) out[i] = static_cast<char>((i + n) % 251);
  return out;
}

/// The points of a grant or frame as a Sync's wait points (already reached with HOST points).
gpushare::Sync waiting_for(const google::protobuf::RepeatedPtrField<v1::SemaphorePoint>& points) {
  gpushare::Sync sync;
  for (const v1::SemaphorePoint& p : points) sync.wait.push_back({p.semaphore_id(), p.value()});
  return sync;
}

}  // namespace

void scenario_stream(const Env& env) {
  Client producer(env.runtime_dir);
  producer.start_session(kClientName);
  const v1::StreamAttachment made = producer.create_stream(kSlots, kSlotSize);
  expect(made.role() == v1::STREAM_ROLE_PRODUCER,
         "CreateStream: expected the role STREAM_ROLE_PRODUCER, got " +
             v1::StreamRole_Name(made.role()));
  expect(!made.handle().empty(), "CreateStream: expected a handle, got none");
  expect(made.slots_size() == static_cast<int>(kSlots),
         "CreateStream: expected 2 slots, got " + std::to_string(made.slots_size()));
  for (const v1::StreamPart& part : made.slots()) {
    expect(!part.resource_id().empty(), "CreateStream: expected each slot's buffer id, got none");
  }
  const std::string& stream_id = made.stream().id();

  Client consumer(env.runtime_dir);
  consumer.start_session(kClientName);
  const v1::StreamAttachment attached =
      consumer.attach_consumer(stream_id, v1::DELIVERY_MODE_FIFO, 1);
  expect(attached.role() == v1::STREAM_ROLE_CONSUMER,
         "AttachConsumer: expected the role STREAM_ROLE_CONSUMER, got " +
             v1::StreamRole_Name(attached.role()));
  expect(!attached.handle().empty(), "AttachConsumer: expected a handle, got none");

  // One connection per role: an acquire that waits holds its connection.
  gpushare::FdSocket producer_fd = producer.connect_fd();
  gpushare::FdSocket consumer_fd = consumer.connect_fd();
  producer_fd.set_reply_timeout(kReplyTimeout);
  consumer_fd.set_reply_timeout(kReplyTimeout);

  for (std::uint64_t n = 1; n <= 3; ++n) {
    const std::string round = "round " + std::to_string(n) + ": ";
    const v1::SlotGrant grant = producer_fd.acquire_slot(made.handle(), kAcquireTimeoutMs);
    const std::uint32_t slot = grant.slot();
    expect(slot < kSlots, round + "AcquireSlot: expected a slot below 2, got slot " +
                              std::to_string(slot));
    const std::string& buffer = made.slots(static_cast<int>(slot)).resource_id();
    const std::string data = round_pattern(kSlotSize, n);
    producer.write(buffer, 0, data, waiting_for(grant.wait()));

    v1::FrameMetadata metadata;
    metadata.set_number(n);
    const v1::Presented presented = producer_fd.present(made.handle(), slot, 0, metadata);
    expect(presented.sequence() == n, round + "Present: expected sequence " + std::to_string(n) +
                                          ", got " + std::to_string(presented.sequence()));

    const v1::Frame frame = consumer_fd.acquire_frame(attached.handle(), kAcquireTimeoutMs);
    expect(frame.metadata().number() == n,
           round + "AcquireFrame: expected metadata.number " + std::to_string(n) + ", got " +
               std::to_string(frame.metadata().number()));
    expect(frame.slot() == slot, round + "AcquireFrame: expected slot " + std::to_string(slot) +
                                     ", got slot " + std::to_string(frame.slot()));
    gpushare::Sync ready;
    if (frame.has_ready() && !frame.ready().semaphore_id().empty()) {
      ready.wait.push_back({frame.ready().semaphore_id(), frame.ready().value()});
    }
    const std::string got = consumer.read(buffer, 0, kSlotSize, ready);
    const std::string diff = first_difference(got, data);
    expect(diff.empty(), round + "Read of slot " + std::to_string(slot) +
                             ": expected the pattern (i + " + std::to_string(n) +
                             ") % 251, got " + diff);
    consumer_fd.release_frame(attached.handle(), slot, 0);
  }

  expect_fd_error("a second AcquireFrame with timeout_ms 0 (no frame queued)",
                  Code::kDeadlineExceeded,
                  [&] { consumer_fd.acquire_frame(attached.handle(), 0); });
  expect_fd_error("ReleaseFrame of slot 0, which the consumer does not hold",
                  Code::kFailedPrecondition,
                  [&] { consumer_fd.release_frame(attached.handle(), 0, 0); });
  expect_fd_error("AcquireSlot naming the handle role-" + std::string(32, '0'), Code::kNotFound,
                  [&] { producer_fd.acquire_slot("role-" + std::string(32, '0'), 0); });

  producer.detach(made.handle());
  expect_fd_error("the consumer's AcquireFrame after the producer's Detach", Code::kAborted,
                  [&] { consumer_fd.acquire_frame(attached.handle(), kAcquireTimeoutMs); });

  consumer.end_session();
  producer.end_session();
}

}  // namespace conformance
