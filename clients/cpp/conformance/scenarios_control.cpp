// Scenarios 1, 2, 3, 5 and 7: the control API over gRPC.
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "checks.hpp"
#include "gpushare/client.hpp"
#include "scenarios.hpp"

namespace conformance {

using gpushare::Client;
using gpushare::Code;
using gpushare::Point;
using gpushare::Sync;
namespace v1 = gpushare::v1;

namespace {
constexpr const char* kClientName = "gpushare-conformance-cpp";
}

void scenario_connect(const Env& env) {
  Client client(env.runtime_dir);
  const v1::GetInfoResponse info = client.get_info();
  expect(!info.daemon_version().empty(), "GetInfo: empty daemon_version");
  expect(info.devices_size() >= 1, "GetInfo: no devices");
  gpushare::FdSocket fd = client.connect_fd();
  expect(fd.native_handle() >= 0, "fd.sock: no socket");
}

void scenario_session(const Env& env) {
  Client client(env.runtime_dir);
  const std::string first = client.start_session(kClientName);
  expect(!first.empty(), "Session: empty session id");
  const std::string buffer_id = client.create_buffer(4096).id();
  client.describe(buffer_id);
  {
    Client no_session(env.runtime_dir);
    expect_rpc_error("CreateBuffer without a session header and not pinned",
                     {Code::kFailedPrecondition}, [&] { no_session.create_buffer(4096); });
  }

  // Closing the stream alone must end the session: the channel (its connection) stays open,
  // and the new session runs on it.
  client.end_session();
  const std::string second = client.start_session(kClientName);
  expect(second != first, "Session: the new session has the old one's id " + first);
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    try {
      client.describe(buffer_id);
    } catch (const gpushare::Error& e) {
      if (e.source() == gpushare::ErrorSource::kRpc && e.code() == Code::kNotFound) {
        std::cout << "the buffer was gone " << elapsed_ms(start)
                  << " ms after the session's stream was closed" << std::endl;
        return;
      }
      fail("DescribeResource after the session's stream was closed: expected NOT_FOUND, got " +
           std::string(e.what()));
    }
    if (elapsed_ms(start) >= 2000) {
      fail("DescribeResource still succeeds 2 s after the session's stream was closed");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void scenario_resources(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  const std::string name = "conformance-cpp-" + std::to_string(::getpid());
  const std::string buffer = client.create_buffer(65536, {name}).id();
  const std::string semaphore = client.create_semaphore(3).id();

  const v1::Resource b = client.describe(buffer);
  expect(b.kind() == v1::RESOURCE_KIND_BUFFER,
         "DescribeResource(buffer): kind " + v1::ResourceKind_Name(b.kind()));
  expect(b.has_buffer() && b.buffer().size() == 65536,
         "DescribeResource(buffer): size " + std::to_string(b.buffer().size()) + ", not 65536");
  expect(b.name() == name, "DescribeResource(buffer): name '" + b.name() + "', not '" + name + "'");
  const v1::Resource s = client.describe(semaphore);
  expect(s.kind() == v1::RESOURCE_KIND_SEMAPHORE,
         "DescribeResource(semaphore): kind " + v1::ResourceKind_Name(s.kind()));
  expect(s.has_semaphore() && s.semaphore().value() == 3,
         "DescribeResource(semaphore): value " + std::to_string(s.semaphore().value()) +
             ", not 3");

  const std::vector<v1::Resource> listed = client.list_resources();
  for (const std::string& id : {buffer, semaphore}) {
    const bool found = std::any_of(listed.begin(), listed.end(),
                                   [&](const v1::Resource& r) { return r.id() == id; });
    expect(found, "ListResources does not list " + id);
  }
  expect_rpc_error("CreateBuffer with a name taken", {Code::kAlreadyExists},
                   [&] { client.create_buffer(65536, {name}); });

  client.release(buffer);
  client.release(semaphore);
  expect_rpc_error("DescribeResource(buffer) after ReleaseResource", {Code::kNotFound},
                   [&] { client.describe(buffer); });
  expect_rpc_error("DescribeResource(semaphore) after ReleaseResource", {Code::kNotFound},
                   [&] { client.describe(semaphore); });
}

void scenario_host_sync(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  const std::string sem = client.create_semaphore(0).id();

  std::uint64_t v = client.signal(sem, 5);
  expect(v == 5, "Signal(5) returned " + std::to_string(v));
  v = client.get_value(sem);
  expect(v == 5, "GetValue after Signal(5): " + std::to_string(v));
  expect_rpc_error("Signal(5) at 5", {Code::kFailedPrecondition}, [&] { client.signal(sem, 5); });

  {
    std::unique_ptr<gpushare::Watch> watch = client.watch(sem);
    client.signal(sem, 7);
    client.signal(sem, 9);
    const auto start = std::chrono::steady_clock::now();
    std::uint64_t last = 0;
    std::string seen;
    while (last < 9) {
      const long long left = 2000 - elapsed_ms(start);
      if (left <= 0) fail("Watch: values " + seen + "did not reach 9 within 2 s");
      const std::optional<std::uint64_t> value = watch->next(std::chrono::milliseconds(left));
      if (!value) continue;
      seen += std::to_string(*value) + " ";
      expect(*value >= last, "Watch: values decrease: " + seen);
      last = *value;
    }
    watch->cancel();
  }

  const auto start = std::chrono::steady_clock::now();
  v = client.wait(sem, 9, 1000);
  expect(v >= 9, "Wait(9) returned " + std::to_string(v));
  expect(elapsed_ms(start) < 1000, "Wait(9) on a semaphore at 9 took " +
                                      std::to_string(elapsed_ms(start)) + " ms, not at once");
  expect_rpc_error("Wait(20, timeout 100 ms)", {Code::kDeadlineExceeded},
                   [&] { client.wait(sem, 20, 100); });
}

void scenario_ops(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);
  const std::string buffer = client.create_buffer(4096).id();
  const std::string sem = client.create_semaphore(0).id();
  client.signal(sem, 1);

  const std::string data = pattern(4096);
  client.write(buffer, 0, data, Sync{{Point{sem, 1}}, {Point{sem, 2}}});
  const std::uint64_t v = client.get_value(sem);
  expect(v >= 2, "GetValue after the Write that signals 2: " + std::to_string(v));

  client.fill(buffer, 1024, 1024, 0xABABABABu, Sync{{Point{sem, 2}}, {Point{sem, 3}}});
  std::string want = data;
  std::fill(want.begin() + 1024, want.begin() + 2048, static_cast<char>(0xAB));
  const std::string got = client.read(buffer, 0, 4096, Sync{{Point{sem, 3}}, {}});
  const std::string diff = first_difference(got, want);
  expect(diff.empty(), "Read after Write and Fill: " + diff);

  expect_rpc_error("Write whose signal point (3) is not above the value (3)",
                   {Code::kInvalidArgument, Code::kFailedPrecondition},
                   [&] { client.write(buffer, 0, data, Sync{{}, {Point{sem, 3}}}); });
}

}  // namespace conformance
