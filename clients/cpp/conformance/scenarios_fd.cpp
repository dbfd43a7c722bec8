// Scenarios 4, 6, 8, 9 and 10, and redeem-child: fd.sock and the descriptors it hands out.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>
#include <thread>

#include "checks.hpp"
#include "gpushare/client.hpp"
#include "gpushare/vulkan_import.hpp"
#include "scenarios.hpp"

extern char** environ;

namespace conformance {

using gpushare::Client;
using gpushare::Code;
using gpushare::Exported;
using gpushare::UniqueFd;
namespace v1 = gpushare::v1;

namespace {

constexpr const char* kClientName = "gpushare-conformance-cpp";
constexpr std::uint64_t kExportSize = 1 << 20;
/// How long redeem-child may take (Vulkan's start under AddressSanitizer takes a second or two).
constexpr long long kChildTimeoutMs = 30000;

/// The checks on an exported 1 MiB buffer, for a redeemed ticket and a direct export alike.
void check_exported(const Exported& e, const std::string& id, std::uint64_t size,
                    const std::string& how) {
  expect(bool(e.fd), how + ": no descriptor");
  expect(e.info.resource_id() == id,
         how + ": resource_id " + e.info.resource_id() + ", not " + id);
  expect(e.info.kind() == v1::RESOURCE_KIND_BUFFER,
         how + ": kind " + v1::ResourceKind_Name(e.info.kind()));
  expect(e.info.has_buffer(), how + ": no buffer details");
  expect(e.info.buffer().size() == size, how + ": buffer.size " +
                                             std::to_string(e.info.buffer().size()) + ", not " +
                                             std::to_string(size));
  expect(e.info.buffer().allocation_size() >= size,
         how + ": buffer.allocation_size " + std::to_string(e.info.buffer().allocation_size()) +
             " below " + std::to_string(size));
  struct stat st {};
  expect(::fstat(e.fd.get(), &st) == 0,
         how + ": fstat on the descriptor failed: " + std::strerror(errno));
  // Received with MSG_CMSG_CLOEXEC, as the receiving rules require.
  const int flags = ::fcntl(e.fd.get(), F_GETFD);
  expect(flags >= 0 && (flags & FD_CLOEXEC), how + ": the descriptor is not close-on-exec");
}

/// Imports the redeemed buffer into Vulkan where this host can (a Vulkan device with the
/// export's UUID), and checks its first `pattern_length` bytes where its memory is
/// host-visible. Says on stdout what it could not do.
void import_where_possible(Exported& exported, std::size_t pattern_length) {
  std::shared_ptr<gpushare::vulkan::Device> device;
  try {
    device = gpushare::vulkan::Device::open(gpushare::vulkan::uuid_from_bytes(
        exported.info.device_uuid(), "ExportedFd.device_uuid"));
  } catch (const gpushare::Error& e) {
    std::cout << "redeem-child: no Vulkan import here: " << e.what() << std::endl;
    return;
  }
  std::unique_ptr<gpushare::vulkan::ImportedBuffer> imported;
  try {
    imported = gpushare::vulkan::ImportedBuffer::import(device, exported);
  } catch (const gpushare::Error& e) {
    fail("Vulkan import on " + device->name() + ": " + e.what());
  }
  expect(!exported.fd, "Vulkan import succeeded but the descriptor was not handed over");
  if (!imported->host_visible()) {
    std::cout << "redeem-child: imported into " << device->name()
              << "; its memory type is not host-visible, bytes not checked" << std::endl;
    return;
  }
  const auto* bytes = static_cast<const char*>(imported->map());
  const std::string diff =
      first_difference(std::string(bytes, pattern_length), pattern(pattern_length));
  expect(diff.empty(), "the Vulkan import's mapped bytes: " + diff);
  std::cout << "redeem-child: imported into " << device->name() << ", mapped, "
            << pattern_length << " bytes checked" << std::endl;
}

/// Runs `/proc/self/exe redeem-child <ticket> <id> <size>`; returns its exit status and what
/// it wrote to stderr (kept, so that this process prints the one FAIL line).
std::pair<int, std::string> run_child(const std::string& ticket_hex, const std::string& id,
                                      std::uint64_t size) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) fail(std::string("pipe2: ") + std::strerror(errno));
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDERR_FILENO);
  std::string size_text = std::to_string(size);
  std::string args[] = {"gpushare-conformance", "redeem-child", ticket_hex, id, size_text};
  char* argv[] = {args[0].data(), args[1].data(), args[2].data(), args[3].data(),
                  args[4].data(), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) fail(std::string("posix_spawn /proc/self/exe: ") + std::strerror(rc));
  write_end.reset();

  // Its stderr until it closes (the child ended), at most kChildTimeout.
  std::string err;
  char buf[4096];
  const auto start = std::chrono::steady_clock::now();
  bool timed_out = false;
  for (;;) {
    const long long left = kChildTimeoutMs - elapsed_ms(start);
    pollfd p{read_end.get(), POLLIN, 0};
    const int ready = left > 0 ? ::poll(&p, 1, static_cast<int>(left)) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      timed_out = true;
      break;
    }
    const ssize_t n = ::read(read_end.get(), buf, sizeof(buf));
    if (n > 0) err.append(buf, static_cast<std::size_t>(n));
    if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail(std::string("waitpid: ") + std::strerror(errno));
  }
  if (timed_out) {
    std::cout << "redeem-child stderr:\n" << err << std::flush;
    fail("redeem-child did not finish within " + std::to_string(kChildTimeoutMs) + " ms");
  }
  return {status, err};
}

}  // namespace

void scenario_export_redeem(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  const std::string id = client.create_buffer(kExportSize).id();
  const std::string data = pattern(4096);
  client.write(id, 0, data);
  const gpushare::Ticket ticket = client.export_ticket(id);

  const auto [status, child_err] = run_child(ticket.hex(), id, kExportSize);
  if (!child_err.empty()) std::cout << "redeem-child stderr:\n" << child_err << std::flush;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string why = WIFEXITED(status) ? "exited with " + std::to_string(WEXITSTATUS(status))
                                        : "killed by signal " + std::to_string(WTERMSIG(status));
    const auto at = child_err.find("FAIL: ");
    if (at != std::string::npos) {
      why += ": " + child_err.substr(at + 6, child_err.find('\n', at) - at - 6);
    }
    fail("redeem-child " + why);
  }

  {
    const Exported direct = client.export_fd(id);
    check_exported(direct, id, kExportSize, "fd.sock direct export");
  }
  const std::string got = client.read(id, 0, 4096);
  const std::string diff = first_difference(got, data);
  expect(diff.empty(), "Read after the exports: " + diff);
}

void redeem_child(const Env& env, const std::string& ticket_hex, const std::string& id,
                  const std::string& size_text) {
  std::string ticket;
  try {
    ticket = gpushare::Ticket::bytes_from_hex(ticket_hex);
  } catch (const gpushare::Error& e) {
    fail("redeem-child: bad ticket: " + std::string(e.what()));
  }
  char* end = nullptr;
  const unsigned long long size = std::strtoull(size_text.c_str(), &end, 10);
  expect(!size_text.empty() && *end == '\0', "redeem-child: bad size " + size_text);

  Exported exported;
  try {
    gpushare::FdSocket fd = gpushare::FdSocket::connect(
        gpushare::socket_path(env.runtime_dir, gpushare::kFdSocket));
    exported = fd.redeem(ticket);
  } catch (const gpushare::Error& e) {
    fail("redeem-child: redeeming the ticket failed: " + std::string(e.what()));
  }
  check_exported(exported, id, size, "redeem-child");
  import_where_possible(exported, 4096);
}

void scenario_fd_wait(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  const std::string sem = client.create_semaphore(0).id();
  gpushare::FdSocket fd = client.connect_fd();

  std::optional<std::string> signal_error;
  std::thread signaler([&] {
    try {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      client.signal(sem, 3);
    } catch (const std::exception& e) {
      signal_error = e.what();
    }
  });
  std::uint64_t value = 0;
  try {
    value = fd.wait(sem, 3, 5000);
  } catch (...) {
    signaler.join();
    throw;
  }
  signaler.join();
  if (signal_error) fail("Signal(3) from the other thread: " + *signal_error);
  expect(value >= 3, "fd.sock wait for 3: waited " + std::to_string(value));

  expect_fd_error("fd.sock wait for 100 with timeout_ms 50", Code::kDeadlineExceeded,
                  [&] { fd.wait(sem, 100, 50); });
  // The contract's id, "0" * 32, is not a well-formed id: the daemon answers INVALID_ARGUMENT
  // before looking anything up. A well-formed semaphore id that was never issued is what "does
  // not exist" means (the Rust and Python CLIs send the same).
  expect_fd_error("fd.sock wait on an id that does not exist", Code::kNotFound,
                  [&] { fd.wait("sem-" + std::string(32, '0'), 1, 50); });
}

void scenario_tickets(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  expect_fd_error("redeeming 16 random bytes", Code::kNotFound,
                  [&] { client.redeem(random_bytes16()); });

  const std::string id = client.create_buffer(4096).id();
  const gpushare::Ticket ticket = client.export_ticket(id);
  client.redeem(ticket.bytes);  // The descriptor closes at once.
  expect_fd_error("redeeming a ticket again (replayed)", Code::kNotFound,
                  [&] { client.redeem(ticket.bytes); });

  const gpushare::Ticket late = client.export_ticket(id);
  const std::string ttl_env = env_var("GPUSHARE_CONFORMANCE_TICKET_TTL_MS");
  const long long ttl = ttl_env.empty() ? late.ttl_ms : std::atoll(ttl_env.c_str());
  std::this_thread::sleep_for(std::chrono::milliseconds(ttl + 500));
  expect_fd_error("redeeming a ticket after its TTL (" + std::to_string(ttl) + " ms) + 500 ms",
                  Code::kDeadlineExceeded, [&] { client.redeem(late.bytes); });
}

void scenario_foreign(const Env& env) {
  const std::string id = env_var("GPUSHARE_CONFORMANCE_FOREIGN_ID");
  if (id.empty()) throw Skipped("GPUSHARE_CONFORMANCE_FOREIGN_ID is unset (harness not root)");
  // An id of the same kind that never existed: the answers must not tell the two apart.
  const auto dash = id.find('-');
  const std::string never =
      (dash == std::string::npos ? std::string("buf") : id.substr(0, dash)) + "-" +
      std::string(32, '0');
  Client client(env.runtime_dir);
  client.start_session(kClientName);

  struct Call {
    const char* what;
    gpushare::ErrorSource source;
    std::function<void(const std::string&)> run;
  };
  const Call calls[] = {
      {"DescribeResource", gpushare::ErrorSource::kRpc,
       [&](const std::string& i) { client.describe(i); }},
      {"Export", gpushare::ErrorSource::kRpc,
       [&](const std::string& i) { client.export_ticket(i); }},
      {"fd.sock direct export", gpushare::ErrorSource::kFdReply,
       [&](const std::string& i) { client.export_fd(i); }},
  };
  for (const Call& call : calls) {
    std::string messages[2];
    const std::string* ids[2] = {&id, &never};
    for (int k = 0; k < 2; ++k) {
      const std::string what = std::string(call.what) + (k == 0 ? " on another uid's buffer "
                                                                 : " on an id never issued ") +
                               *ids[k];
      expect_error(what, call.source, {Code::kNotFound}, [&] {
        try {
          call.run(*ids[k]);
        } catch (const gpushare::Error& e) {
          messages[k] = e.message();
          throw;
        }
      });
    }
    // The same words, the id aside.
    std::string foreign_text = messages[0];
    for (auto at = foreign_text.find(id); at != std::string::npos; at = foreign_text.find(id))
      foreign_text.replace(at, id.size(), never);
    expect(foreign_text == messages[1], std::string(call.what) +
                                            ": another uid's id reads unlike an id never "
                                            "issued: '" +
                                            messages[0] + "' vs '" + messages[1] + "'");
  }
}

void scenario_extra_fds(const Env&) {
  const std::string path = env_var("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK");
  expect(!path.empty(), "GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK is unset");
  // One connection: the server counts requests per connection (3, 0, then 64 descriptors).
  // Then the same on a second connection with the word asked for (FdRequest.word), which makes
  // room for two descriptors instead of one: 3 and 64 are still MSG_CTRUNC.
  for (const bool word : {false, true}) {
    gpushare::FdSocket fd = gpushare::FdSocket::connect(path);
    fd.set_reply_timeout(std::chrono::seconds(5));
    const char* what[] = {"1st redeem (3 descriptors)", "2nd redeem (no descriptor)",
                          "3rd redeem (64 descriptors)"};
    for (const char* attempt : what) {
      const std::string name = std::string(attempt) + (word ? ", word asked for" : "");
      expect_error("hostile fd.sock, " + name, gpushare::ErrorSource::kProtocol, {}, [&] {
        try {
          fd.redeem(random_bytes16(), word);
        } catch (const gpushare::Error& e) {
          std::cout << name << ": " << e.what() << std::endl;
          throw;
        }
      });
    }
  }
}

}  // namespace conformance
