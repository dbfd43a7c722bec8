//! The CUDA layer's error type, and the one checked path through which every driver result
//! (`CUresult`) becomes it: [`check`], and [`driver`] for cudarc's `DriverError`.
//!
//! A failed call keeps its name, the error code's name (`cuGetErrorName`) and its description
//! (`cuGetErrorString`): Falcor's `FALCOR_CU_CHECK` message, as a typed error. Nothing here panics.

use std::ffi::CStr;
use std::fmt;

use cudarc::driver::{sys, DriverError};

use super::matching::MatchMethod;

/// Everything that can go wrong in the CUDA layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (`libcuda.so.1`) is not installed or cannot be loaded.
    #[error("CUDA driver library (libcuda) not found")]
    NotPresent,
    /// A CUDA driver call failed.
    #[error("{call} failed: {name} ({description})")]
    Call {
        /// The driver entry point, e.g. `cuImportExternalMemory`.
        call: &'static str,
        /// The `CUresult` it returned.
        code: i32,
        /// The code's name (`cuGetErrorName`), e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// The code's description (`cuGetErrorString`).
        description: String,
    },
    /// The driver sees no CUDA device at all.
    #[error("no CUDA device")]
    NoDevice,
    /// No CUDA device is the one asked for.
    #[error(
        "no CUDA device matches {name} (UUID {}): not a CUDA device, or hidden by \
         CUDA_VISIBLE_DEVICES",
        uuid_string(uuid)
    )]
    NoMatch {
        /// The UUID looked for.
        uuid: [u8; 16],
        /// What was looked for, for the message (a Vulkan device name).
        name: String,
    },
    /// A CUDA device matches only through a fallback, and strict matching forbids fallbacks.
    #[error(
        "{name} (UUID {}) matches no CUDA device by UUID; {method:?} would pick CUDA device \
         {ordinal}, but strict matching forbids fallbacks",
        uuid_string(uuid)
    )]
    FallbackForbidden {
        /// The Vulkan device's UUID.
        uuid: [u8; 16],
        /// The Vulkan device's name.
        name: String,
        /// The fallback that would have matched.
        method: MatchMethod,
        /// The CUDA ordinal it would have matched.
        ordinal: i32,
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
    /// An argument the driver would reject, or that would be invalid usage.
    #[error("invalid {what} {value}: {reason}")]
    InvalidValue {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stream of one CUDA context was used with an object of another.
    #[error("{what} belongs to a different CUDA context")]
    WrongContext {
        /// Which argument.
        what: &'static str,
    },
    /// The driver or device lacks something this operation needs.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// Whether this error means device or host memory ran out (the request may succeed later).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Call { code, .. }
            if *code == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY as i32)
    }

    /// The error for `call` returning `code` (not `CUDA_SUCCESS`), named by the driver.
    pub(crate) fn call(call: &'static str, code: sys::CUresult) -> Error {
        let (name, description) = describe(code);
        Error::Call {
            call,
            code: code as i32,
            name,
            description,
        }
    }
}

/// The driver's name and description of `code`; the Rust name of the code where the driver
/// cannot say (never calls into a driver that is not loaded).
fn describe(code: sys::CUresult) -> (String, String) {
    let fallback = format!("{code:?}");
    if !super::loader::is_present() {
        return (
            fallback,
            "no description: CUDA driver not loaded".to_owned(),
        );
    }
    let mut name = std::ptr::null();
    // SAFETY: the driver library is present (checked above); `name` is a valid out-pointer. On
    // success it points to a static NUL-terminated string owned by the driver.
    let name = if unsafe { sys::cuGetErrorName(code, &mut name) } == sys::CUresult::CUDA_SUCCESS
        && !name.is_null()
    {
        // SAFETY: a non-null result of a successful cuGetErrorName is a static C string.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    } else {
        fallback
    };
    let mut text = std::ptr::null();
    // SAFETY: as above, for cuGetErrorString.
    let description = if unsafe { sys::cuGetErrorString(code, &mut text) }
        == sys::CUresult::CUDA_SUCCESS
        && !text.is_null()
    {
        // SAFETY: a non-null result of a successful cuGetErrorString is a static C string.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    } else {
        "unrecognized error code".to_owned()
    };
    (name, description)
}

/// The CUDA layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The one checked path: `Ok` for `CUDA_SUCCESS`, else the error naming `call`.
pub(crate) fn check(call: &'static str, result: sys::CUresult) -> Result<()> {
    match result {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        code => Err(Error::call(call, code)),
    }
}

/// For cudarc's safe and `result` APIs: names the call behind a [`DriverError`].
pub(crate) fn driver(call: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::call(call, e.0)
}

/// A UUID in the 8-4-4-4-12 form `nvidia-smi -L` prints (without its `GPU-` prefix).
pub(crate) fn uuid_string(uuid: &[u8; 16]) -> String {
    UuidDisplay(uuid).to_string()
}

struct UuidDisplay<'a>(&'a [u8; 16]);

impl fmt::Display for UuidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Checks that `offset..offset + len` is a non-empty range within `size`.
pub(crate) fn check_range(what: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if len > 0 && end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            what,
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_has_the_falcor_message() {
        let e = Error::Call {
            call: "cuImportExternalMemory",
            code: 1,
            name: "CUDA_ERROR_INVALID_VALUE".to_owned(),
            description: "invalid argument".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "cuImportExternalMemory failed: CUDA_ERROR_INVALID_VALUE (invalid argument)"
        );
        assert!(!e.is_out_of_memory());
    }

    #[test]
    fn out_of_memory_is_recognized() {
        let e = Error::Call {
            call: "cuMemAlloc",
            code: sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY as i32,
            name: "CUDA_ERROR_OUT_OF_MEMORY".to_owned(),
            description: "out of memory".to_owned(),
        };
        assert!(e.is_out_of_memory());
        assert!(!Error::NoDevice.is_out_of_memory());
    }

    #[test]
    fn call_without_a_driver_still_names_the_code() {
        if super::super::loader::is_present() {
            // With a driver the names come from cuGetErrorName/cuGetErrorString.
            let e = Error::call("cuInit", sys::CUresult::CUDA_ERROR_NO_DEVICE);
            let s = e.to_string();
            assert!(
                s.starts_with("cuInit failed: CUDA_ERROR_NO_DEVICE ("),
                "{s}"
            );
            return;
        }
        let e = Error::call("cuInit", sys::CUresult::CUDA_ERROR_NO_DEVICE);
        assert_eq!(
            e.to_string(),
            "cuInit failed: CUDA_ERROR_NO_DEVICE (no description: CUDA driver not loaded)"
        );
        assert!(matches!(e, Error::Call { code: 100, .. }));
    }

    #[test]
    fn check_passes_success_and_names_failures() {
        assert!(check("cuInit", sys::CUresult::CUDA_SUCCESS).is_ok());
        let e = check("cuMemAlloc_v2", sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY).unwrap_err();
        assert!(e.is_out_of_memory());
        assert!(e.to_string().starts_with("cuMemAlloc_v2 failed: "));
    }

    #[test]
    fn messages_name_uuids_and_ranges() {
        let mut uuid = [0u8; 16];
        uuid[0] = 0xab;
        uuid[15] = 0x01;
        let e = Error::NoMatch {
            uuid,
            name: "NVIDIA H100".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "no CUDA device matches NVIDIA H100 (UUID ab000000-0000-0000-0000-000000000001): not \
             a CUDA device, or hidden by CUDA_VISIBLE_DEVICES"
        );
        assert!(check_range("map", 0, 16, 16).is_ok());
        assert!(check_range("map", 8, 8, 16).is_ok());
        assert!(check_range("map", 8, 9, 16).is_err());
        assert!(check_range("map", 0, 0, 16).is_err());
        assert!(check_range("map", u64::MAX, 2, u64::MAX).is_err());
        assert_eq!(
            check_range("map", 8, 9, 16).unwrap_err().to_string(),
            "map: range offset 8 length 9 does not fit in size 16 (or is empty)"
        );
    }
}
