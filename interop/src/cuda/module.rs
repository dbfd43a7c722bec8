//! Loading PTX as a CUDA module (`cuModuleLoadData`, JIT-compiled for the device: no nvcc at
//! build time) and launching its kernels (`cuLaunchKernel`): [`Module`], [`Function`],
//! [`launch`]. The daemon's word kernel (`memops::WordMax`) and the test kernels (`kernels`,
//! behind `test-kernels`) are loaded through it.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream};

use super::device::CudaDevice;
use super::error::{Error, Result};
/// Thin wrappers, one per driver call.
mod raw {
    use std::ffi::{c_void, CStr};

    use cudarc::driver::sys;

    use super::super::error::{check, Result};

    /// `cuModuleLoadData` of a NUL-terminated PTX text (JIT-compiled for the current device).
    ///
    /// # Safety
    ///
    /// A context is current. The module must be unloaded with [`module_unload`].
    pub unsafe fn module_load_data(image: &CStr) -> Result<sys::CUmodule> {
        let mut module: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: a context is current (caller); `image` is NUL-terminated and read during the
        // call only; `module` is a valid out-pointer.
        check("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut module, image.as_ptr().cast())
        })?;
        Ok(module)
    }

    /// `cuModuleGetFunction`.
    ///
    /// # Safety
    ///
    /// `module` is live. The function is valid while it stays loaded.
    pub unsafe fn module_get_function(
        module: sys::CUmodule,
        name: &CStr,
    ) -> Result<sys::CUfunction> {
        let mut function: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: `module` is live (caller); `name` is NUL-terminated; `function` is a valid
        // out-pointer.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut function, module, name.as_ptr())
        })?;
        Ok(function)
    }

    /// `cuModuleUnload`.
    ///
    /// # Safety
    ///
    /// Its context is current; no pending launch uses its functions; unloaded once.
    pub unsafe fn module_unload(module: sys::CUmodule) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuModuleUnload", unsafe { sys::cuModuleUnload(module) })
    }

    /// `cuLaunchKernel`, without dynamic shared memory or `extra`.
    ///
    /// # Safety
    ///
    /// `stream`'s context is current and `function` of a module loaded in it; `params` holds one
    /// pointer per kernel parameter, each to a value of that parameter's type and size; what
    /// the kernel accesses stays valid until it has run.
    pub unsafe fn launch_kernel(
        function: sys::CUfunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        stream: sys::CUstream,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        // SAFETY: guaranteed by the caller; the driver copies the parameter values during the
        // call.
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                function,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

/// A loaded CUDA module (`cuModuleLoadData`), unloaded in `Drop`.
///
/// Launches of its functions must have completed before it drops.
pub struct Module {
    device: Arc<CudaDevice>,
    raw: sys::CUmodule,
}

// SAFETY: `raw` is a driver handle; the driver API is thread-safe and every call here makes the
// device's context current first.
unsafe impl Send for Module {}
// SAFETY: as for `Send`; `&self` methods only read the handle.
unsafe impl Sync for Module {}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("raw", &self.raw)
            .field("device", &self.device.info().ordinal)
            .finish()
    }
}

impl Module {
    /// Loads `image` (PTX text or a cubin, NUL-terminated) into `device`'s context; PTX is
    /// JIT-compiled for the device here, and its errors are the driver's
    /// (`CUDA_ERROR_INVALID_PTX`).
    pub fn load(device: &Arc<CudaDevice>, image: &CStr) -> Result<Module> {
        device.bind()?;
        // SAFETY: the context is current; `Drop` unloads the module.
        let raw = unsafe { raw::module_load_data(image) }?;
        Ok(Module {
            device: Arc::clone(device),
            raw,
        })
    }

    /// The kernel `name` (`cuModuleGetFunction`), valid while `self` is borrowed.
    pub fn function(&self, name: &CStr) -> Result<Function<'_>> {
        self.device.bind()?;
        // SAFETY: the module is live while `self` is; the function borrows `self`.
        let raw = unsafe { raw::module_get_function(self.raw, name) }?;
        Ok(Function {
            raw,
            module: self,
            _not_send: PhantomData,
        })
    }

    /// The device it is loaded on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Err(e) = self.device.bind() {
            tracing::error!(error = %e, "leaking a CUDA module: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; loaded by `load`, unloaded once, here; every Function
        // borrowed `self` and is gone.
        if let Err(e) = unsafe { raw::module_unload(self.raw) } {
            tracing::warn!(error = %e, "unloading a CUDA module");
        }
    }
}

/// A kernel of a [`Module`] (`CUfunction`).
#[derive(Clone, Copy)]
pub struct Function<'m> {
    raw: sys::CUfunction,
    module: &'m Module,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for Function<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function").field("raw", &self.raw).finish()
    }
}

impl Function<'_> {
    /// The driver handle, valid while the module is loaded.
    pub fn raw(&self) -> sys::CUfunction {
        self.raw
    }
}

/// Enqueues `function` on `stream` over a `grid` of `block`s (x, y, z; all positive), with
/// `params` holding one pointer per kernel parameter, each to its value (`cuLaunchKernel`'s
/// `kernelParams`: the values are copied before this returns). [`Error::InvalidValue`] for an
/// empty grid or block, [`Error::WrongContext`] for a stream of another context.
///
/// # Safety
///
/// `params` matches the kernel's parameters in number, order, types and sizes; every address,
/// surface or texture the kernel uses stays valid until it has run.
pub unsafe fn launch(
    function: &Function<'_>,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    params: &mut [*mut c_void],
    stream: &CudaStream,
) -> Result<()> {
    for (what, (x, y, z)) in [("launch grid", grid), ("launch block", block)] {
        if x == 0 || y == 0 || z == 0 {
            return Err(Error::InvalidValue {
                what,
                value: 0,
                reason: "every dimension must be positive",
            });
        }
    }
    let device = &function.module.device;
    device.check_stream("launch stream", stream)?;
    device.bind()?;
    // SAFETY: the context is current, the stream is of it (checked) and the function of a module
    // loaded in it (borrowed, so still loaded); the caller guarantees the parameters and what
    // the kernel touches.
    unsafe { raw::launch_kernel(function.raw, grid, block, stream.cu_stream(), params) }
}
