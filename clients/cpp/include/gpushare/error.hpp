// The one error type of the C++ client: where the error came from, a gRPC status code, and a
// short message. Every function of the library reports failure by throwing it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace gpushare {

/// gRPC status codes (google.rpc.Code). fd.sock's FdError.code carries the same numbers.
enum class Code : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

/// The code's canonical name ("NOT_FOUND"); "CODE_<n>" for a number outside the list.
std::string code_name(Code code);

/// Where an error came from.
enum class ErrorSource {
  /// A gRPC call on control.sock failed; code() is its status code.
  kRpc,
  /// The daemon answered an fd.sock request with an FdError; code() is its code.
  kFdReply,
  /// An fd.sock reply broke the protocol: truncated (MSG_TRUNC, MSG_CTRUNC), the wrong number of
  /// descriptors for its kind, undecodable, or the wrong kind of reply. Every descriptor that
  /// arrived with it was closed. code() is INTERNAL (UNAVAILABLE when the daemon closed the
  /// connection).
  kProtocol,
  /// A system call failed; errnum() is its errno.
  kSystem,
  /// A Vulkan call failed, or the device or driver cannot do what was asked; vk_result() is the
  /// VkResult (0 for a check made before any call).
  kVulkan,
  /// The caller passed something invalid (an empty id, a malformed ticket); code() is
  /// INVALID_ARGUMENT.
  kUsage,
};

/// The name of the source ("rpc", "fd-reply", "protocol", "system", "vulkan", "usage").
const char* source_name(ErrorSource source);

/// What every failing call of this library throws. what() reads "<message> (<source>:
/// <CODE>)".
class Error : public std::runtime_error {
 public:
  Error(ErrorSource source, Code code, std::string message, int errnum = 0,
        std::int32_t vk_result = 0);

  ErrorSource source() const noexcept { return source_; }
  Code code() const noexcept { return code_; }
  /// The message alone, without the source and code.
  const std::string& message() const noexcept { return message_; }
  /// errno of a kSystem error, else 0.
  int errnum() const noexcept { return errnum_; }
  /// The VkResult of a kVulkan error from a Vulkan call, else 0.
  std::int32_t vk_result() const noexcept { return vk_result_; }

  /// A protocol error (code INTERNAL).
  static Error protocol(std::string message);
  /// A system call's failure: "<call>: <strerror>" with the errno kept.
  static Error system(const std::string& call, int errnum);
  /// A bad argument from the caller.
  static Error usage(std::string message);

 private:
  ErrorSource source_;
  Code code_;
  std::string message_;
  int errnum_;
  std::int32_t vk_result_;
};

}  // namespace gpushare
