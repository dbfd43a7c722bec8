//! The filter: consumes the first stream and produces the second, every pixel's colour
//! inverted ([`filtered`]): with CUDA, a kernel on the imported slots; without, a Vulkan
//! download, the transform on the host and a Vulkan upload. Each output frame carries the
//! input's present time and its own acquire time in `user_data`, for the sink's hops.

use std::sync::Arc;

use gpushare_client::{v1, Client, FrameMetadata};

use crate::common::{acquire_frame, acquire_slot, filtered, now_ns, points_name, say, Res};
use crate::gpu::{meet, ready_of_producer, timelines_of_consumer, Gpu};
use crate::{Common, FilterApi};

pub(crate) async fn run(common: &Common, input: &str, output: &str, api: FilterApi) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline filter").await?;
    let out = client.attach_producer(output).await?;
    let inp = client
        .attach_consumer(input, v1::DeliveryMode::Fifo, 2)
        .await?;
    let gpu_points = inp.gpu_points();
    let in_slots = inp.import_slots().await?;
    let out_slots = out.import_slots().await?;
    let first = in_slots.first().ok_or("a stream has slots")?;
    let mut gpu = match api {
        FilterApi::Vulkan => Gpu::vulkan(first)?,
        FilterApi::Cuda => Gpu::cuda(first)?,
        FilterApi::Auto => match Gpu::cuda(first) {
            Ok(g) => g,
            Err(e) => {
                say(&format!(
                    "filter: CUDA unavailable ({e}): falling back to a Vulkan/host-side filter"
                ));
                Gpu::vulkan(first)?
            }
        },
    };
    let si = gpu.add_slots(in_slots)?;
    let so = gpu.add_slots(out_slots)?;
    let release = timelines_of_consumer(&inp, &mut gpu).await?;
    let ready = ready_of_producer(&out, &mut gpu).await?;
    say(&format!(
        "filter: {}; {}",
        if gpu.is_cuda() {
            "CUDA kernel invert_rgb on the imported slots"
        } else {
            "Vulkan download, host-side invert, Vulkan upload (no CUDA)"
        },
        points_name(gpu_points)
    ));
    say("attached");
    let (inp, out) = (Arc::new(inp), Arc::new(out));
    let count_px = u32::try_from(common.pixels())?;
    let mut count = 0u64;
    while let Some(frame) = acquire_frame(&inp).await? {
        let acquired = now_ns();
        let meta = frame.metadata.clone().unwrap_or_default();
        let grant = acquire_slot(&out).await?;
        count += 1;
        // GPU points: wait for the frame's ready point and the output slot's release points,
        // signal this consumer's release point `count` and the output's ready point `count`.
        let (wait_in, wait_out) = if gpu_points {
            let r = frame
                .ready
                .as_ref()
                .ok_or("a frame without its ready point")?;
            (
                vec![(r.semaphore_id.clone(), r.value)],
                meet(&client, &mut gpu, &grant.wait).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let (sig_in, sig_out) = if gpu_points {
            (vec![(release.clone(), count)], vec![(ready.clone(), count)])
        } else {
            (Vec::new(), Vec::new())
        };
        if gpu.is_cuda() {
            let mut wait = wait_in;
            wait.extend(wait_out);
            let mut signal = sig_in;
            signal.extend(sig_out);
            gpu.invert((si, frame.slot), (so, grant.slot), count_px, &wait, &signal)?;
            if !gpu_points {
                // HOST points: the daemon signals at the calls, so the kernel must be done.
                gpu.finish()?;
            }
        } else {
            let mut data = gpu.read(si, frame.slot, &wait_in, &sig_in)?;
            for px in data.chunks_exact_mut(4) {
                let v = filtered(u32::from_le_bytes([px[0], px[1], px[2], px[3]]));
                px.copy_from_slice(&v.to_le_bytes());
            }
            gpu.write(so, grant.slot, &data, &wait_out, &sig_out)?;
        }
        let value = if gpu_points { count } else { 0 };
        let c = inp.clone();
        let slot = frame.slot;
        tokio::task::spawn_blocking(move || c.release_frame(slot, value)).await??;
        let mut user_data = meta.timestamp_ns.to_le_bytes().to_vec();
        user_data.extend_from_slice(&acquired.to_le_bytes());
        let metadata = FrameMetadata {
            number: meta.number,
            timestamp_ns: now_ns(),
            user_data,
        };
        let p = out.clone();
        tokio::task::spawn_blocking(move || p.present(grant.slot, value, metadata)).await??;
    }
    gpu.finish()?;
    say(&format!("filter: {count} frames filtered"));
    Arc::into_inner(out)
        .ok_or("output still shared")?
        .detach()
        .await?;
    Arc::into_inner(inp)
        .ok_or("input still shared")?
        .detach()
        .await?;
    Ok(())
}
