#include "gpushare/vulkan_import.hpp"

#include <cstring>
#include <vector>

#include "gpushare/error.hpp"

namespace gpushare::vulkan {

namespace {

/// What a VkResult means, in a few words.
const char* result_description(VkResult result) {
  switch (result) {
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "a host memory allocation failed";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "a device memory allocation failed";
    case VK_ERROR_INITIALIZATION_FAILED: return "initialization of an object failed";
    case VK_ERROR_DEVICE_LOST: return "the logical or physical device was lost";
    case VK_ERROR_MEMORY_MAP_FAILED: return "mapping of a memory object failed";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "a requested extension is not supported";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "a requested feature is not supported";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "no compatible Vulkan driver was found";
    case VK_ERROR_TOO_MANY_OBJECTS: return "too many objects of the type were created";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE: return "the external handle is not valid";
    default: return "Vulkan call failed";
  }
}

/// A failed Vulkan call: its name, the VkResult's name and description.
Error vk_error(const char* call, VkResult result) {
  const Code code = result == VK_ERROR_INCOMPATIBLE_DRIVER ? Code::kUnavailable
                    : result == VK_ERROR_OUT_OF_DEVICE_MEMORY ||
                            result == VK_ERROR_OUT_OF_HOST_MEMORY
                        ? Code::kResourceExhausted
                        : Code::kInternal;
  return Error(ErrorSource::kVulkan, code,
               std::string(call) + " failed: " + result_name(result) + " (" +
                   result_description(result) + ")",
               0, static_cast<std::int32_t>(result));
}

void check(const char* call, VkResult result) {
  if (result != VK_SUCCESS) throw vk_error(call, result);
}

/// A check the device or this importer failed before any Vulkan call.
Error unsupported(std::string message) {
  return Error(ErrorSource::kVulkan, Code::kFailedPrecondition, std::move(message));
}

Uuid to_uuid(const std::uint8_t (&bytes)[VK_UUID_SIZE]) {
  Uuid out;
  std::memcpy(out.data(), bytes, VK_UUID_SIZE);
  return out;
}

bool has_extension(VkPhysicalDevice physical, const char* name) {
  std::uint32_t count = 0;
  check("vkEnumerateDeviceExtensionProperties",
        vkEnumerateDeviceExtensionProperties(physical, nullptr, &count, nullptr));
  std::vector<VkExtensionProperties> extensions(count);
  check("vkEnumerateDeviceExtensionProperties",
        vkEnumerateDeviceExtensionProperties(physical, nullptr, &count, extensions.data()));
  for (std::uint32_t i = 0; i < count; ++i) {
    if (std::strcmp(extensions[i].extensionName, name) == 0) return true;
  }
  return false;
}

}  // namespace

std::string uuid_string(const Uuid& uuid) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < uuid.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kDigits[uuid[i] >> 4]);
    out.push_back(kDigits[uuid[i] & 0xf]);
  }
  return out;
}

Uuid uuid_from_bytes(const std::string& bytes, const char* what) {
  Uuid out;
  if (bytes.size() != out.size()) {
    throw Error::protocol(std::string(what) + " has " + std::to_string(bytes.size()) +
                          " bytes, not 16");
  }
  std::memcpy(out.data(), bytes.data(), out.size());
  return out;
}

const char* result_name(VkResult result) {
  switch (result) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED: return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE: return "VK_ERROR_INVALID_EXTERNAL_HANDLE";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    default: return "VkResult(unnamed)";
  }
}

// ---- Device ----

std::shared_ptr<Device> Device::open(const Uuid& device_uuid) {
  std::shared_ptr<Device> out(new Device());  // Its destructor cleans up every error path.

  VkApplicationInfo app{};
  app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
  app.pApplicationName = "gpushare-cpp";
  app.apiVersion = VK_API_VERSION_1_1;
  VkInstanceCreateInfo instance_info{};
  instance_info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
  instance_info.pApplicationInfo = &app;
  check("vkCreateInstance", vkCreateInstance(&instance_info, nullptr, &out->instance_));

  std::uint32_t count = 0;
  check("vkEnumeratePhysicalDevices",
        vkEnumeratePhysicalDevices(out->instance_, &count, nullptr));
  std::vector<VkPhysicalDevice> physicals(count);
  check("vkEnumeratePhysicalDevices",
        vkEnumeratePhysicalDevices(out->instance_, &count, physicals.data()));

  std::string present;  // For the error: every device seen, with its UUID.
  for (std::uint32_t i = 0; i < count; ++i) {
    VkPhysicalDeviceProperties basic{};
    vkGetPhysicalDeviceProperties(physicals[i], &basic);
    if (basic.apiVersion < VK_API_VERSION_1_1) {
      // No VkPhysicalDeviceIDProperties below Vulkan 1.1.
      present += std::string(present.empty() ? "" : ", ") + basic.deviceName + " (Vulkan 1.0)";
      continue;
    }
    VkPhysicalDeviceIDProperties id{};
    id.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES;
    VkPhysicalDeviceProperties2 props{};
    props.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
    props.pNext = &id;
    vkGetPhysicalDeviceProperties2(physicals[i], &props);
    const Uuid uuid = to_uuid(id.deviceUUID);
    present += std::string(present.empty() ? "" : ", ") + props.properties.deviceName + " " +
               uuid_string(uuid);
    if (uuid == device_uuid) {
      out->physical_ = physicals[i];
      out->device_uuid_ = uuid;
      out->driver_uuid_ = to_uuid(id.driverUUID);
      out->name_ = props.properties.deviceName;
      break;
    }
  }
  if (out->physical_ == VK_NULL_HANDLE) {
    throw Error(ErrorSource::kVulkan, Code::kNotFound,
                "no Vulkan device has UUID " + uuid_string(device_uuid) + " (present: " +
                    (present.empty() ? "none" : present) + ")");
  }
  if (!has_extension(out->physical_, VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME)) {
    throw unsupported(out->name_ + " lacks " VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME);
  }
  vkGetPhysicalDeviceMemoryProperties(out->physical_, &out->memory_);

  // One queue of family 0: imports need no queue, but a device must have one.
  const float priority = 1.0f;
  VkDeviceQueueCreateInfo queue{};
  queue.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
  queue.queueFamilyIndex = 0;
  queue.queueCount = 1;
  queue.pQueuePriorities = &priority;
  const char* extensions[] = {VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME};
  VkDeviceCreateInfo device_info{};
  device_info.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
  device_info.queueCreateInfoCount = 1;
  device_info.pQueueCreateInfos = &queue;
  device_info.enabledExtensionCount = 1;
  device_info.ppEnabledExtensionNames = extensions;
  check("vkCreateDevice", vkCreateDevice(out->physical_, &device_info, nullptr, &out->device_));
  return out;
}

Device::~Device() {
  if (device_ != VK_NULL_HANDLE) vkDestroyDevice(device_, nullptr);
  if (instance_ != VK_NULL_HANDLE) vkDestroyInstance(instance_, nullptr);
}

// ---- ImportedBuffer ----

std::unique_ptr<ImportedBuffer> ImportedBuffer::import(std::shared_ptr<Device> device,
                                                       Exported& exported) {
  const v1::ExportedFd& info = exported.info;
  if (!exported.fd) throw Error::usage("the export holds no descriptor (imported already?)");
  if (info.kind() != v1::RESOURCE_KIND_BUFFER || !info.has_buffer()) {
    throw Error::usage("resource " + info.resource_id() + " is not a buffer");
  }
  if (info.handle_type() != v1::HANDLE_TYPE_OPAQUE_FD) {
    throw unsupported("buffer " + info.resource_id() + " comes as handle type " +
                      v1::HandleType_Name(info.handle_type()) + "; this importer takes OPAQUE_FD");
  }
  // OPAQUE_FD memory imports only into the same physical device and driver.
  const Uuid device_uuid = uuid_from_bytes(info.device_uuid(), "ExportedFd.device_uuid");
  const Uuid driver_uuid = uuid_from_bytes(info.driver_uuid(), "ExportedFd.driver_uuid");
  if (device_uuid != device->device_uuid()) {
    throw unsupported("buffer " + info.resource_id() + " was exported by device " +
                      uuid_string(device_uuid) + ", not by " + device->name() + " (" +
                      uuid_string(device->device_uuid()) + ")");
  }
  if (driver_uuid != device->driver_uuid()) {
    throw unsupported("buffer " + info.resource_id() + " was exported by driver " +
                      uuid_string(driver_uuid) + ", not by " + device->name() + "'s (" +
                      uuid_string(device->driver_uuid()) + ")");
  }
  const v1::BufferImport& b = info.buffer();
  if (b.size() == 0 || b.allocation_size() < b.size() || b.usage() == 0) {
    throw Error::protocol("buffer metadata out of range: size " + std::to_string(b.size()) +
                          ", allocation_size " + std::to_string(b.allocation_size()) +
                          ", usage " + std::to_string(b.usage()));
  }
  const VkPhysicalDeviceMemoryProperties& memory = device->memory_properties();
  if (b.memory_type_index() >= memory.memoryTypeCount) {
    throw unsupported("memory type " + std::to_string(b.memory_type_index()) +
                      " does not exist on " +
                      device->name() + " (" + std::to_string(memory.memoryTypeCount) + " types)");
  }
  const auto handle_type = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT;
  const auto usage = static_cast<VkBufferUsageFlags>(b.usage());

  // Ask the driver before importing: can it import this handle type for this usage?
  VkPhysicalDeviceExternalBufferInfo query{};
  query.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_BUFFER_INFO;
  query.usage = usage;
  query.handleType = handle_type;
  VkExternalBufferProperties external{};
  external.sType = VK_STRUCTURE_TYPE_EXTERNAL_BUFFER_PROPERTIES;
  vkGetPhysicalDeviceExternalBufferProperties(device->physical_device(), &query, &external);
  const VkExternalMemoryFeatureFlags features =
      external.externalMemoryProperties.externalMemoryFeatures;
  if (!(features & VK_EXTERNAL_MEMORY_FEATURE_IMPORTABLE_BIT)) {
    throw unsupported(device->name() + " cannot import OPAQUE_FD buffer memory with usage " +
                      std::to_string(b.usage()));
  }
  if ((features & VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT) && !b.dedicated()) {
    throw unsupported(device->name() +
                      " imports OPAQUE_FD buffer memory only as a dedicated allocation, and the "
                      "export is not one");
  }

  std::unique_ptr<ImportedBuffer> out(new ImportedBuffer(device));  // Frees on error paths.
  out->size_ = b.size();
  out->memory_type_index_ = b.memory_type_index();
  VkDevice vk = device->device();

  VkExternalMemoryBufferCreateInfo external_info{};
  external_info.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO;
  external_info.handleTypes = handle_type;
  VkBufferCreateInfo buffer_info{};
  buffer_info.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
  buffer_info.pNext = &external_info;
  buffer_info.size = b.size();
  buffer_info.usage = usage;
  buffer_info.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  check("vkCreateBuffer", vkCreateBuffer(vk, &buffer_info, nullptr, &out->buffer_));

  VkMemoryDedicatedRequirements dedicated_req{};
  dedicated_req.sType = VK_STRUCTURE_TYPE_MEMORY_DEDICATED_REQUIREMENTS;
  VkMemoryRequirements2 req{};
  req.sType = VK_STRUCTURE_TYPE_MEMORY_REQUIREMENTS_2;
  req.pNext = &dedicated_req;
  VkBufferMemoryRequirementsInfo2 req_info{};
  req_info.sType = VK_STRUCTURE_TYPE_BUFFER_MEMORY_REQUIREMENTS_INFO_2;
  req_info.buffer = out->buffer_;
  vkGetBufferMemoryRequirements2(vk, &req_info, &req);
  if (!(req.memoryRequirements.memoryTypeBits & (1u << b.memory_type_index()))) {
    throw unsupported("memory type " + std::to_string(b.memory_type_index()) +
                      " is not allowed for the buffer on " + device->name());
  }
  if (req.memoryRequirements.size > b.allocation_size()) {
    throw unsupported("the buffer needs " + std::to_string(req.memoryRequirements.size) +
                      " bytes of memory, the export's allocation has " +
                      std::to_string(b.allocation_size()));
  }
  if (dedicated_req.requiresDedicatedAllocation && !b.dedicated()) {
    throw unsupported(device->name() +
                      " requires a dedicated allocation for the buffer, and the export is not one");
  }

  VkMemoryDedicatedAllocateInfo dedicated{};
  dedicated.sType = VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO;
  dedicated.buffer = out->buffer_;
  VkImportMemoryFdInfoKHR import_info{};
  import_info.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR;
  import_info.pNext = b.dedicated() ? &dedicated : nullptr;
  import_info.handleType = handle_type;
  import_info.fd = exported.fd.get();
  VkMemoryAllocateInfo allocate{};
  allocate.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
  allocate.pNext = &import_info;
  allocate.allocationSize = b.allocation_size();
  allocate.memoryTypeIndex = b.memory_type_index();
  check("vkAllocateMemory (import)", vkAllocateMemory(vk, &allocate, nullptr, &out->memory_));
  // The import succeeded: the descriptor is the driver's now, never to be closed by us.
  exported.fd.release();

  check("vkBindBufferMemory", vkBindBufferMemory(vk, out->buffer_, out->memory_, 0));
  return out;
}

ImportedBuffer::~ImportedBuffer() {
  VkDevice vk = device_->device();
  if (mapped_) vkUnmapMemory(vk, memory_);
  if (buffer_ != VK_NULL_HANDLE) vkDestroyBuffer(vk, buffer_, nullptr);
  if (memory_ != VK_NULL_HANDLE) vkFreeMemory(vk, memory_, nullptr);
}

bool ImportedBuffer::host_visible() const noexcept {
  return device_->memory_properties().memoryTypes[memory_type_index_].propertyFlags &
         VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
}

const void* ImportedBuffer::map() {
  const VkMemoryPropertyFlags flags =
      device_->memory_properties().memoryTypes[memory_type_index_].propertyFlags;
  if (!(flags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)) {
    throw unsupported("memory type " + std::to_string(memory_type_index_) + " of " +
                      device_->name() +
                      " is not host-visible: copy the buffer to a host-visible staging buffer "
                      "on the device to read it");
  }
  VkDevice vk = device_->device();
  if (!mapped_) check("vkMapMemory", vkMapMemory(vk, memory_, 0, VK_WHOLE_SIZE, 0, &mapped_));
  if (!(flags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)) {
    VkMappedMemoryRange range{};
    range.sType = VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE;
    range.memory = memory_;
    range.offset = 0;
    range.size = VK_WHOLE_SIZE;
    check("vkInvalidateMappedMemoryRanges", vkInvalidateMappedMemoryRanges(vk, 1, &range));
  }
  return mapped_;
}

}  // namespace gpushare::vulkan
