// What every scenario of the conformance CLI uses: failing with a message, expecting an error
// of a given source and code, the byte pattern, counting this process's descriptors.
#pragma once

#include <chrono>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "gpushare/error.hpp"

namespace conformance {

/// A scenario failed; what() is the text after "FAIL: ".
class Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A scenario cannot run here; what() is the text after "SKIP: ".
class Skipped : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& what);
inline void expect(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

/// "NOT_FOUND" or "INVALID_ARGUMENT or FAILED_PRECONDITION".
std::string codes_text(std::initializer_list<gpushare::Code> codes);

/// Runs `call`, which must throw a gpushare::Error from `source` with one of `codes` (any code
/// when `codes` is empty); fails naming `what` otherwise (success, another error, another
/// exception).
template <typename F>
void expect_error(const std::string& what, gpushare::ErrorSource source,
                  std::initializer_list<gpushare::Code> codes, F&& call) {
  const std::string expected = std::string(gpushare::source_name(source)) + " error" +
                               (codes.size() ? " " + codes_text(codes) : std::string());
  try {
    call();
  } catch (const gpushare::Error& e) {
    bool code_ok = codes.size() == 0;
    for (gpushare::Code c : codes) code_ok = code_ok || c == e.code();
    if (e.source() == source && code_ok) return;
    fail(what + ": expected " + expected + ", got " + e.what());
  }
  fail(what + ": expected " + expected + ", got success");
}

/// A gRPC call must fail with one of `codes`.
template <typename F>
void expect_rpc_error(const std::string& what, std::initializer_list<gpushare::Code> codes,
                      F&& call) {
  expect_error(what, gpushare::ErrorSource::kRpc, codes, std::forward<F>(call));
}

/// An fd.sock request must be answered with an FdError of `code`.
template <typename F>
void expect_fd_error(const std::string& what, gpushare::Code code, F&& call) {
  expect_error(what, gpushare::ErrorSource::kFdReply, {code}, std::forward<F>(call));
}

/// `length` bytes of the pattern byte[i] = i % 251.
std::string pattern(std::size_t length);

/// Where two byte strings first differ, as text; empty when they are equal.
std::string first_difference(const std::string& got, const std::string& want);

/// A variable of the environment; empty when unset.
std::string env_var(const char* name);

/// 16 random bytes (getrandom).
std::string random_bytes16();

/// The entries of /proc/self/fd: descriptor -> what it points at.
std::map<int, std::string> open_fds();

/// Milliseconds since `start`.
inline long long elapsed_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace conformance
