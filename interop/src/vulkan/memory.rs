//! Choosing a memory type for an allocation: pure logic over
//! `VkPhysicalDeviceMemoryProperties`, unit-tested without a driver.

use ash::vk;

/// The index of the memory type to allocate from: one allowed by `type_bits` whose flags contain
/// `required`, preferring one that also has `preferred`, lowest index first (the driver orders
/// types by preference). Protected memory is never chosen unless required.
pub(crate) fn select_memory_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    type_bits: u32,
    required: vk::MemoryPropertyFlags,
    preferred: vk::MemoryPropertyFlags,
) -> Option<u32> {
    let candidates = || {
        props
            .memory_types_as_slice()
            .iter()
            .zip(0u32..)
            .filter(move |(t, i)| {
                type_bits & (1 << i) != 0
                    && t.property_flags.contains(required)
                    && (required.contains(vk::MemoryPropertyFlags::PROTECTED)
                        || !t
                            .property_flags
                            .contains(vk::MemoryPropertyFlags::PROTECTED))
            })
    };
    candidates()
        .find(|(t, _)| t.property_flags.contains(required | preferred))
        .or_else(|| candidates().next())
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk::MemoryPropertyFlags as F;

    fn props(types: &[F]) -> vk::PhysicalDeviceMemoryProperties {
        let mut p = vk::PhysicalDeviceMemoryProperties {
            memory_type_count: types.len() as u32,
            memory_heap_count: 1,
            ..Default::default()
        };
        for (slot, flags) in p.memory_types.iter_mut().zip(types) {
            *slot = vk::MemoryType {
                property_flags: *flags,
                heap_index: 0,
            };
        }
        p
    }

    #[test]
    fn prefers_device_local_and_respects_type_bits() {
        // Like a discrete GPU: device-local, host-visible, device-local+host-visible (BAR).
        let p = props(&[
            F::HOST_VISIBLE | F::HOST_COHERENT,
            F::DEVICE_LOCAL,
            F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT,
            F::DEVICE_LOCAL | F::PROTECTED,
        ]);
        let none = F::empty();
        assert_eq!(
            select_memory_type(&p, 0b1111, none, F::DEVICE_LOCAL),
            Some(1)
        );
        assert_eq!(
            select_memory_type(&p, 0b1101, none, F::DEVICE_LOCAL),
            Some(2)
        );
        // Only protected device-local left: fall back to the first unprotected type.
        assert_eq!(
            select_memory_type(&p, 0b1001, none, F::DEVICE_LOCAL),
            Some(0)
        );
        assert_eq!(select_memory_type(&p, 0b1000, none, F::DEVICE_LOCAL), None);
        assert_eq!(select_memory_type(&p, 0b1000, F::PROTECTED, none), Some(3));
        let staging = F::HOST_VISIBLE | F::HOST_COHERENT;
        assert_eq!(
            select_memory_type(&p, 0b1111, staging, F::HOST_CACHED),
            Some(0)
        );
        assert_eq!(select_memory_type(&p, 0b0110, staging, none), Some(2));
        assert_eq!(select_memory_type(&p, 0b0010, staging, none), None);
        // Bits beyond memory_type_count are ignored.
        assert_eq!(select_memory_type(&p, 0b1_0000, none, none), None);
    }

    #[test]
    fn cpu_driver_single_type() {
        let p = props(&[F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED]);
        assert_eq!(
            select_memory_type(&p, 1, F::HOST_VISIBLE | F::HOST_COHERENT, F::HOST_CACHED),
            Some(0)
        );
        assert_eq!(
            select_memory_type(&p, 1, F::empty(), F::DEVICE_LOCAL),
            Some(0)
        );
    }
}
