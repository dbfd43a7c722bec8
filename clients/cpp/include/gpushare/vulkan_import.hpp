// Importing an exported gpushare buffer into Vulkan: the device picked by the export's UUID,
// and its descriptor imported as VkDeviceMemory bound to a VkBuffer of the exporter's size and
// usage.
//
// Every import is checked against what the driver reports before the import call (handle type
// importable, memory type allowed, sizes, dedicated allocation, device and driver UUIDs), so a
// bad or mismatched export becomes an Error instead of invalid Vulkan usage. Not here: images
// and semaphores (ImportedBuffer is the one import the C++ reference client needs).
#pragma once

#include <vulkan/vulkan.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "gpushare/fd_socket.hpp"

namespace gpushare::vulkan {

using Uuid = std::array<std::uint8_t, VK_UUID_SIZE>;

/// The UUID as 8-4-4-4-12 lowercase hex.
std::string uuid_string(const Uuid& uuid);
/// A 16-byte UUID from the wire (ExportedFd.device_uuid, ...); a protocol error naming `what`
/// when it has another length.
Uuid uuid_from_bytes(const std::string& bytes, const char* what);

/// The name of a VkResult ("VK_ERROR_OUT_OF_DEVICE_MEMORY").
const char* result_name(VkResult result);

/// A Vulkan instance and a logical device on the physical device with a given UUID, with
/// VK_KHR_external_memory_fd enabled. Imports hold it through a shared_ptr, so it outlives them.
class Device {
 public:
  /// Opens the physical device whose VkPhysicalDeviceIDProperties::deviceUUID is `device_uuid`.
  /// Errors (ErrorSource::kVulkan): UNAVAILABLE when no Vulkan driver loads; NOT_FOUND naming
  /// the UUID (and the devices present) when no device has it; FAILED_PRECONDITION when it
  /// lacks Vulkan 1.1 or VK_KHR_external_memory_fd.
  static std::shared_ptr<Device> open(const Uuid& device_uuid);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  VkInstance instance() const noexcept { return instance_; }
  VkPhysicalDevice physical_device() const noexcept { return physical_; }
  VkDevice device() const noexcept { return device_; }
  const Uuid& device_uuid() const noexcept { return device_uuid_; }
  const Uuid& driver_uuid() const noexcept { return driver_uuid_; }
  const std::string& name() const noexcept { return name_; }
  const VkPhysicalDeviceMemoryProperties& memory_properties() const noexcept { return memory_; }

 private:
  Device() = default;

  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  Uuid device_uuid_{};
  Uuid driver_uuid_{};
  std::string name_;
  VkPhysicalDeviceMemoryProperties memory_{};
};

/// An exported gpushare buffer imported into Vulkan: imported VkDeviceMemory (the export's
/// allocation_size and memory_type_index, a dedicated allocation when the export says so) bound
/// to a VkBuffer created with the exporter's size and usage. Destroying it frees both; the
/// daemon's buffer lives on.
class ImportedBuffer {
 public:
  /// Imports `exported`, a BUFFER with an OPAQUE_FD descriptor, into `device`, which must be
  /// the exporter's physical device (same device and driver UUIDs). On success the descriptor
  /// belongs to Vulkan and `exported.fd` is empty; on failure `exported` is left as it was (its
  /// descriptor open and still its own). Errors: ErrorSource::kVulkan, FAILED_PRECONDITION for
  /// what the device or this importer cannot do, the VkResult's error otherwise; kProtocol for
  /// metadata that makes no sense.
  static std::unique_ptr<ImportedBuffer> import(std::shared_ptr<Device> device,
                                                Exported& exported);
  ~ImportedBuffer();
  ImportedBuffer(const ImportedBuffer&) = delete;
  ImportedBuffer& operator=(const ImportedBuffer&) = delete;

  VkBuffer buffer() const noexcept { return buffer_; }
  VkDeviceMemory memory() const noexcept { return memory_; }
  /// The buffer's size (BufferImport.size).
  VkDeviceSize size() const noexcept { return size_; }
  std::uint32_t memory_type_index() const noexcept { return memory_type_index_; }
  /// Whether the memory type is HOST_VISIBLE, so that map() works. Where it is not (device-local
  /// memory of a discrete GPU), read it by copying to a host-visible staging buffer on the
  /// device.
  bool host_visible() const noexcept;

  /// Maps the whole buffer (kept mapped until destruction) and returns it; size() bytes are
  /// readable. Makes the device's writes visible first where the memory is not host-coherent.
  /// FAILED_PRECONDITION when the memory type is not host-visible.
  const void* map();

 private:
  explicit ImportedBuffer(std::shared_ptr<Device> device) : device_(std::move(device)) {}

  std::shared_ptr<Device> device_;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDeviceMemory memory_ = VK_NULL_HANDLE;
  VkDeviceSize size_ = 0;
  std::uint32_t memory_type_index_ = 0;
  void* mapped_ = nullptr;
};

}  // namespace gpushare::vulkan
