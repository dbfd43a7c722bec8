//! The GPU side of one process: the [`Gpu`] it renders, filters or reads back with (a Vulkan
//! device, or a CUDA context with the filter's kernel), the stream slots and timelines it
//! imported, and the helpers that import a stream's timelines and turn its points into waits
//! and signals.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use gpushare_client::cuda::CudaSemaphore;
use gpushare_client::cuda::InteropBuffer;
use gpushare_client::{import, v1, Client, Consumer, Exported, Producer, Timelines};
use gpushare_interop::cuda::kernels::{launch, Module};
use gpushare_interop::cuda::CudaDevice;
use gpushare_interop::vulkan::{
    Device, ImportedBuffer, Instance, SyncPoints, TimelineSemaphore, Transfer,
};

use crate::common::{Res, TIMEOUT};

/// The filter's kernel: `invert_rgb(u64 src, u64 dst, u32 count)`, thread `i < count` stores
/// `src[i] ^ 0x00ffffff` at `dst[i]` (32-bit words). Hand-written PTX, JIT-compiled by the
/// driver (no nvcc at build time).
const INVERT_PTX: &str = ".version 7.0
.target sm_70
.address_size 64

.visible .entry invert_rgb(
\t.param .u64 invert_rgb_param_0,
\t.param .u64 invert_rgb_param_1,
\t.param .u32 invert_rgb_param_2
)
{
\t.reg .pred %p<2>;
\t.reg .b32 %r<8>;
\t.reg .b64 %rd<8>;

\tld.param.u64 %rd1, [invert_rgb_param_0];
\tld.param.u64 %rd2, [invert_rgb_param_1];
\tld.param.u32 %r1, [invert_rgb_param_2];
\tmov.u32 %r2, %ctaid.x;
\tmov.u32 %r3, %ntid.x;
\tmov.u32 %r4, %tid.x;
\tmad.lo.u32 %r5, %r2, %r3, %r4;
\tsetp.ge.u32 %p1, %r5, %r1;
\t@%p1 bra invert_rgb_done;
\tcvta.to.global.u64 %rd3, %rd1;
\tcvta.to.global.u64 %rd4, %rd2;
\tmul.wide.u32 %rd5, %r5, 4;
\tadd.s64 %rd6, %rd3, %rd5;
\tadd.s64 %rd7, %rd4, %rd5;
\tld.global.u32 %r6, [%rd6];
\txor.b32 %r7, %r6, 16777215;
\tst.global.u32 [%rd7], %r7;
invert_rgb_done:
\tret;
}
";

/// Threads per block of the kernel.
const BLOCK: u32 = 256;

pub(crate) use gpushare_client::Points;

/// One process's GPU: its slots (per stream, in slot order) and the timelines it imported.
pub(crate) enum Gpu {
    Vulkan {
        device: Arc<Device>,
        transfer: Transfer,
        slots: Vec<Vec<ImportedBuffer>>,
        timelines: Timelines<TimelineSemaphore>,
    },
    Cuda {
        device: Arc<CudaDevice>,
        module: Module,
        slots: Vec<Vec<InteropBuffer>>,
        timelines: Timelines<CudaSemaphore>,
    },
}

impl Gpu {
    /// A Vulkan device of the GPU that exported `first`.
    pub(crate) fn vulkan(first: &Exported) -> Res<Gpu> {
        let instance = Instance::new("gpushare-pipeline")?;
        let device = import::vulkan_device_for(&instance, first)?;
        Ok(Gpu::Vulkan {
            transfer: Transfer::new(&device)?,
            device,
            slots: Vec::new(),
            timelines: Timelines::new(),
        })
    }

    /// The CUDA device of the GPU that exported `first`, with the filter's kernel loaded.
    pub(crate) fn cuda(first: &Exported) -> Res<Gpu> {
        if !gpushare_interop::cuda::is_present() {
            return Err("no CUDA driver (libcuda) in this process".into());
        }
        let device = gpushare_client::cuda::cuda_device_for(first)?;
        let ptx = CString::new(INVERT_PTX)?;
        let module = Module::load(&device, &ptx)?;
        Ok(Gpu::Cuda {
            device,
            module,
            slots: Vec::new(),
            timelines: Timelines::new(),
        })
    }

    pub(crate) fn is_cuda(&self) -> bool {
        matches!(self, Gpu::Cuda { .. })
    }

    /// Imports one stream's slots; returns the stream's index here.
    pub(crate) fn add_slots(&mut self, exported: Vec<Exported>) -> Res<usize> {
        match self {
            Gpu::Vulkan { device, slots, .. } => {
                let mut v = Vec::new();
                for e in exported {
                    v.push(import::import_buffer_vulkan(device, e)?);
                }
                slots.push(v);
                Ok(slots.len() - 1)
            }
            Gpu::Cuda { device, slots, .. } => {
                let mut v = Vec::new();
                for e in exported {
                    v.push(InteropBuffer::import(device, e)?);
                }
                slots.push(v);
                Ok(slots.len() - 1)
            }
        }
    }

    /// Imports timeline `id` from `exported`.
    fn add_timeline(&mut self, id: &str, exported: Exported) -> Res<()> {
        match self {
            Gpu::Vulkan {
                device, timelines, ..
            } => timelines.insert(id, import::import_semaphore_vulkan(device, exported)?),
            Gpu::Cuda {
                device, timelines, ..
            } => timelines.insert(
                id,
                gpushare_client::cuda::import_semaphore_cuda(device, exported)?,
            ),
        }
        Ok(())
    }

    /// Vulkan: fills slot `slot` of stream `s` with `value` after `wait`, signalling `signal`;
    /// returns when the fill is done.
    pub(crate) fn fill(
        &mut self,
        s: usize,
        slot: u32,
        value: u32,
        wait: &Points,
        signal: &Points,
    ) -> Res<()> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let buffer = &slots[s][slot as usize];
                let size = gpushare_interop::vulkan::DeviceBuffer::size(buffer);
                let sync = vk_sync(timelines, wait, signal)?;
                transfer.fill(buffer, 0, size, value, &sync)?;
                Ok(())
            }
            Gpu::Cuda { .. } => Err("the producer renders with Vulkan".into()),
        }
    }

    /// Vulkan: reads slot `slot` of stream `s` after `wait`, signalling `signal`.
    pub(crate) fn read(
        &mut self,
        s: usize,
        slot: u32,
        wait: &Points,
        signal: &Points,
    ) -> Res<Vec<u8>> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let buffer = &slots[s][slot as usize];
                let size = gpushare_interop::vulkan::DeviceBuffer::size(buffer);
                let sync = vk_sync(timelines, wait, signal)?;
                Ok(transfer.download(buffer, 0, size, &sync)?)
            }
            Gpu::Cuda { .. } => Err("reading back is done with Vulkan".into()),
        }
    }

    /// Vulkan: writes `data` into slot `slot` of stream `s` after `wait`, signalling `signal`.
    pub(crate) fn write(
        &mut self,
        s: usize,
        slot: u32,
        data: &[u8],
        wait: &Points,
        signal: &Points,
    ) -> Res<()> {
        match self {
            Gpu::Vulkan {
                transfer,
                slots,
                timelines,
                ..
            } => {
                let sync = vk_sync(timelines, wait, signal)?;
                transfer.upload(&slots[s][slot as usize], 0, data, &sync)?;
                Ok(())
            }
            Gpu::Cuda { .. } => Err("writing from the host is done with Vulkan".into()),
        }
    }

    /// CUDA: enqueues, on this process's stream, the waits for `wait`, the kernel from slot
    /// `src` of stream `si` into slot `dst` of stream `so` (`count` pixels), and the signals of
    /// `signal`. Returns once enqueued (GPU points: nothing on the host waits for it).
    pub(crate) fn invert(
        &mut self,
        (si, src): (usize, u32),
        (so, dst): (usize, u32),
        count: u32,
        wait: &Points,
        signal: &Points,
    ) -> Res<()> {
        let Gpu::Cuda {
            device,
            module,
            slots,
            timelines,
        } = self
        else {
            return Err("the kernel runs with CUDA".into());
        };
        for (t, v) in timelines.resolve(wait)? {
            t.wait(v, device.stream())?;
        }
        let function = module.function(c"invert_rgb")?;
        let (a, b) = (&slots[si][src as usize], &slots[so][dst as usize]);
        if u64::from(count) * 4 > a.size().min(b.size()) {
            return Err(format!("{count} pixels do not fit the slots").into());
        }
        let (mut p_src, mut p_dst, mut p_count) = (a.device_ptr(), b.device_ptr(), count);
        let mut params = [
            (&raw mut p_src).cast::<c_void>(),
            (&raw mut p_dst).cast::<c_void>(),
            (&raw mut p_count).cast::<c_void>(),
        ];
        let grid = count.div_ceil(BLOCK).max(1);
        // SAFETY: `params` points at a u64, a u64 and a u32, the kernel's parameters in order
        // (INVERT_PTX); the driver copies their values during the call. The kernel touches
        // `count` words of each slot, which fit both (checked above); the imports live until
        // the stream is synchronized (`finish`, before they drop).
        unsafe {
            launch(
                &function,
                (grid, 1, 1),
                (BLOCK, 1, 1),
                &mut params,
                device.stream(),
            )
        }?;
        for (t, v) in timelines.resolve(signal)? {
            t.signal(v, device.stream())?;
        }
        Ok(())
    }

    /// Waits for everything this process enqueued.
    pub(crate) fn finish(&self) -> Res<()> {
        if let Gpu::Cuda { device, .. } = self {
            device.synchronize_stream()?;
        }
        Ok(())
    }
}

fn vk_sync<'a>(
    timelines: &'a Timelines<TimelineSemaphore>,
    wait: &Points,
    signal: &Points,
) -> Res<SyncPoints<'a>> {
    Ok(SyncPoints {
        wait: timelines.resolve(wait)?,
        signal: timelines.resolve(signal)?,
        timeout: Some(TIMEOUT),
    })
}

/// Imports the timelines of `points` not met yet (a consumer's release timeline, exported
/// through the stream); a timeline gone already was poisoned (its points reached) and is left
/// out.
pub(crate) async fn meet(
    client: &Client,
    gpu: &mut Gpu,
    points: &[v1::SemaphorePoint],
) -> Res<Points> {
    Ok(match gpu {
        Gpu::Vulkan {
            device, timelines, ..
        } => {
            timelines
                .meet(client, points, |e| {
                    import::import_semaphore_vulkan(device, e)
                })
                .await?
        }
        Gpu::Cuda {
            device, timelines, ..
        } => {
            timelines
                .meet(client, points, |e| {
                    gpushare_client::cuda::import_semaphore_cuda(device, e)
                })
                .await?
        }
    })
}

/// The stream's ready timeline, imported (GPU points); its id.
pub(crate) async fn ready_of_producer(p: &Producer, gpu: &mut Gpu) -> Res<String> {
    let id = p.attachment().ready.clone().unwrap_or_default().resource_id;
    if p.gpu_points() {
        let e = p.import_ready().await?.ok_or("no ready timeline ticket")?;
        gpu.add_timeline(&id, e)?;
    }
    Ok(id)
}

/// The stream's ready timeline and the consumer's release timeline, imported (GPU points);
/// the release timeline's id.
pub(crate) async fn timelines_of_consumer(c: &Consumer, gpu: &mut Gpu) -> Res<String> {
    let ready = c.attachment().ready.clone().unwrap_or_default().resource_id;
    let release = c
        .attachment()
        .release
        .clone()
        .unwrap_or_default()
        .resource_id;
    if c.gpu_points() {
        let e = c.import_ready().await?.ok_or("no ready timeline ticket")?;
        gpu.add_timeline(&ready, e)?;
        let e = c
            .import_release()
            .await?
            .ok_or("no release timeline ticket")?;
        gpu.add_timeline(&release, e)?;
    }
    Ok(release)
}
