#include "gpushare/error.hpp"

#include <cerrno>
#include <cstring>

namespace gpushare {

std::string code_name(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kCancelled: return "CANCELLED";
    case Code::kUnknown: return "UNKNOWN";
    case Code::kInvalidArgument: return "INVALID_ARGUMENT";
    case Code::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case Code::kNotFound: return "NOT_FOUND";
    case Code::kAlreadyExists: return "ALREADY_EXISTS";
    case Code::kPermissionDenied: return "PERMISSION_DENIED";
    case Code::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case Code::kFailedPrecondition: return "FAILED_PRECONDITION";
    case Code::kAborted: return "ABORTED";
    case Code::kOutOfRange: return "OUT_OF_RANGE";
    case Code::kUnimplemented: return "UNIMPLEMENTED";
    case Code::kInternal: return "INTERNAL";
    case Code::kUnavailable: return "UNAVAILABLE";
    case Code::kDataLoss: return "DATA_LOSS";
    case Code::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "CODE_" + std::to_string(static_cast<int>(code));
}

const char* source_name(ErrorSource source) {
  switch (source) {
    case ErrorSource::kRpc: return "rpc";
    case ErrorSource::kFdReply: return "fd-reply";
    case ErrorSource::kProtocol: return "protocol";
    case ErrorSource::kSystem: return "system";
    case ErrorSource::kVulkan: return "vulkan";
    case ErrorSource::kUsage: return "usage";
  }
  return "unknown";
}

Error::Error(ErrorSource source, Code code, std::string message, int errnum,
             std::int32_t vk_result)
    : std::runtime_error(message + " (" + source_name(source) + ": " + code_name(code) + ")"),
      source_(source),
      code_(code),
      message_(std::move(message)),
      errnum_(errnum),
      vk_result_(vk_result) {}

Error Error::protocol(std::string message) {
  return Error(ErrorSource::kProtocol, Code::kInternal, "fd.sock protocol error: " + message);
}

Error Error::system(const std::string& call, int errnum) {
  const Code code = errnum == ETIMEDOUT ? Code::kDeadlineExceeded : Code::kUnknown;
  return Error(ErrorSource::kSystem, code, call + ": " + std::strerror(errnum), errnum);
}

Error Error::usage(std::string message) {
  return Error(ErrorSource::kUsage, Code::kInvalidArgument, std::move(message));
}

}  // namespace gpushare
