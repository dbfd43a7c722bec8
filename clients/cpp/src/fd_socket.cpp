#include "gpushare/fd_socket.hpp"

#include <cerrno>

#include "gpushare/error.hpp"
#include "gpushare/fdpass.hpp"

namespace gpushare {

namespace {

/// Whether an `exported` reply announces a semaphore's memop word buffer (its second
/// descriptor): `SemaphoreImport.word`, the word buffer's metadata, is set.
bool announces_word(const v1::FdReply& reply) {
  return reply.has_exported() && reply.exported().has_semaphore() &&
         reply.exported().semaphore().has_word();
}

/// The descriptors a reply carries: an `exported` one, or two with a semaphore's word buffer;
/// every other reply none.
std::size_t fds_carried(const v1::FdReply& reply) {
  if (reply.reply_case() != v1::FdReply::kExported) return 0;
  return announces_word(reply) ? 2 : 1;
}

/// The most descriptors a reply to `request` may carry: room made in the control buffer.
std::size_t max_fds_for_export(const v1::FdRequest& request) { return request.word() ? 2 : 1; }

const char* reply_name(v1::FdReply::ReplyCase kind) {
  switch (kind) {
    case v1::FdReply::kExported: return "exported";
    case v1::FdReply::kError: return "error";
    case v1::FdReply::kWaited: return "waited";
    case v1::FdReply::kStream: return "stream";
    case v1::FdReply::REPLY_NOT_SET: break;
  }
  return "empty";
}

/// Decodes a reply and checks its descriptors against its kind and the kind expected. Throws
/// the daemon's FdError as ErrorSource::kFdReply. The message's descriptors close on every
/// error path (they are UniqueFds owned by `message`).
v1::FdReply parse_reply(const fdpass::Message& message, v1::FdReply::ReplyCase expected) {
  v1::FdReply reply;
  if (!reply.ParseFromString(message.bytes)) {
    throw Error::protocol("a reply of " + std::to_string(message.bytes.size()) +
                          " bytes does not decode as FdReply");
  }
  const auto kind = reply.reply_case();
  const std::size_t carried = fds_carried(reply);
  if (message.fds.size() != carried) {
    throw Error::protocol(std::string("an ") + reply_name(kind) +
                          (announces_word(reply) ? " reply with a word buffer" : " reply") +
                          " came with " + std::to_string(message.fds.size()) + " descriptors, " +
                          std::to_string(carried) + " expected; all were closed");
  }
  if (kind == v1::FdReply::kError) {
    throw Error(ErrorSource::kFdReply, static_cast<Code>(reply.error().code()),
                reply.error().message());
  }
  if (kind != expected) {
    throw Error::protocol(std::string("an ") + reply_name(kind) + " reply to a request for " +
                          reply_name(expected));
  }
  return reply;
}

}  // namespace

FdSocket FdSocket::connect(const std::string& path) { return FdSocket(fdpass::connect(path)); }

Exported FdSocket::redeem(std::string_view ticket, bool word) {
  v1::FdRequest request;
  request.set_redeem(std::string(ticket));
  request.set_word(word);
  return request_export(request);
}

Exported FdSocket::export_resource(std::string_view id, bool word) {
  v1::FdRequest request;
  request.set_export_(std::string(id));
  request.set_word(word);
  return request_export(request);
}

Exported FdSocket::request_export(const v1::FdRequest& request) {
  if (!sock_) throw Error::usage("fd.sock connection closed after a reply timeout");
  fdpass::send(sock_.get(), request.SerializeAsString());
  fdpass::Message message;
  try {
    // Room for one descriptor, two when the word was asked for: a word buffer that comes
    // unasked is one too many, a protocol error like any other.
    message = fdpass::recv(sock_.get(), max_fds_for_export(request), reply_timeout_);
  } catch (const Error& e) {
    if (e.errnum() == ETIMEDOUT) sock_.reset();  // A late reply would answer the next request.
    throw;
  }
  // Exactly the descriptors the metadata announces, else a protocol error (`message` closes
  // them all).
  v1::FdReply reply = parse_reply(message, v1::FdReply::kExported);
  Exported out;
  out.fd = std::move(message.fds[0]);
  if (message.fds.size() == 2) out.word = std::move(message.fds[1]);
  out.info = std::move(*reply.mutable_exported());
  return out;
}

std::uint64_t FdSocket::wait(std::string_view id, std::uint64_t value, std::uint32_t timeout_ms,
                             std::uint32_t spin_us) {
  v1::FdRequest request;
  v1::FdWait* w = request.mutable_wait();
  w->set_id(std::string(id));
  w->set_value(value);
  w->set_timeout_ms(timeout_ms);
  w->set_spin_us(spin_us);
  return request_plain(request, v1::FdReply::kWaited, reply_timeout_).waited().value();
}

v1::FdReply FdSocket::request_plain(const v1::FdRequest& request,
                                    v1::FdReply::ReplyCase expected,
                                    std::chrono::milliseconds reply_timeout) {
  if (!sock_) throw Error::usage("fd.sock connection closed after a reply timeout");
  fdpass::send(sock_.get(), request.SerializeAsString());
  fdpass::Message message;
  try {
    // Room for no descriptor: one sent anyway is MSG_CTRUNC (the kernel installs none).
    message = fdpass::recv(sock_.get(), 0, reply_timeout);
  } catch (const Error& e) {
    if (e.errnum() == ETIMEDOUT) sock_.reset();  // A late reply would answer the next request.
    throw;
  }
  return parse_reply(message, expected);
}

v1::StreamReply FdSocket::stream_call(const v1::StreamCall& call,
                                      std::chrono::milliseconds reply_timeout) {
  v1::StreamReply::ReplyCase answer = v1::StreamReply::REPLY_NOT_SET;
  const char* name = "";
  switch (call.call_case()) {
    case v1::StreamCall::kAcquireSlot:
      answer = v1::StreamReply::kSlot;
      name = "AcquireSlot";
      break;
    case v1::StreamCall::kPresent:
      answer = v1::StreamReply::kPresented;
      name = "Present";
      break;
    case v1::StreamCall::kAcquireFrame:
      answer = v1::StreamReply::kFrame;
      name = "AcquireFrame";
      break;
    case v1::StreamCall::kRelease:
      answer = v1::StreamReply::kReleased;
      name = "ReleaseFrame";
      break;
    case v1::StreamCall::CALL_NOT_SET:
      throw Error::usage("stream_call: a StreamCall with no call");
  }
  v1::FdRequest request;
  *request.mutable_stream() = call;
  v1::FdReply reply = request_plain(
      request, v1::FdReply::kStream,
      reply_timeout.count() > 0 ? reply_timeout : reply_timeout_);
  if (reply.stream().reply_case() != answer) {
    throw Error::protocol(std::string("a stream reply of kind ") +
                          std::to_string(static_cast<int>(reply.stream().reply_case())) +
                          " to " + name);
  }
  return std::move(*reply.mutable_stream());
}

namespace {

v1::AcquireRequest acquire_request(std::string_view handle, std::uint32_t timeout_ms,
                                   bool host_wait) {
  v1::AcquireRequest a;
  a.set_handle(std::string(handle));
  a.set_timeout_ms(timeout_ms);
  a.set_host_wait(host_wait);
  return a;
}

}  // namespace

v1::SlotGrant FdSocket::acquire_slot(std::string_view handle, std::uint32_t timeout_ms,
                                     bool host_wait) {
  v1::StreamCall call;
  *call.mutable_acquire_slot() = acquire_request(handle, timeout_ms, host_wait);
  return std::move(*stream_call(call).mutable_slot());
}

v1::Presented FdSocket::present(std::string_view handle, std::uint32_t slot,
                                std::uint64_t ready_value, const v1::FrameMetadata& metadata) {
  v1::StreamCall call;
  v1::PresentRequest* p = call.mutable_present();
  p->set_handle(std::string(handle));
  p->set_slot(slot);
  p->set_ready_value(ready_value);
  *p->mutable_metadata() = metadata;
  return std::move(*stream_call(call).mutable_presented());
}

v1::Frame FdSocket::acquire_frame(std::string_view handle, std::uint32_t timeout_ms,
                                  bool host_wait) {
  v1::StreamCall call;
  *call.mutable_acquire_frame() = acquire_request(handle, timeout_ms, host_wait);
  return std::move(*stream_call(call).mutable_frame());
}

std::uint64_t FdSocket::release_frame(std::string_view handle, std::uint32_t slot,
                                      std::uint64_t release_value) {
  v1::StreamCall call;
  v1::ReleaseFrameRequest* r = call.mutable_release();
  r->set_handle(std::string(handle));
  r->set_slot(slot);
  r->set_release_value(release_value);
  return stream_call(call).released().release_value();
}

}  // namespace gpushare
