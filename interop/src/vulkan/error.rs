//! The Vulkan layer's error type, and the one place where a driver's `VkResult` becomes it.
//!
//! Every variant names what went wrong; driver failures keep the call's name and the result code
//! (its name and its description). Nothing here panics.

use ash::vk;

/// Everything that can go wrong in the Vulkan layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Vulkan loader (`libvulkan.so.1`) could not be loaded.
    #[error("cannot load the Vulkan loader")]
    Loader(#[source] ash::LoadingError),
    /// A Vulkan call failed with a result code other than out-of-memory.
    #[error("{call} failed: {result:?} ({result})")]
    Call {
        /// The Vulkan entry point, e.g. `vkCreateBuffer`.
        call: &'static str,
        /// What the driver returned.
        result: vk::Result,
    },
    /// The driver ran out of device memory.
    #[error("{call} failed: out of device memory")]
    OutOfDeviceMemory {
        /// The Vulkan entry point that failed.
        call: &'static str,
    },
    /// The driver ran out of host memory.
    #[error("{call} failed: out of host memory")]
    OutOfHostMemory {
        /// The Vulkan entry point that failed.
        call: &'static str,
    },
    /// The instance sees no physical device at all.
    #[error("no Vulkan physical device")]
    NoDevice,
    /// No physical device matches the selector.
    #[error("no Vulkan physical device matches {0}")]
    DeviceNotFound(String),
    /// A capability this operation needs is missing (driver, device, or object).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An import description names a different physical device than this one.
    #[error(
        "device mismatch: descriptor is for device {}, this device is {}",
        hex(expected),
        hex(found)
    )]
    DeviceMismatch {
        /// The device UUID the descriptor was exported from.
        expected: [u8; 16],
        /// This device's UUID.
        found: [u8; 16],
    },
    /// An object created by one [`Device`](super::Device) was used with another.
    #[error("{what} belongs to a different device")]
    WrongDevice {
        /// Which argument.
        what: &'static str,
    },
    /// A range (offset, length) does not fit in its object, overflows, or is empty.
    #[error(
        "{what}: range offset {offset} length {len} does not fit in size {size} (or is empty)"
    )]
    OutOfRange {
        /// Which range.
        what: &'static str,
        /// Its start.
        offset: u64,
        /// Its length.
        len: u64,
        /// The size of the object it refers to.
        size: u64,
    },
    /// Two ranges of the same buffer overlap where the operation forbids it.
    #[error("source and destination ranges overlap in the same buffer")]
    Overlap,
    /// A value is not a multiple of the alignment the operation requires.
    #[error("{what} {value} is not a multiple of {alignment}")]
    Misaligned {
        /// Which value.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The alignment required.
        alignment: u64,
    },
    /// A size is zero or smaller than the driver requires.
    #[error("invalid {what} {size} (minimum {minimum})")]
    InvalidSize {
        /// Which size.
        what: &'static str,
        /// The size given.
        size: u64,
        /// The smallest size accepted.
        minimum: u64,
    },
    /// A timeline value is not allowed: a signal not above the current value, or a value further
    /// from the current value than the device's `maxTimelineSemaphoreValueDifference`.
    #[error("invalid timeline value {requested} (current value {current})")]
    InvalidValue {
        /// The semaphore's value when checked.
        current: u64,
        /// The value asked for.
        requested: u64,
    },
    /// Buffer or image usage flags that are empty or name unknown bits.
    #[error("invalid usage {usage:#x}")]
    InvalidUsage {
        /// The usage flags given.
        usage: u32,
    },
    /// A buffer lacks a usage an operation needs.
    #[error("buffer usage {usage:#x} lacks {needed:#x}")]
    MissingUsage {
        /// The buffer's usage flags.
        usage: u32,
        /// The flags the operation needs.
        needed: u32,
    },
    /// A memory type index that the device does not have or that the buffer cannot use.
    #[error("memory type {index} not usable (allowed type bits {type_bits:#b})")]
    InvalidMemoryType {
        /// The index asked for.
        index: u32,
        /// The `memoryTypeBits` the buffer allows.
        type_bits: u32,
    },
    /// No memory type has the properties the allocation needs.
    #[error("no memory type with flags {flags:#x} in type bits {type_bits:#b}")]
    NoMemoryType {
        /// The required `VkMemoryPropertyFlags`.
        flags: u32,
        /// The `memoryTypeBits` the buffer allows.
        type_bits: u32,
    },
    /// An image shape that is not a valid image (zero extent, too many mip levels, ...).
    #[error("{0}")]
    InvalidImage(String),
    /// A GPU operation did not complete within its timeout. Its resources stay alive until it does.
    #[error("GPU operation timed out")]
    Timeout,
}

impl Error {
    /// Whether this error means host or device memory ran out (the request may succeed later).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::OutOfDeviceMemory { .. } | Error::OutOfHostMemory { .. } => true,
            Error::Call { result, .. } => matches!(
                *result,
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY
            ),
            _ => false,
        }
    }

    /// The error for `call` returning `result`.
    pub(crate) fn call(call: &'static str, result: vk::Result) -> Error {
        match result {
            vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => Error::OutOfDeviceMemory { call },
            vk::Result::ERROR_OUT_OF_HOST_MEMORY => Error::OutOfHostMemory { call },
            result => Error::Call { call, result },
        }
    }
}

/// A UUID as 32 hex digits.
fn hex(uuid: &[u8; 16]) -> String {
    uuid.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Vulkan layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Names the call behind a raw `VkResult`.
pub(crate) trait Check<T> {
    /// Turns the driver's result into ours, naming `call` on failure.
    fn check(self, call: &'static str) -> Result<T>;
}

impl<T> Check<T> for ash::prelude::VkResult<T> {
    fn check(self, call: &'static str) -> Result<T> {
        self.map_err(|result| Error::call(call, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_maps_to_its_variants() {
        let e = Error::call("vkAllocateMemory", vk::Result::ERROR_OUT_OF_DEVICE_MEMORY);
        assert!(matches!(
            e,
            Error::OutOfDeviceMemory {
                call: "vkAllocateMemory"
            }
        ));
        assert!(e.is_out_of_memory());
        let e = Error::call("vkCreateBuffer", vk::Result::ERROR_DEVICE_LOST);
        assert!(!e.is_out_of_memory());
        assert_eq!(
            e.to_string(),
            "vkCreateBuffer failed: ERROR_DEVICE_LOST (The logical device has been lost. See \
             <https://registry.khronos.org/vulkan/specs/1.3-extensions/html/vkspec.html#devsandqueues-lost-device>)"
        );
    }
}
