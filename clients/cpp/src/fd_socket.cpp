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
  if (!sock_) throw Error::usage("fd.sock connection closed after a reply timeout");
  v1::FdRequest request;
  v1::FdWait* w = request.mutable_wait();
  w->set_id(std::string(id));
  w->set_value(value);
  w->set_timeout_ms(timeout_ms);
  w->set_spin_us(spin_us);
  fdpass::send(sock_.get(), request.SerializeAsString());
  fdpass::Message message;
  try {
    message = fdpass::recv(sock_.get(), 0, reply_timeout_);
  } catch (const Error& e) {
    if (e.errnum() == ETIMEDOUT) sock_.reset();
    throw;
  }
  return parse_reply(message, v1::FdReply::kWaited).waited().value();
}

}  // namespace gpushare
