//! Stream memory operations (`cuStreamWriteValue64` / `cuStreamWaitValue64`): a stream writes a
//! 64-bit word, another stream waits until a word reaches a value. On shared memory this is the
//! fast CUDA-to-CUDA hand-off between processes (~3 µs per hop on the H100, against ~136 µs
//! through external semaphores; see GPU.md).
//!
//! Thin wrappers, a support check ([`support`]) and [`WordMax`], the one kernel that raises a
//! word to at least a value atomically (what the daemon writes with, so that its writes never
//! move a word back past a client's). The word's memory, its lifetime and its protocol belong
//! to the caller. The word must be in imported memory or in a [`DeviceAllocation`](super::DeviceAllocation)
//! (`cuMemAlloc`): the driver rejects stream-ordered pool memory, which is what cudarc's
//! `alloc_zeros` returns on devices with memory pools (`CUDA_ERROR_INVALID_VALUE`, seen on the
//! H100).

use std::ffi::{c_void, CStr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaStream};

use super::device::{bind, CudaDevice};
use super::error::{check, Error, Result};
use super::external_memory::ExternalMemory;
use super::module::{launch, Module};
use super::uses::Uses;

/// Whether a device can run the 64-bit stream memory operations of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// `CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS` is set: 64-bit writes and waits
    /// (GEQ) work.
    Yes,
    /// It is not; the reason names the attribute and its value.
    No(String),
}

/// Reads the device's memory-operation attributes (`CAN_USE_64_BIT_STREAM_MEM_OPS`, and
/// `CAN_USE_STREAM_WAIT_VALUE_NOR` for the record) and says whether the 64-bit operations work.
pub fn support(device: &CudaDevice) -> Result<Support> {
    let ops64 = device
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS)?;
    let nor = device
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR)?;
    Ok(judge(ops64, nor))
}

/// The verdict on the attributes' values.
fn judge(ops64: i32, nor: i32) -> Support {
    if ops64 == 1 {
        Support::Yes
    } else {
        Support::No(format!(
            "the device reports CAN_USE_64_BIT_STREAM_MEM_OPS = {ops64} \
             (CAN_USE_STREAM_WAIT_VALUE_NOR = {nor})"
        ))
    }
}

/// The kernel: one thread raises the word at `p` to at least `v` (`atom.global.max.u64`), after
/// a system-wide fence (whatever the stream did before is visible first).
const WORD_MAX_PTX: &CStr = c".version 7.0
.target sm_70
.address_size 64

.visible .entry gpushare_word_max(
\t.param .u64 gpushare_word_max_param_0,
\t.param .u64 gpushare_word_max_param_1
)
{
\t.reg .b64 %rd<5>;

\tld.param.u64 %rd1, [gpushare_word_max_param_0];
\tld.param.u64 %rd2, [gpushare_word_max_param_1];
\tcvta.to.global.u64 %rd3, %rd1;
\tmembar.sys;
\tatom.global.max.u64 %rd4, [%rd3], %rd2;
\tmembar.sys;
\tret;
}
";

/// The name of [`WORD_MAX_PTX`]'s kernel.
const WORD_MAX_NAME: &CStr = c"gpushare_word_max";

/// The word-raising kernel, loaded on one device: [`WordMax::raise`] enqueues "word = max(word,
/// value)" on a stream. A plain 64-bit write (`cuStreamWriteValue64`) could move a word back
/// below a value another process wrote meanwhile; this cannot.
#[derive(Debug)]
pub struct WordMax {
    module: Module,
}

impl WordMax {
    /// Loads the kernel on `device` (a JIT compile of a few lines of PTX).
    pub fn load(device: &Arc<CudaDevice>) -> Result<WordMax> {
        let module = Module::load(device, WORD_MAX_PTX)?;
        module.function(WORD_MAX_NAME)?;
        Ok(WordMax { module })
    }

    /// The device it is loaded on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        self.module.device()
    }

    /// Enqueues on `stream` (of this device's context) the raising of the 64-bit word at `ptr`
    /// to at least `value`, ordered after the stream's earlier work.
    ///
    /// # Safety
    ///
    /// As [`write_value64`]; the module must outlive the launch's execution (the caller keeps
    /// the [`WordMax`] alive until the stream passed it).
    pub unsafe fn raise(&self, stream: &CudaStream, ptr: u64, value: u64) -> Result<()> {
        check_word(ptr)?;
        let function = self.module.function(WORD_MAX_NAME)?;
        let mut p = ptr;
        let mut v = value;
        let mut params: [*mut c_void; 2] =
            [(&raw mut p).cast::<c_void>(), (&raw mut v).cast::<c_void>()];
        // SAFETY: two parameters, u64 and u64, as the kernel declares; `cuLaunchKernel` copies
        // their values before returning; the caller guarantees the word and the module.
        unsafe { launch(&function, (1, 1, 1), (1, 1, 1), &mut params, stream) }
    }
}

/// [`Error::InvalidValue`] unless `ptr` is a non-null, 8-byte aligned device address.
fn check_word(ptr: u64) -> Result<()> {
    if ptr == 0 || ptr % 8 != 0 {
        return Err(Error::InvalidValue {
            what: "memory operation address",
            value: ptr,
            reason: "must be a non-null, 8-byte aligned device address",
        });
    }
    Ok(())
}

/// Enqueues on `stream` a write of `value` to the 64-bit word at `ptr`, ordered after the
/// stream's earlier work (with a memory barrier: earlier writes are visible first).
///
/// # Safety
///
/// `ptr` must address 8 bytes of device memory (allocated, mapped from an import, or registered)
/// accessible to `stream`'s context and valid until the write has executed.
pub unsafe fn write_value64(stream: &CudaStream, ptr: u64, value: u64) -> Result<()> {
    check_word(ptr)?;
    bind(stream.context())?;
    // SAFETY: the context is current, the stream live (borrowed); the caller guarantees the
    // address; the flags are the documented default.
    check("cuStreamWriteValue64", unsafe {
        sys::cuStreamWriteValue64_v2(
            stream.cu_stream(),
            ptr,
            value,
            sys::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
        )
    })
}

/// Enqueues on `stream` a wait until the 64-bit word at `ptr` is at least `value` (unsigned,
/// `CU_STREAM_WAIT_VALUE_GEQ`): later work on the stream starts only then.
///
/// # Safety
///
/// As [`write_value64`], until the wait has passed. A wait for a value nobody writes blocks the
/// stream forever.
pub unsafe fn wait_value64_geq(stream: &CudaStream, ptr: u64, value: u64) -> Result<()> {
    check_word(ptr)?;
    bind(stream.context())?;
    // SAFETY: as in `write_value64`.
    check("cuStreamWaitValue64", unsafe {
        sys::cuStreamWaitValue64_v2(
            stream.cu_stream(),
            ptr,
            value,
            sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
        )
    })
}

/// A 64-bit word of memory another process shares (a gpushare semaphore's word buffer),
/// imported into this process's CUDA context: stream-ordered writes and GEQ waits on it. The
/// streams they were enqueued on are kept; dropping the word waits (at most 2 s) until each
/// has passed what it had enqueued then, and only then releases the import (else leaks it,
/// never freeing it under the GPU). Nothing is recorded per operation: a write or a wait costs
/// its one driver call, as a raw memory operation does.
pub struct SharedWord {
    device: Arc<CudaDevice>,
    /// `None` once leaked in `Drop`.
    memory: Option<Arc<ExternalMemory>>,
    ptr: u64,
    /// The streams operations were enqueued on (each once).
    streams: Mutex<Vec<Arc<CudaStream>>>,
}

impl std::fmt::Debug for SharedWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWord")
            .field("ptr", &self.ptr)
            .field("device", &self.device.info().ordinal)
            .finish()
    }
}

impl SharedWord {
    /// Imports the word's buffer, exported as `OPAQUE_FD` with `allocation_size` bytes
    /// (`dedicated` as exported); the word is its first 8 bytes. The descriptor passes to the
    /// driver only on success.
    pub fn import(
        device: &Arc<CudaDevice>,
        fd: OwnedFd,
        allocation_size: u64,
        dedicated: bool,
    ) -> Result<SharedWord> {
        let memory = ExternalMemory::import_opaque_fd(device, fd, allocation_size, dedicated)?;
        let ptr = memory.device_ptr()?;
        check_word(ptr)?;
        Ok(SharedWord {
            device: Arc::clone(device),
            memory: Some(memory),
            ptr,
            streams: Mutex::new(Vec::new()),
        })
    }

    /// The word's device address (for kernels of the caller's own: their streams are not
    /// waited for when the word drops).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Keeps `stream` among the streams to wait for at drop.
    fn used(&self, stream: &Arc<CudaStream>) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !streams.iter().any(|s| s.cu_stream() == stream.cu_stream()) {
            streams.push(Arc::clone(stream));
        }
    }

    /// Enqueues on `stream` a write of `value` (see [`write_value64`]).
    pub fn write(&self, stream: &Arc<CudaStream>, value: u64) -> Result<()> {
        self.device.check_stream("word write stream", stream)?;
        self.used(stream);
        // SAFETY: `ptr` addresses the import's first 8 bytes, which stay mapped until every
        // stream used has passed its work (`Drop`); the stream is of this context (checked).
        unsafe { write_value64(stream, self.ptr, value) }
    }

    /// Enqueues on `stream` a wait until the word is at least `value` (see
    /// [`wait_value64_geq`]).
    pub fn wait_geq(&self, stream: &Arc<CudaStream>, value: u64) -> Result<()> {
        self.device.check_stream("word wait stream", stream)?;
        self.used(stream);
        // SAFETY: as in `write`.
        unsafe { wait_value64_geq(stream, self.ptr, value) }
    }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        let streams = std::mem::take(self.streams.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut uses = Uses::new(&self.device);
        let mut unrecorded = 0;
        for s in &streams {
            // An event after what the stream has now: the word's operations are among it.
            let recorded = uses.event().and_then(|e| uses.track(e, s));
            if recorded.is_err() {
                unrecorded += 1;
            }
        }
        let pending = uses.settle() + unrecorded;
        if pending > 0 {
            tracing::error!(
                pending,
                "leaking a shared word's import: streams that used it have not passed their work"
            );
            std::mem::forget(self.memory.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_needs_the_64_bit_attribute() {
        assert_eq!(judge(1, 0), Support::Yes);
        match judge(0, 1) {
            Support::No(why) => assert!(why.contains("CAN_USE_64_BIT_STREAM_MEM_OPS = 0"), "{why}"),
            Support::Yes => panic!("no 64-bit memops judged supported"),
        }
    }

    #[test]
    fn the_word_kernel_is_well_formed_ptx_text() {
        let text = WORD_MAX_PTX.to_str().unwrap();
        assert!(text.starts_with(".version 7.0\n.target sm_70\n"));
        assert!(text.contains(".entry gpushare_word_max("));
        assert!(text.contains("atom.global.max.u64"));
    }

    #[test]
    fn words_must_be_aligned_and_non_null() {
        assert!(check_word(0).is_err());
        assert!(check_word(4).is_err());
        assert!(check_word(0x7f00_0000_0008).is_ok());
    }
}
