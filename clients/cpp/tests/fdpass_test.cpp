// Unit tests of the fd.sock receiving rules, over a socketpair: no daemon, no GPU. Each case
// queues a crafted reply (bytes and descriptors) on the peer end, makes a request, checks the
// outcome, and checks that /proc/self/fd is back to what it was: every descriptor that arrived
// was either handed out or closed.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "gpushare/fd_socket.hpp"
#include "gpushare/fdpass.hpp"

using gpushare::Code;
using gpushare::Error;
using gpushare::ErrorSource;
using gpushare::FdSocket;
using gpushare::UniqueFd;
namespace v1 = gpushare::v1;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "  FAILED: " << what << std::endl;
    ++failures;
  }
}

int count_fds() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  while (::readdir(dir)) ++n;
  ::closedir(dir);
  return n;
}

/// Sends `bytes` with `count` fresh memfds (closed here once sent), in one SCM_RIGHTS header.
void send_reply(int sock, const std::string& bytes, int count) {
  std::vector<UniqueFd> fds;
  for (int i = 0; i < count; ++i) fds.emplace_back(::memfd_create("fdpass-test", MFD_CLOEXEC));
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (count ? count : 1)), 0);
  if (count > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * count);
    for (int i = 0; i < count; ++i) {
      const int fd = fds[i].get();
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
    }
  }
  if (::sendmsg(sock, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size())) {
    std::cerr << "sendmsg failed: " << std::strerror(errno) << std::endl;
    std::exit(2);
  }
}

std::string exported_reply() {
  v1::FdReply reply;
  v1::ExportedFd* e = reply.mutable_exported();
  e->set_resource_id("buf-00000000000000000000000000000001");
  e->set_kind(v1::RESOURCE_KIND_BUFFER);
  e->mutable_buffer()->set_size(4096);
  return reply.SerializeAsString();
}

/// An exported semaphore; `word`: its metadata announces the word's buffer (a second
/// descriptor).
std::string semaphore_reply(bool word) {
  v1::FdReply reply;
  v1::ExportedFd* e = reply.mutable_exported();
  e->set_resource_id("sem-00000000000000000000000000000001");
  e->set_kind(v1::RESOURCE_KIND_SEMAPHORE);
  v1::SemaphoreImport* s = e->mutable_semaphore();
  s->set_timeline(true);
  s->set_value(2);
  s->set_word_exists(word);
  if (word) s->mutable_word()->set_allocation_size(4096);
  return reply.SerializeAsString();
}

std::string error_reply(Code code) {
  v1::FdReply reply;
  reply.mutable_error()->set_code(static_cast<int>(code));
  reply.mutable_error()->set_message("refused");
  return reply.SerializeAsString();
}

std::string waited_reply(std::uint64_t value) {
  v1::FdReply reply;
  reply.mutable_waited()->set_value(value);
  return reply.SerializeAsString();
}

/// One case: `reply` (bytes, descriptor count) queued, then `request` run on the client end.
/// `expect` checks the outcome: nullopt-like success or the error's source and code.
struct Case {
  const char* name;
  std::string bytes;
  int fds;
  bool close_peer;  // Close the peer instead of answering.
  std::function<void(FdSocket&)> request;
  bool ok;
  ErrorSource source;
  Code code;
  /// Text the error's message must contain (the flag that caught it), or nullptr.
  const char* says = nullptr;
};

void run(const Case& c) {
  std::cout << c.name << std::endl;
  const int before = count_fds();
  {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) std::exit(2);
    UniqueFd peer(pair[1]);
    FdSocket client = FdSocket::from_fd(UniqueFd(pair[0]));
    if (c.close_peer) {
      peer.reset();
    } else {
      send_reply(peer.get(), c.bytes, c.fds);
    }
    try {
      c.request(client);
      check(c.ok, std::string("succeeded, expected ") + gpushare::source_name(c.source) + " " +
                      gpushare::code_name(c.code));
    } catch (const Error& e) {
      check(!c.ok && e.source() == c.source && e.code() == c.code &&
                (!c.says || e.message().find(c.says) != std::string::npos),
            std::string("got ") + e.what());
    }
  }
  check(count_fds() == before, "descriptors open after the case: " +
                                   std::to_string(count_fds() - before) + " more than before");
}

void redeem_ok(FdSocket& s) {
  gpushare::Exported e = s.redeem("0123456789abcdef");
  check(bool(e.fd), "no descriptor");
  const int flags = ::fcntl(e.fd.get(), F_GETFD);
  check(flags >= 0 && (flags & FD_CLOEXEC), "descriptor not close-on-exec");
  check(e.info.resource_id() == "buf-00000000000000000000000000000001", "resource_id");
}

void redeem(FdSocket& s) { s.redeem("0123456789abcdef"); }
void redeem_word(FdSocket& s) { s.redeem("0123456789abcdef", true); }

/// Asked for the word, announced, two descriptors: both handed out, close-on-exec.
void redeem_word_ok(FdSocket& s) {
  gpushare::Exported e = s.redeem("0123456789abcdef", true);
  check(bool(e.fd) && bool(e.word), "not two descriptors");
  check(e.fd.get() != e.word.get(), "the same descriptor twice");
  for (const UniqueFd* fd : {&e.fd, &e.word}) {
    const int flags = ::fcntl(fd->get(), F_GETFD);
    check(flags >= 0 && (flags & FD_CLOEXEC), "descriptor not close-on-exec");
  }
  check(e.info.semaphore().has_word() && e.info.semaphore().word().allocation_size() == 4096,
        "semaphore.word");
}

/// Asked for the word, a semaphore without one: one descriptor, no word.
void redeem_word_none(FdSocket& s) {
  gpushare::Exported e = s.redeem("0123456789abcdef", true);
  check(bool(e.fd), "no descriptor");
  check(!e.word, "a word descriptor for a semaphore without a word");
}
void wait_for_5(FdSocket& s) { check(s.wait("sem-x", 5, 0) == 5, "waited value"); }

}  // namespace

int main() {
  const auto P = ErrorSource::kProtocol;
  const auto R = ErrorSource::kFdReply;
  const Case cases[] = {
      {"exported, 1 fd: the descriptor, close-on-exec", exported_reply(), 1, false, redeem_ok,
       true, P, Code::kOk},
      {"exported, 0 fds: protocol error", exported_reply(), 0, false, redeem, false, P,
       Code::kInternal},
      {"exported, 2 fds (fit CMSG_SPACE's rounding): protocol error, both closed",
       exported_reply(), 2, false, redeem, false, P, Code::kInternal},
      {"exported, 3 fds (MSG_CTRUNC): protocol error, those that arrived closed",
       exported_reply(), 3, false, redeem, false, P, Code::kInternal, "MSG_CTRUNC"},
      {"exported, 64 fds (MSG_CTRUNC)", exported_reply(), 64, false, redeem, false, P,
       Code::kInternal, "MSG_CTRUNC"},
      {"word asked, announced, 2 fds: both, close-on-exec", semaphore_reply(true), 2, false,
       redeem_word_ok, true, P, Code::kOk},
      {"word asked, not announced, 1 fd: the descriptor, no word", semaphore_reply(false), 1,
       false, redeem_word_none, true, P, Code::kOk},
      {"word asked, announced, 1 fd: protocol error, closed", semaphore_reply(true), 1, false,
       redeem_word, false, P, Code::kInternal},
      {"word asked, not announced, 2 fds: protocol error, both closed", semaphore_reply(false),
       2, false, redeem_word, false, P, Code::kInternal},
      {"word asked, announced, 0 fds: protocol error", semaphore_reply(true), 0, false,
       redeem_word, false, P, Code::kInternal},
      {"word asked, 3 fds (MSG_CTRUNC): protocol error, those that arrived closed",
       semaphore_reply(true), 3, false, redeem_word, false, P, Code::kInternal, "MSG_CTRUNC"},
      {"word asked, 64 fds (MSG_CTRUNC)", semaphore_reply(true), 64, false, redeem_word, false,
       P, Code::kInternal, "MSG_CTRUNC"},
      {"word not asked, announced, 2 fds: protocol error, both closed", semaphore_reply(true), 2,
       false, redeem, false, P, Code::kInternal},
      {"word not asked, announced, 1 fd: protocol error, closed", semaphore_reply(true), 1,
       false, redeem, false, P, Code::kInternal},
      {"error without fds: the daemon's code", error_reply(Code::kNotFound), 0, false, redeem,
       false, R, Code::kNotFound},
      {"error with 1 fd: protocol error, closed", error_reply(Code::kNotFound), 1, false, redeem,
       false, P, Code::kInternal},
      {"waited to a redeem: protocol error", waited_reply(5), 0, false, redeem, false, P,
       Code::kInternal},
      {"undecodable bytes with 1 fd: protocol error, closed", std::string(8, '\xff'), 1, false,
       redeem, false, P, Code::kInternal},
      {"message above 16 KiB with 1 fd (MSG_TRUNC): protocol error, closed",
       std::string(gpushare::fdpass::kMaxMessage + 100, '\0'), 1, false, redeem, false, P,
       Code::kInternal, "MSG_TRUNC"},
      {"peer closed: protocol error UNAVAILABLE", "", 0, true, redeem, false, P,
       Code::kUnavailable},
      {"waited: the value", waited_reply(5), 0, false, wait_for_5, true, P, Code::kOk},
      {"waited with 1 fd (no room: MSG_CTRUNC): protocol error", waited_reply(5), 1, false,
       wait_for_5, false, P, Code::kInternal, "MSG_CTRUNC"},
      {"error to a wait: the daemon's code", error_reply(Code::kDeadlineExceeded), 0, false,
       wait_for_5, false, R, Code::kDeadlineExceeded},
  };
  for (const Case& c : cases) run(c);
  if (failures) {
    std::cerr << failures << " check(s) failed" << std::endl;
    return 1;
  }
  std::cout << "all " << std::size(cases) << " cases pass" << std::endl;
  return 0;
}
