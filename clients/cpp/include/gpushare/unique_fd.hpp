// An owned file descriptor: the one type every descriptor this library hands out comes in.
//
// Not a general-purpose handle wrapper: it owns exactly one descriptor and closes it once.
#pragma once

#include <utility>

namespace gpushare {

/// Owns one file descriptor and closes it on destruction (or reset). Move-only; an empty
/// UniqueFd holds -1.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  /// Takes ownership of `fd` (-1 for none).
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  /// The descriptor, still owned by this object (-1 when empty).
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

  /// Gives up ownership without closing: the caller (or the driver it handed the descriptor to)
  /// now owns it.
  int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the descriptor held, if any, and takes ownership of `fd`. close() is not retried on
  /// EINTR: Linux releases the descriptor even then, and a retry could close a descriptor
  /// another thread just opened.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

}  // namespace gpushare
