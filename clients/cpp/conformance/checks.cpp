#include "checks.hpp"

#include <dirent.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace conformance {

void fail(const std::string& what) { throw Failure(what); }

std::string codes_text(std::initializer_list<gpushare::Code> codes) {
  std::string out;
  for (gpushare::Code c : codes) {
    if (!out.empty()) out += " or ";
    out += gpushare::code_name(c);
  }
  return out;
}

std::string pattern(std::size_t length) {
  std::string out(length, '\0');
  for (std::size_t i = 0; i < length; ++i) out[i] = static_cast<char>(i % 251);
  return out;
}

std::string first_difference(const std::string& got, const std::string& want) {
  if (got.size() != want.size()) {
    return std::to_string(got.size()) + " bytes instead of " + std::to_string(want.size());
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return "byte " + std::to_string(i) + " is " +
             std::to_string(static_cast<unsigned char>(got[i])) + ", expected " +
             std::to_string(static_cast<unsigned char>(want[i]));
    }
  }
  return "";
}

std::string env_var(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string random_bytes16() {
  std::string out(16, '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::getrandom(out.data() + got, out.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("getrandom failed: errno " + std::to_string(errno));
    got += static_cast<std::size_t>(n);
  }
  return out;
}

std::map<int, std::string> open_fds() {
  std::map<int, std::string> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) fail("cannot open /proc/self/fd: errno " + std::to_string(errno));
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    const int fd = std::atoi(name.c_str());
    // The directory's own descriptor counts too, the same at every count.
    std::string target = fd == own ? "(the /proc/self/fd listing)" : "?";
    if (fd != own) {
      char buf[512];
      const ssize_t n = ::readlink(("/proc/self/fd/" + name).c_str(), buf, sizeof(buf) - 1);
      if (n >= 0) target.assign(buf, static_cast<std::size_t>(n));
    }
    fds.emplace(fd, std::move(target));
  }
  ::closedir(dir);
  return fds;
}

}  // namespace conformance
