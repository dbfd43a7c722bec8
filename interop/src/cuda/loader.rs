//! Loading the CUDA driver: whether `libcuda` is there at all, `cuInit`, and the driver's CUDA
//! version.
//!
//! cudarc loads `libcuda` on first use and panics when it is missing, so every entry point of this
//! layer calls [`ensure_present`] before its first CUDA call: a host without CUDA gets
//! [`Error::NotPresent`], never a panic.

use std::sync::OnceLock;

use cudarc::driver::sys;

use super::error::{check, Error, Result};

/// Whether the CUDA driver library can be loaded. Checked once per process.
pub fn is_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: loading libcuda runs its initializers, which the driver supports at any time;
        // the probe only opens and closes the library.
        unsafe { sys::is_culib_present() }
    })
}

/// [`Error::NotPresent`] unless the driver library can be loaded.
pub(crate) fn ensure_present() -> Result<()> {
    if is_present() {
        Ok(())
    } else {
        Err(Error::NotPresent)
    }
}

/// Initializes the driver API (`cuInit(0)`); cheap after the first call.
pub(crate) fn init() -> Result<()> {
    ensure_present()?;
    // SAFETY: the library is present; cuInit may be called any number of times, from any thread.
    check("cuInit", unsafe { sys::cuInit(0) })
}

/// The CUDA version the driver supports, as (major, minor): `(13, 0)` for a CUDA 13.0 driver.
pub fn driver_version() -> Result<(u32, u32)> {
    ensure_present()?;
    let mut version = 0;
    // SAFETY: the library is present; `version` is a valid out-pointer. cuDriverGetVersion needs
    // no cuInit.
    check("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut version)
    })?;
    Ok(split_version(version))
}

/// `13020` → `(13, 2)`, CUDA's encoding (`1000 * major + 10 * minor`).
fn split_version(version: i32) -> (u32, u32) {
    let v = u32::try_from(version).unwrap_or(0);
    (v / 1000, (v % 1000) / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_split_like_cuda_does() {
        assert_eq!(split_version(13000), (13, 0));
        assert_eq!(split_version(12080), (12, 8));
        assert_eq!(split_version(11020), (11, 2));
        assert_eq!(split_version(-1), (0, 0));
    }

    #[test]
    fn absent_driver_is_an_error_not_a_panic() {
        if is_present() {
            println!("SKIP: libcuda is present here");
            return;
        }
        assert!(matches!(driver_version(), Err(Error::NotPresent)));
        assert!(matches!(init(), Err(Error::NotPresent)));
    }
}
