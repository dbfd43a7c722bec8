//! The producer: imports the first stream's slots into its own Vulkan device and fills
//! every pixel of frame `n` with [`pixel(n)`](crate::common::pixel) (`vkCmdFillBuffer`),
//! presenting each frame with its number and timestamp.

use std::sync::Arc;
use std::time::Instant;

use gpushare_client::{Client, FrameMetadata};

use crate::common::{acquire_slot, now_ns, pixel, points_name, say, Res};
use crate::gpu::{meet, ready_of_producer, Gpu};
use crate::Common;

pub(crate) async fn run(common: &Common, stream: &str, frames: u64) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline producer").await?;
    let producer = client.attach_producer(stream).await?;
    let gpu_points = producer.gpu_points();
    let exported = producer.import_slots().await?;
    let mut gpu = Gpu::vulkan(exported.first().ok_or("a stream has slots")?)?;
    let s = gpu.add_slots(exported)?;
    let ready = ready_of_producer(&producer, &mut gpu).await?;
    say(&format!(
        "producer: Vulkan fill of {}x{} RGBA8 frames; {}",
        common.width,
        common.height,
        points_name(gpu_points)
    ));
    say("attached");
    let producer = Arc::new(producer);
    let start = Instant::now();
    for n in 1..=frames {
        let grant = acquire_slot(&producer).await?;
        // GPU points: the fill waits for the slot's release points and signals ready point
        // `n` on the GPU; HOST points: the daemon signals at Present.
        let (wait, signal) = if gpu_points {
            (
                meet(&client, &mut gpu, &grant.wait).await?,
                vec![(ready.clone(), n)],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        gpu.fill(s, grant.slot, pixel(n), &wait, &signal)?;
        let p = producer.clone();
        let metadata = FrameMetadata {
            number: n,
            timestamp_ns: now_ns(),
            user_data: Vec::new(),
        };
        let value = if gpu_points { n } else { 0 };
        tokio::task::spawn_blocking(move || p.present(grant.slot, value, metadata)).await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let info = client.describe_stream(stream).await?;
    say(&format!(
        "producer: {frames} frames in {secs:.2} s ({:.1} fps), {} stalls on a full pool",
        frames as f64 / secs.max(1e-9),
        info.producer_stalls
    ));
    Arc::into_inner(producer)
        .ok_or("producer still shared")?
        .detach()
        .await?;
    Ok(())
}
