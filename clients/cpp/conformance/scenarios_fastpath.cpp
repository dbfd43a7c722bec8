// Scenario 12, fast-path: the CUDA fast path's surface (GetInfo's fast_path, a semaphore made
// with a memop word and a signal path, an fd.sock export that asks for the word, Open with a
// signal path). No CUDA is needed: where the device does not offer the fast path, or the
// semaphore cannot be exported, the semaphore is made without a word and says why.
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "checks.hpp"
#include "gpushare/client.hpp"
#include "scenarios.hpp"

namespace conformance {

using gpushare::Client;
using gpushare::Code;
using gpushare::Exported;
using gpushare::UniqueFd;
namespace v1 = gpushare::v1;

namespace {

constexpr const char* kClientName = "gpushare-conformance-cpp";

std::string yes(bool b) { return b ? "true" : "false"; }

/// A received descriptor must be open and close-on-exec (MSG_CMSG_CLOEXEC).
void check_descriptor(const UniqueFd& fd, const std::string& what) {
  struct stat st {};
  expect(::fstat(fd.get(), &st) == 0, what + ": fstat failed: " + std::strerror(errno));
  const int flags = ::fcntl(fd.get(), F_GETFD);
  expect(flags >= 0 && (flags & FD_CLOEXEC), what + ": not close-on-exec");
}

/// The checks on the export of semaphore `id` asked for with its word: `word_exists` as the
/// details say (`word`), value 2, and the word's buffer — its descriptor and `semaphore.word` —
/// exactly when it has one.
void check_word_export(const Exported& e, const std::string& id, bool word) {
  const std::string how = "fd.sock export with word";
  expect(bool(e.fd), how + ": no descriptor");
  check_descriptor(e.fd, how + ": the semaphore's descriptor");
  expect(e.info.resource_id() == id, how + ": resource_id " + e.info.resource_id() + ", not " + id);
  expect(e.info.kind() == v1::RESOURCE_KIND_SEMAPHORE && e.info.has_semaphore(),
         how + ": kind " + v1::ResourceKind_Name(e.info.kind()) + ", not a semaphore");
  const v1::SemaphoreImport& s = e.info.semaphore();
  // word_exists(): the semaphore has a word; has_word(): `semaphore.word`, the word buffer's
  // metadata, is set.
  expect(s.word_exists() == word, how + ": semaphore.word_exists " + yes(s.word_exists()) +
                                    ", but DescribeResource's word is " + yes(word));
  expect(s.value() == 2, how + ": semaphore.value " + std::to_string(s.value()) + ", not 2");
  if (word) {
    expect(s.has_word(), how + ": word_exists but no semaphore.word (the word buffer's metadata)");
    expect(bool(e.word), how + ": word_exists but one descriptor, not two");
    check_descriptor(e.word, how + ": the word buffer's descriptor");
    expect(s.word().allocation_size() >= 8, how + ": semaphore.word.allocation_size " +
                                                std::to_string(s.word().allocation_size()) +
                                                " below 8");
  } else {
    expect(!s.has_word(), how + ": semaphore.word set on a semaphore without a word");
    expect(!e.word, how + ": a word descriptor for a semaphore without a word");
  }
}

}  // namespace

void scenario_fast_path(const Env& env) {
  Client client(env.runtime_dir);
  client.start_session(kClientName);

  const v1::GetInfoResponse info = client.get_info();
  expect(info.devices_size() >= 1, "GetInfo: no devices");
  const v1::DeviceInfo* device0 = nullptr;
  for (const v1::DeviceInfo& d : info.devices()) {
    const std::string name = "GetInfo: device " + std::to_string(d.index());
    expect(d.has_fast_path(), name + ": no fast_path");
    expect(d.fast_path().offered() || !d.fast_path().unavailable().empty(),
           name + ": the fast path is not offered and unavailable is empty");
    std::cout << name << ": fast_path offered " << yes(d.fast_path().offered())
              << ", unavailable '" << d.fast_path().unavailable() << "'" << std::endl;
    if (d.index() == 0 && device0 == nullptr) device0 = &d;
  }
  expect(device0 != nullptr,
         "GetInfo: no device of index 0 (the one CreateSemaphore's default names)");
  const bool offered = device0->fast_path().offered();

  gpushare::CreateOptions options;
  options.word = true;
  options.signal_path = v1::SIGNAL_PATH_WORD;
  std::string sem;
  try {
    sem = client.create_semaphore(2, options).id();
  } catch (const gpushare::Error& e) {
    fail("CreateSemaphore at 2 with word and SIGNAL_PATH_WORD: " + std::string(e.what()));
  }
  const v1::Resource r = client.describe(sem);
  expect(r.kind() == v1::RESOURCE_KIND_SEMAPHORE && r.has_semaphore(),
         "DescribeResource: kind " + v1::ResourceKind_Name(r.kind()) + ", not a semaphore");
  const v1::SemaphoreDetails& details = r.semaphore();
  expect(details.value() == 2,
         "DescribeResource: value " + std::to_string(details.value()) + ", not 2");
  const bool word = details.word();
  // A word and no reason, or no word and a reason: anything else is wrong.
  expect(word == details.word_unavailable().empty(),
         "DescribeResource: word " + yes(word) + " with word_unavailable '" +
             details.word_unavailable() + "'");
  expect(word == (offered && details.exportable()),
         "DescribeResource: word " + yes(word) + ", but device 0's fast_path.offered is " +
             yes(offered) + " and exportable " + yes(details.exportable()));
  std::cout << "semaphore " << sem << ": exportable " << yes(details.exportable()) << ", word "
            << yes(word) << ", word_unavailable '" << details.word_unavailable() << "'"
            << std::endl;

  // An enum value the proto does not define (proto3 enums are open: it goes on the wire).
  v1::CreateSemaphoreRequest bad;
  bad.set_signal_path(static_cast<v1::SignalPath>(7));
  expect_rpc_error("CreateSemaphore with signal_path 7", {Code::kInvalidArgument},
                   [&] { client.create_semaphore(bad); });

  if (!details.exportable()) {
    expect_fd_error("fd.sock export with word of a semaphore that is not exportable",
                    Code::kFailedPrecondition, [&] { client.export_fd(sem, true); });
  } else {
    Exported exported;
    try {
      exported = client.export_fd(sem, true);
    } catch (const gpushare::Error& e) {
      fail("fd.sock export with word: " + std::string(e.what()));
    }
    check_word_export(exported, sem, word);
    // Both descriptors close with `exported`.
  }

  {
    Client other(env.runtime_dir);
    other.start_session(kClientName);
    try {
      other.open(sem, true, v1::SIGNAL_PATH_SEMAPHORE);
    } catch (const gpushare::Error& e) {
      fail("Open in a second session with signal and SIGNAL_PATH_SEMAPHORE: " +
           std::string(e.what()));
    }
  }
  client.release(sem);
}

}  // namespace conformance
