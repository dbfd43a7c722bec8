// Tests of the Vulkan import without the daemon: this process exports a buffer's memory itself
// (vkGetMemoryFdKHR on the first Vulkan 1.1 device with VK_KHR_external_memory_fd), describes it
// as the daemon would (ExportedFd), and imports it back through ImportedBuffer. Checks: every
// refusal leaves the descriptor open and the caller's; a good import takes it and maps the bytes
// written through the exporter's mapping.
//
// Needs a Vulkan driver (lavapipe will do): without one it skips loudly (exit 77, "SKIP: ..."),
// and fails instead when GPUSHARE_REQUIRE_GPU=1.
#include <fcntl.h>
#include <vulkan/vulkan.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>

#include "gpushare/vulkan_import.hpp"

using gpushare::Code;
using gpushare::Error;
using gpushare::ErrorSource;
using gpushare::Exported;
namespace vk = gpushare::vulkan;
namespace v1 = gpushare::v1;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "  FAILED: " << what << std::endl;
    ++failures;
  }
}

int skip(const std::string& why) {
  const char* require = std::getenv("GPUSHARE_REQUIRE_GPU");
  if (require && std::string(require) == "1") {
    std::cerr << "FAIL: GPUSHARE_REQUIRE_GPU=1 and " << why << std::endl;
    return 1;
  }
  std::cerr << "SKIP: " << why << std::endl;
  return 77;
}

bool is_open(int fd) { return fd >= 0 && ::fcntl(fd, F_GETFD) >= 0; }

/// The UUID of the first Vulkan 1.1 device, if any.
bool first_device_uuid(vk::Uuid* uuid, std::string* why) {
  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.apiVersion = VK_API_VERSION_1_1;
  VkInstanceCreateInfo info{};
  info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  info.pApplicationInfo = &app;
  VkInstance instance = VK_NULL_HANDLE;
  if (VkResult r = vkCreateInstance(&info, nullptr, &instance); r != VK_SUCCESS) {
    *why = std::string("no Vulkan driver (vkCreateInstance: ") + vk::result_name(r) + ")";
    return false;
  }
  std::uint32_t count = 1;
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  const VkResult r = vkEnumeratePhysicalDevices(instance, &count, &physical);
  bool found = false;
  if ((r == VK_SUCCESS || r == VK_INCOMPLETE) && count > 0) {
    VkPhysicalDeviceIDProperties id{};
    id.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES;
    VkPhysicalDeviceProperties2 props{};
    props.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
    props.pNext = &id;
    vkGetPhysicalDeviceProperties2(physical, &props);
    std::memcpy(uuid->data(), id.deviceUUID, VK_UUID_SIZE);
    found = true;
  } else {
    *why = "no Vulkan device";
  }
  vkDestroyInstance(instance, nullptr);
  return found;
}

/// A buffer's memory exported by this process, as the daemon would describe it.
struct Export {
  std::shared_ptr<vk::Device> device;
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  v1::ExportedFd info;

  ~Export() {
    if (buffer) vkDestroyBuffer(device->device(), buffer, nullptr);
    if (memory) vkFreeMemory(device->device(), memory, nullptr);
  }

  /// A fresh descriptor of the memory, with the metadata.
  Exported fd() const {
    auto get_fd = reinterpret_cast<PFN_vkGetMemoryFdKHR>(
        vkGetDeviceProcAddr(device->device(), "vkGetMemoryFdKHR"));
    VkMemoryGetFdInfoKHR info_fd{};
    info_fd.sType = VK_STRUCTURE_TYPE_MEMORY_GET_FD_INFO_KHR;
    info_fd.memory = memory;
    info_fd.handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT;
    int fd = -1;
    if (get_fd(device->device(), &info_fd, &fd) != VK_SUCCESS) {
      std::cerr << "vkGetMemoryFdKHR failed" << std::endl;
      std::exit(1);
    }
    return Exported{gpushare::UniqueFd(fd), info, gpushare::UniqueFd()};
  }
};

/// Allocates 4096 bytes of exportable host-visible memory behind a buffer and writes `bytes`.
bool make_export(Export& e, const std::string& bytes, std::string* why) {
  VkDevice dev = e.device->device();
  const VkBufferUsageFlags usage =
      VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  VkExternalMemoryBufferCreateInfo ext{};
  ext.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO;
  ext.handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT;
  VkBufferCreateInfo bi{};
  bi.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
  bi.pNext = &ext;
  bi.size = 4096;
  bi.usage = usage;
  if (vkCreateBuffer(dev, &bi, nullptr, &e.buffer) != VK_SUCCESS) return false;
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(dev, e.buffer, &req);
  const VkPhysicalDeviceMemoryProperties& mem = e.device->memory_properties();
  std::uint32_t type = UINT32_MAX;
  for (std::uint32_t i = 0; i < mem.memoryTypeCount; ++i) {
    if ((req.memoryTypeBits & (1u << i)) &&
        (mem.memoryTypes[i].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) &&
        (mem.memoryTypes[i].propertyFlags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)) {
      type = i;
      break;
    }
  }
  if (type == UINT32_MAX) {
    *why = "no host-visible coherent memory type for an exportable buffer";
    return false;
  }
  VkExportMemoryAllocateInfo export_info{};
  export_info.sType = VK_STRUCTURE_TYPE_EXPORT_MEMORY_ALLOCATE_INFO;
  export_info.handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT;
  VkMemoryAllocateInfo ai{};
  ai.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
  ai.pNext = &export_info;
  ai.allocationSize = req.size;
  ai.memoryTypeIndex = type;
  if (vkAllocateMemory(dev, &ai, nullptr, &e.memory) != VK_SUCCESS) return false;
  void* p = nullptr;
  if (vkMapMemory(dev, e.memory, 0, VK_WHOLE_SIZE, 0, &p) != VK_SUCCESS) return false;
  std::memcpy(p, bytes.data(), bytes.size());
  vkUnmapMemory(dev, e.memory);

  e.info.set_resource_id("buf-00000000000000000000000000000001");
  e.info.set_kind(v1::RESOURCE_KIND_BUFFER);
  e.info.set_handle_type(v1::HANDLE_TYPE_OPAQUE_FD);
  e.info.set_device_uuid(std::string(e.device->device_uuid().begin(),
                                     e.device->device_uuid().end()));
  e.info.set_driver_uuid(std::string(e.device->driver_uuid().begin(),
                                     e.device->driver_uuid().end()));
  v1::BufferImport* b = e.info.mutable_buffer();
  b->set_size(4096);
  b->set_allocation_size(req.size);
  b->set_dedicated(false);
  b->set_memory_type_index(type);
  b->set_usage(usage);
  return true;
}

/// An import that must be refused with `source`/`code`, leaving the descriptor the caller's.
void refused(const char* name, const Export& e, ErrorSource source, Code code,
             const std::function<void(v1::ExportedFd&)>& spoil) {
  std::cout << name << std::endl;
  Exported exported = e.fd();
  spoil(exported.info);
  const int fd = exported.fd.get();
  try {
    vk::ImportedBuffer::import(e.device, exported);
    check(false, "imported, expected a refusal");
  } catch (const Error& err) {
    check(err.source() == source && err.code() == code, std::string("got ") + err.what());
    std::cout << "  " << err.what() << std::endl;
  }
  check(exported.fd.get() == fd && is_open(fd), "the descriptor is no longer the caller's");
}

}  // namespace

int main() {
  vk::Uuid uuid;
  std::string why;
  if (!first_device_uuid(&uuid, &why)) return skip(why);
  Export e;
  try {
    e.device = vk::Device::open(uuid);
  } catch (const Error& err) {
    return skip(std::string("cannot open the first Vulkan device: ") + err.what());
  }
  std::cout << "device " << e.device->name() << " " << vk::uuid_string(uuid) << std::endl;
  std::string bytes(4096, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i % 251);
  if (!make_export(e, bytes, &why)) return skip("cannot export memory here: " + why);

  std::cout << "no device with the UUID: NOT_FOUND naming it" << std::endl;
  try {
    vk::Uuid other;
    other.fill(0x42);
    vk::Device::open(other);
    check(false, "opened a device that does not exist");
  } catch (const Error& err) {
    check(err.source() == ErrorSource::kVulkan && err.code() == Code::kNotFound &&
              err.message().find("42424242-4242-4242-4242-424242424242") != std::string::npos,
          std::string("got ") + err.what());
    std::cout << "  " << err.what() << std::endl;
  }

  const auto V = ErrorSource::kVulkan;
  refused("another device's UUID", e, V, Code::kFailedPrecondition,
          [](v1::ExportedFd& i) { i.set_device_uuid(std::string(16, '\x42')); });
  refused("another driver's UUID", e, V, Code::kFailedPrecondition,
          [](v1::ExportedFd& i) { i.set_driver_uuid(std::string(16, '\x42')); });
  refused("a UUID of 15 bytes", e, ErrorSource::kProtocol, Code::kInternal,
          [](v1::ExportedFd& i) { i.set_device_uuid(std::string(15, '\0')); });
  refused("handle type DMA_BUF", e, V, Code::kFailedPrecondition,
          [](v1::ExportedFd& i) { i.set_handle_type(v1::HANDLE_TYPE_DMA_BUF); });
  refused("a memory type that does not exist", e, V, Code::kFailedPrecondition,
          [](v1::ExportedFd& i) { i.mutable_buffer()->set_memory_type_index(99); });
  refused("a buffer larger than its allocation", e, ErrorSource::kProtocol, Code::kInternal,
          [](v1::ExportedFd& i) {
            i.mutable_buffer()->set_size(i.buffer().allocation_size() + 1);
          });
  refused("not a buffer", e, ErrorSource::kUsage, Code::kInvalidArgument,
          [](v1::ExportedFd& i) { i.set_kind(v1::RESOURCE_KIND_SEMAPHORE); });

  std::cout << "a good export: imported, the descriptor taken, the bytes mapped" << std::endl;
  {
    Exported exported = e.fd();
    try {
      auto imported = vk::ImportedBuffer::import(e.device, exported);
      check(!exported.fd, "the descriptor was not handed to Vulkan");
      const auto* p = static_cast<const char*>(imported->map());
      check(std::string(p, bytes.size()) == bytes, "the mapped bytes differ");
    } catch (const Error& err) {
      check(false, std::string("import failed: ") + err.what());
    }
  }
  if (failures) {
    std::cerr << failures << " check(s) failed" << std::endl;
    return 1;
  }
  std::cout << "all cases pass" << std::endl;
  return 0;
}
