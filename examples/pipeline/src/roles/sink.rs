//! The sink: consumes the filtered stream, reads every frame back with Vulkan and checks
//! every pixel against the frame's number, measures the hops from the frames' metadata
//! ([`Samples`]), writes one frame as a PNG and prints the report (its last line `RESULT ...`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use gpushare_client::{v1, Client};

use crate::common::{acquire_frame, filtered, now_ns, pixel, points_name, say, Res};
use crate::gpu::{timelines_of_consumer, Gpu};
use crate::Common;

/// Latency samples in nanoseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, from: u64, to: u64) {
        self.0.push(to.saturating_sub(from));
    }

    fn summary(&mut self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        self.0.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize];
        let mean = self.0.iter().sum::<u64>() as f64 / self.0.len() as f64 / 1e6;
        format!(
            "mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(*self.0.last().unwrap_or(&0))
        )
    }
}

fn write_png(path: &Path, width: u32, height: u32, data: &[u8]) -> Res<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(data)?;
    writer.finish()?;
    Ok(())
}

pub(crate) async fn run(
    common: &Common,
    stream: &str,
    frames: u64,
    png: &Path,
    png_frame: u64,
) -> Res<()> {
    let client = Client::connect_with_session(common.dir(), "gpushare-pipeline sink").await?;
    let consumer = client
        .attach_consumer(stream, v1::DeliveryMode::Fifo, 2)
        .await?;
    let gpu_points = consumer.gpu_points();
    let exported = consumer.import_slots().await?;
    let mut gpu = Gpu::vulkan(exported.first().ok_or("a stream has slots")?)?;
    let s = gpu.add_slots(exported)?;
    let release = timelines_of_consumer(&consumer, &mut gpu).await?;
    say(&format!(
        "sink: Vulkan readback, every pixel of every frame checked; {}",
        points_name(gpu_points)
    ));
    say("attached");
    let consumer = Arc::new(consumer);
    let len = common.pixels() as usize * 4;
    let (mut count, mut bad, mut last, mut out_of_order) = (0u64, 0u64, 0u64, 0u64);
    let (mut hop1, mut hop2, mut filter_time, mut total, mut read_back) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let (mut first_at, mut last_at) = (None, Instant::now());
    let mut png_written = None;
    while let Some(frame) = acquire_frame(&consumer).await? {
        let acquired = now_ns();
        let at = Instant::now();
        first_at.get_or_insert(at);
        last_at = at;
        let meta = frame.metadata.clone().unwrap_or_default();
        let n = meta.number;
        let mut produced_at = None;
        if n != last + 1 {
            out_of_order += 1;
        }
        last = n;
        count += 1;
        // Latency: producer present → filter acquire (in user_data), filter acquire → filter
        // present, filter present → sink acquire, producer present → sink acquire.
        if let (Some(p), Some(f)) = (meta.user_data.get(0..8), meta.user_data.get(8..16)) {
            let produced = u64::from_le_bytes(p.try_into()?);
            let filter_acquired = u64::from_le_bytes(f.try_into()?);
            hop1.push(produced, filter_acquired);
            filter_time.push(filter_acquired, meta.timestamp_ns);
            total.push(produced, acquired);
            produced_at = Some(produced);
        }
        hop2.push(meta.timestamp_ns, acquired);
        let (wait, signal) = match (gpu_points, &frame.ready) {
            (true, Some(r)) => (
                vec![(r.semaphore_id.clone(), r.value)],
                vec![(release.clone(), count)],
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let data = gpu.read(s, frame.slot, &wait, &signal)?;
        let read = now_ns();
        if let Some(p) = produced_at {
            read_back.push(p, read);
        }
        let want = filtered(pixel(n)).to_le_bytes();
        let wrong = if data.len() < len {
            Some(data.len() / 4)
        } else {
            data[..len].chunks_exact(4).position(|px| px != want)
        };
        if let Some(i) = wrong {
            bad += 1;
            if bad <= 5 {
                let got = data.get(i * 4..i * 4 + 4).unwrap_or(&[]);
                say(&format!(
                    "sink: frame {n}: pixel {i} is {got:?}, expected {want:?}"
                ));
            }
        }
        if n == png_frame {
            write_png(
                png,
                common.width,
                common.height,
                &data[..len.min(data.len())],
            )?;
            png_written = Some(n);
        }
        let c = consumer.clone();
        let slot = frame.slot;
        let value = if gpu_points { count } else { 0 };
        tokio::task::spawn_blocking(move || c.release_frame(slot, value)).await??;
    }
    let secs = first_at.map_or(0.0, |f| last_at.duration_since(f).as_secs_f64());
    let fps = if count > 1 {
        (count - 1) as f64 / secs.max(1e-9)
    } else {
        0.0
    };
    say(&format!(
        "sink: {count} of {frames} frames, {bad} bad, {out_of_order} out of order, {fps:.1} fps ({}x{} RGBA8, {:.1} MB/s per hop)",
        common.width,
        common.height,
        fps * len as f64 / 1e6
    ));
    say(&format!(
        "sink: producer present -> filter acquire: {}",
        hop1.summary()
    ));
    say(&format!(
        "sink: filter acquire -> filter present:   {}",
        filter_time.summary()
    ));
    say(&format!(
        "sink: filter present -> sink acquire:     {}",
        hop2.summary()
    ));
    say(&format!(
        "sink: producer present -> sink acquire:   {}",
        total.summary()
    ));
    say(&format!(
        "sink: producer present -> sink read back: {}",
        read_back.summary()
    ));
    match png_written {
        Some(n) => say(&format!("sink: frame {n} written to {}", png.display())),
        None => say(&format!(
            "sink: frame {png_frame} never came: no PNG written"
        )),
    }
    say(&format!(
        "RESULT frames={count} expected={frames} bad={bad} out_of_order={out_of_order} checked=all-pixels points={} png={}",
        if gpu_points { "gpu" } else { "host" },
        if png_written.is_some() {
            png.display().to_string()
        } else {
            "-".into()
        }
    ));
    Arc::into_inner(consumer)
        .ok_or("consumer still shared")?
        .detach()
        .await?;
    if count != frames || bad != 0 || out_of_order != 0 || png_written.is_none() {
        return Err("the sink's checks failed".into());
    }
    Ok(())
}
