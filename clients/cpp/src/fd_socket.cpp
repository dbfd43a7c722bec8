#include "gpushare/fd_socket.hpp"

#include <cerrno>

#include "gpushare/error.hpp"
#include "gpushare/fdpass.hpp"

namespace gpushare {

namespace {

/// The descriptors a reply of this kind carries.
std::size_t fds_carried(v1::FdReply::ReplyCase kind) {
  return kind == v1::FdReply::kExported ? 1 : 0;
}

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
  if (message.fds.size() != fds_carried(kind)) {
    throw Error::protocol(std::string("an ") + reply_name(kind) + " reply came with " +
                          std::to_string(message.fds.size()) + " descriptors, " +
                          std::to_string(fds_carried(kind)) + " expected; all were closed");
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

Exported FdSocket::redeem(std::string_view ticket) {
  v1::FdRequest request;
  request.set_redeem(std::string(ticket));
  return request_export(request);
}

Exported FdSocket::export_resource(std::string_view id) {
  v1::FdRequest request;
  request.set_export_(std::string(id));
  return request_export(request);
}

Exported FdSocket::request_export(const v1::FdRequest& request) {
  if (!sock_) throw Error::usage("fd.sock connection closed after a reply timeout");
  fdpass::send(sock_.get(), request.SerializeAsString());
  fdpass::Message message;
  try {
    message = fdpass::recv(sock_.get(), 1, reply_timeout_);
  } catch (const Error& e) {
    if (e.errnum() == ETIMEDOUT) sock_.reset();  // A late reply would answer the next request.
    throw;
  }
  v1::FdReply reply = parse_reply(message, v1::FdReply::kExported);
  return Exported{std::move(message.fds.front()), std::move(*reply.mutable_exported())};
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
