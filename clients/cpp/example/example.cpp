// The C++ client end to end: create a buffer and a semaphore, write bytes through the daemon
// (a Write that signals the semaphore), wait for it, export the buffer on fd.sock, import it
// into Vulkan on the exporting device (picked by its UUID), map it and check the bytes.
//
//   gpushare-example [runtime-dir]
//
// Exit status 0 when the bytes match. Where the memory type is not host-visible (a discrete
// GPU's device-local memory) it says so and stops after the import: reading it would take a
// copy to a staging buffer on the device.
#include <iostream>
#include <string>

#include "gpushare/client.hpp"
#include "gpushare/vulkan_import.hpp"

int main(int argc, char** argv) {
  try {
    gpushare::Client client(argc > 1 ? argv[1] : gpushare::default_runtime_dir());
    std::cout << "session " << client.start_session("gpushare-example") << std::endl;

    constexpr std::uint64_t kSize = 1 << 16;
    const gpushare::v1::Resource buffer = client.create_buffer(kSize);
    const gpushare::v1::Resource sem = client.create_semaphore(0);
    std::cout << "buffer " << buffer.id() << " (" << kSize << " bytes), semaphore " << sem.id()
              << std::endl;

    std::string bytes(4096, '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + 1);
    // The daemon writes, then signals the semaphore to 1; a consumer waits for 1.
    client.write(buffer.id(), 0, bytes, gpushare::Sync{{}, {{sem.id(), 1}}});
    client.wait(sem.id(), 1, 1000);

    gpushare::Exported exported = client.export_fd(buffer.id());
    const auto uuid =
        gpushare::vulkan::uuid_from_bytes(exported.info.device_uuid(), "device_uuid");
    std::cout << "exported: fd " << exported.fd.get() << ", allocation_size "
              << exported.info.buffer().allocation_size() << ", memory type "
              << exported.info.buffer().memory_type_index() << ", device "
              << gpushare::vulkan::uuid_string(uuid) << std::endl;

    auto device = gpushare::vulkan::Device::open(uuid);
    auto imported = gpushare::vulkan::ImportedBuffer::import(device, exported);
    std::cout << "imported into " << device->name() << std::endl;
    if (!imported->host_visible()) {
      std::cout << "memory type " << imported->memory_type_index()
                << " is not host-visible: not mapped (copy it to a staging buffer to read it)"
                << std::endl;
      return 0;
    }
    const auto* mapped = static_cast<const char*>(imported->map());
    if (std::string(mapped, bytes.size()) != bytes) {
      std::cerr << "the mapped bytes differ from those written" << std::endl;
      return 1;
    }
    std::cout << "mapped: the " << bytes.size() << " bytes written through the daemon match"
              << std::endl;
    return 0;
  } catch (const gpushare::Error& e) {
    std::cerr << "gpushare-example: " << e.what() << std::endl;
    return 1;
  }
}
