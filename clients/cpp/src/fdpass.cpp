#include "gpushare/fdpass.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "gpushare/error.hpp"

namespace gpushare::fdpass {

namespace {

/// Descriptors taken from the control data, held without allocating: the kernel can install
/// no more than the control buffer has room for, so a fixed array bounds them.
class ReceivedFds {
 public:
  /// An upper bound on the ints any control buffer of ours holds.
  static constexpr std::size_t kCapacity = CMSG_SPACE(sizeof(int) * kMaxExpectedFds) / sizeof(int);

  void push(int fd) noexcept {
    if (count_ < fds_.size()) {
      fds_[count_++].reset(fd);
    } else {
      UniqueFd excess(fd);  // Cannot happen (see kCapacity); closed rather than leaked if it did.
    }
  }
  std::size_t size() const noexcept { return count_; }
  /// Moves them into a vector. If allocating throws, the array still owns and closes them.
  std::vector<UniqueFd> take() {
    std::vector<UniqueFd> out;
    out.reserve(count_);
    for (std::size_t i = 0; i < count_; ++i) out.push_back(std::move(fds_[i]));
    count_ = 0;
    return out;
  }

 private:
  std::array<UniqueFd, kCapacity> fds_;
  std::size_t count_ = 0;
};

/// Waits until `sock` is readable (a message or a hangup), at most `timeout`.
void wait_readable(int sock, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{sock, POLLIN, 0};
    const int n = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
    if (n > 0) return;
    if (n == 0) throw Error::system("poll (waiting for an fd.sock reply)", ETIMEDOUT);
    if (errno != EINTR) throw Error::system("poll", errno);
  }
}

}  // namespace

UniqueFd connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Error::usage("socket path is empty or longer than " +
                       std::to_string(sizeof(addr.sun_path) - 1) + " bytes: " + path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!sock) throw Error::system("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
  // A Unix socket's connect completes at once or fails; EINTR leaves it connecting, which
  // retrying reports as EISCONN/EALREADY: treat the retry's EISCONN as success.
  for (;;) {
    if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EISCONN) break;
    throw Error::system("connect " + path, errno);
  }
  return sock;
}

void send(int sock, std::string_view bytes) {
  if (bytes.size() > kMaxMessage) {
    throw Error::usage("fd.sock request of " + std::to_string(bytes.size()) +
                       " bytes exceeds the limit of " + std::to_string(kMaxMessage));
  }
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t sent;
  do {
    sent = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    if (errno == EPIPE || errno == ECONNRESET) {
      throw Error(ErrorSource::kProtocol, Code::kUnavailable,
                  "fd.sock protocol error: the daemon closed the connection", errno);
    }
    throw Error::system("sendmsg", errno);
  }
  if (static_cast<std::size_t>(sent) != bytes.size()) {
    // SOCK_SEQPACKET sends whole records; a short count would break the kernel's contract.
    throw Error::protocol("short send on a seqpacket socket");
  }
}

Message recv(int sock, std::size_t max_fds, std::chrono::milliseconds timeout) {
  if (max_fds > kMaxExpectedFds) {
    throw Error::usage("cannot expect more than " + std::to_string(kMaxExpectedFds) +
                       " descriptors in one message");
  }
  if (timeout.count() > 0) wait_readable(sock, timeout);

  // One byte more than the largest message, so that an oversized one shows as MSG_TRUNC even
  // where the kernel would not flag it.
  std::string bytes(kMaxMessage + 1, '\0');
  iovec iov{bytes.data(), bytes.size()};
  // Exactly CMSG_SPACE for the most descriptors the reply may carry: the kernel installs no
  // more than fit and flags the rest with MSG_CTRUNC. Aligned for cmsghdr.
  union {
    cmsghdr align;
    unsigned char buf[CMSG_SPACE(sizeof(int) * kMaxExpectedFds)];
  } control;
  std::memset(&control, 0, sizeof(control));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max_fds > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * max_fds);
  }

  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw Error::system("recvmsg", errno);

  // Own every descriptor of every SCM_RIGHTS header before checking anything, so that each
  // error path below closes them.
  ReceivedFds fds;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      if (c->cmsg_len < CMSG_LEN(0)) continue;  // Never from the kernel; no underflow below.
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(c);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
        fds.push(fd);
      }
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    throw Error::protocol("control data truncated (MSG_CTRUNC): more descriptors than the " +
                          std::to_string(max_fds) + " there was room for; the " +
                          std::to_string(fds.size()) + " that arrived were closed");
  }
  if ((msg.msg_flags & MSG_TRUNC) || static_cast<std::size_t>(n) > kMaxMessage) {
    throw Error::protocol("message truncated (MSG_TRUNC): larger than " +
                          std::to_string(kMaxMessage) + " bytes");
  }
  if (fds.size() > max_fds) {
    // CMSG_SPACE rounds up, so the buffer may admit one more than asked for without MSG_CTRUNC.
    throw Error::protocol(std::to_string(fds.size()) + " descriptors arrived, at most " +
                          std::to_string(max_fds) + " expected; all were closed");
  }
  if (n == 0 && fds.size() == 0) {
    // recvmsg returns 0 at end of stream; an empty FdReply would be invalid anyway.
    throw Error(ErrorSource::kProtocol, Code::kUnavailable,
                "fd.sock protocol error: the daemon closed the connection");
  }
  bytes.resize(static_cast<std::size_t>(n));
  return Message{std::move(bytes), fds.take()};
}

}  // namespace gpushare::fdpass
