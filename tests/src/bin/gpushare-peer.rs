//! `gpushare-peer`: the "other process" of the integration tests and the GPU suite.
//!
//! ```text
//! gpushare-peer <runtime-dir> import-read  <ticket-hex> <offset> <length>   # prints the bytes as hex
//! gpushare-peer <runtime-dir> import-write <ticket-hex> <offset> <hex>      # writes through its import
//! gpushare-peer <runtime-dir> image-read   <ticket-hex> <level>            # Vulkan image import; prints the level (all layers) as hex
//! gpushare-peer <runtime-dir> image-write  <ticket-hex> <level> <hex>      # Vulkan image import; writes the level (all layers)
//! gpushare-peer <runtime-dir> cuda-image-fill   <sem-ticket> <value> <seed> <image-ticket>...  # CUDA surfaces: every level of every image, then a stream-ordered signal
//! gpushare-peer <runtime-dir> cuda-image-sample <sem-ticket> <value> <image-ticket>...         # stream-ordered wait, then tex2DLod of every level; prints one hex line of float4s per level
//! gpushare-peer <runtime-dir> hold <buffer-size> [pin|word]                # session + buffer + semaphore (pinned, or with a memop word), then sleeps
//! gpushare-peer <runtime-dir> cuda-wait <ticket-hex> <value>                # GPU-side wait on an imported semaphore
//! gpushare-peer <runtime-dir> sem-signal <ticket-hex> <value> [<delay-ms>]   # imports a semaphore, host-signals it
//! gpushare-peer <runtime-dir> cuda-read <ticket-hex> <offset> <length>      # CUDA import by UUID; prints the device and the bytes
//! gpushare-peer <runtime-dir> open-read <target> <offset> <length>          # Open (id:ID | token:HEX | name:UID:NAME), export, import, read
//! gpushare-peer <runtime-dir> try-grant <id> <uid>                          # Grant as this process; prints the outcome
//! gpushare-peer <runtime-dir> admin-release <id>                            # lists (prints the count), then releases <id>
//! gpushare-peer <runtime-dir> storm <seed>                                   # a random mix of calls, forever (killed by the crash storm)
//! ```
//!
//! `open-read`, `try-grant` and `admin-release` print `error <gRPC code> <message>` and exit 1
//! when the daemon refuses, so that tests can check the code another uid gets.
//!
//! `import-*` redeem the ticket on fd.sock, open the Vulkan device named by the UUID in the
//! descriptor's metadata (a device of this process, not the daemon's), import the memory, and
//! move bytes with this process's own transfer queue: what it reads is what the daemon's
//! process wrote into the same memory, with no copy between processes. `hold` prints
//! `<buffer-id> <semaphore-id>` and sleeps until killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::ExitCode;

use gpushare_client::{import, Client, CreateOptions};
use gpushare_interop::vulkan::{DeviceImage, Instance, SyncPoints, Transfer};

fn usage() -> ExitCode {
    eprintln!("usage: gpushare-peer <runtime-dir> (import-read TICKET OFFSET LEN | import-write TICKET OFFSET HEX | hold SIZE)");
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, cmd, rest @ ..] = args.as_slice() else {
        return usage();
    };
    let result = match (cmd.as_str(), rest) {
        ("import-read", [ticket, offset, len]) => {
            import_rw(
                dir,
                ticket,
                offset.parse().unwrap(),
                Access::Read(len.parse().unwrap()),
            )
            .await
        }
        ("import-write", [ticket, offset, data]) => {
            import_rw(
                dir,
                ticket,
                offset.parse().unwrap(),
                Access::Write(hex::decode(data).unwrap()),
            )
            .await
        }
        ("image-read", [ticket, level]) => {
            image_rw(dir, ticket, level.parse().unwrap(), None).await
        }
        ("image-write", [ticket, level, data]) => {
            image_rw(
                dir,
                ticket,
                level.parse().unwrap(),
                Some(hex::decode(data).unwrap()),
            )
            .await
        }
        ("cuda-image-fill", [sem, value, seed, images @ ..]) => {
            cuda_image_fill(
                dir,
                sem,
                value.parse().unwrap(),
                seed.parse().unwrap(),
                images,
            )
            .await
        }
        ("cuda-image-sample", [sem, value, images @ ..]) => {
            cuda_image_sample(dir, sem, value.parse().unwrap(), images).await
        }
        ("hold", [size]) => hold(dir, size.parse().unwrap(), false, false).await,
        ("hold", [size, pin]) if pin == "pin" => {
            hold(dir, size.parse().unwrap(), true, false).await
        }
        ("hold", [size, word]) if word == "word" => {
            hold(dir, size.parse().unwrap(), false, true).await
        }
        ("cuda-wait", [ticket, value]) => cuda_wait(dir, ticket, value.parse().unwrap()).await,
        ("open-read", [target, offset, len]) => {
            open_read(dir, target, offset.parse().unwrap(), len.parse().unwrap()).await
        }
        ("try-grant", [id, uid]) => try_grant(dir, id, uid.parse().unwrap()).await,
        ("admin-release", [id]) => admin_release(dir, id).await,
        ("storm", [seed]) => storm(dir, seed.parse().unwrap()).await,
        ("cuda-read", [ticket, offset, len]) => {
            cuda_read(dir, ticket, offset.parse().unwrap(), len.parse().unwrap()).await
        }
        ("sem-signal", [ticket, value]) => sem_signal(dir, ticket, value.parse().unwrap(), 0).await,
        ("sem-signal", [ticket, value, delay]) => {
            sem_signal(dir, ticket, value.parse().unwrap(), delay.parse().unwrap()).await
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Access {
    Read(u64),
    Write(Vec<u8>),
}

async fn import_rw(
    dir: &str,
    ticket: &str,
    offset: u64,
    access: Access,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(dir).await?;
    let exported = client.redeem(&hex::decode(ticket)?).await?;
    let instance = Instance::new("gpushare-peer")?;
    let device = import::vulkan_device_for(&instance, &exported)?;
    let buffer = import::import_buffer_vulkan(&device, exported)?;
    let mut transfer = Transfer::new(&device)?;
    match access {
        Access::Read(len) => {
            let bytes = transfer.download(&buffer, offset, len, &SyncPoints::default())?;
            println!("{}", hex::encode(bytes));
        }
        Access::Write(data) => transfer.upload(&buffer, offset, &data, &SyncPoints::default())?,
    }
    Ok(())
}

/// Imports an image into this process's Vulkan device and reads (`data` is `None`; printed as
/// hex) or writes a whole level, every layer, with this process's own transfer queue.
async fn image_rw(
    dir: &str,
    ticket: &str,
    level: u32,
    data: Option<Vec<u8>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(dir).await?;
    let exported = client.redeem(&hex::decode(ticket)?).await?;
    let instance = Instance::new("gpushare-peer")?;
    let device = import::vulkan_device_for(&instance, &exported)?;
    let image = import::import_image_vulkan(&device, exported)?;
    let region = gpushare_client::ImageRegion::level(image.desc(), level);
    let mut transfer = Transfer::new(&device)?;
    match data {
        None => {
            let bytes = transfer.download_image(&image, &region, &SyncPoints::default())?;
            println!("{}", hex::encode(bytes));
        }
        Some(bytes) => transfer.upload_image(&image, &region, &bytes, &SyncPoints::default())?,
    }
    Ok(())
}

async fn hold(
    dir: &str,
    size: u64,
    pin: bool,
    word: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(dir, "gpushare-peer hold").await?;
    let opts = CreateOptions {
        pin,
        ..Default::default()
    };
    let buffer = client.create_buffer(size, &opts).await?;
    let sem_opts = CreateOptions {
        word,
        signal_path: gpushare_proto::v1::SignalPath::Word,
        ..opts
    };
    let sem = client.create_semaphore(0, &sem_opts).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{} {}", buffer.id(), sem.id())?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Imports a timeline semaphore into this process's Vulkan device and signals it from the host
/// (`vkSignalSemaphore` on the import): the daemon sees the new value only through the shared
/// semaphore, never through a call. Prints the nanoseconds since the epoch at which it signaled.
async fn sem_signal(
    dir: &str,
    ticket: &str,
    value: u64,
    delay_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(dir).await?;
    let exported = client.redeem(&hex::decode(ticket)?).await?;
    let instance = Instance::new("gpushare-peer")?;
    let device = import::vulkan_device_for(&instance, &exported)?;
    let sem = import::import_semaphore_vulkan(&device, exported)?;
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    sem.signal(value)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    println!("{}", now.as_nanos());
    Ok(())
}

/// Imports a timeline semaphore into this process's CUDA context (the GPU named by the
/// descriptor's UUID), enqueues a GPU-side wait for `value` on its stream, prints `waiting`, and
/// blocks in `cuStreamSynchronize` until the wait is released; then prints `released <ns>` (the
/// CLOCK_MONOTONIC time at release) and the semaphore's value as seen from the host.
async fn cuda_wait(dir: &str, ticket: &str, value: u64) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::cuda::{cuda_device_for, import_semaphore_cuda};
    let client = Client::connect(dir).await?;
    let exported = client.redeem(&hex::decode(ticket)?).await?;
    let device = cuda_device_for(&exported)?;
    let sem = import_semaphore_cuda(&device, exported)?;
    sem.wait(value, device.stream())?;
    println!("waiting");
    std::io::stdout().flush()?;
    device.synchronize_stream()?;
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    println!(
        "released {}",
        now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
    );
    Ok(())
}

/// Imports a buffer into this process's CUDA context on the GPU the descriptor's UUID names
/// (whatever this process's `CUDA_VISIBLE_DEVICES`), copies `len` bytes at `offset` to the
/// host, and prints `<this process's CUDA ordinal> <uuid-hex>` then the bytes as hex.
async fn cuda_read(
    dir: &str,
    ticket: &str,
    offset: u64,
    len: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::cuda::{cuda_device_for, InteropBuffer};
    use gpushare_interop::cuda;
    let client = Client::connect(dir).await?;
    let exported = client.redeem(&hex::decode(ticket)?).await?;
    let device = cuda_device_for(&exported)?;
    let buffer = InteropBuffer::import(&device, exported)?;
    if offset
        .checked_add(len)
        .is_none_or(|end| end > buffer.size())
    {
        return Err("range outside the buffer".into());
    }
    let mut out = vec![0u8; len as usize];
    // SAFETY: the range is inside the imported buffer (checked above), which lives until after
    // the synchronize; `out` is not touched before it.
    unsafe { cuda::copy_dtoh(device.stream(), buffer.device_ptr() + offset, &mut out) }?;
    device.synchronize_stream()?;
    println!(
        "{} {}",
        device.info().ordinal,
        hex::encode(device.info().uuid)
    );
    println!("{}", hex::encode(out));
    Ok(())
}

/// Imports every image into this process's CUDA context as a mipmapped array and fills every
/// level of each through a surface object with the fill kernel (`seed + level` for level
/// `level`; see `kernels::expected_texel_bytes`), then signals the imported semaphore to
/// `value` in stream order, after the kernels, and waits for the stream.
async fn cuda_image_fill(
    dir: &str,
    sem_ticket: &str,
    value: u64,
    seed: u32,
    image_tickets: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::cuda::{cuda_device_for, import_semaphore_cuda, InteropImage};
    use gpushare_interop::cuda::kernels::ImageKernels;
    let client = Client::connect(dir).await?;
    let sem = client.redeem(&hex::decode(sem_ticket)?).await?;
    let device = cuda_device_for(&sem)?;
    let sem = import_semaphore_cuda(&device, sem)?;
    let kernels = ImageKernels::load(&device)?;
    let mut keep = Vec::new();
    for ticket in image_tickets {
        let image = InteropImage::import(&device, client.redeem(&hex::decode(ticket)?).await?)?;
        for level in 0..image.desc().mip_levels {
            let surface = image.surface(level)?;
            // SAFETY: the surface is kept in `keep` until after the synchronize below; nothing
            // else in this process touches the image meanwhile.
            unsafe { kernels.fill_surface(&surface, seed + level, device.stream()) }?;
            keep.push(surface);
        }
        // The surfaces keep the image's array (and its memory) alive.
        drop(image);
    }
    sem.signal(value, device.stream())?;
    device.synchronize_stream()?;
    drop(keep);
    Ok(())
}

/// Waits in stream order for the semaphore to reach `value`, then samples every level of every
/// (2D, float or unorm) image with `tex2DLod` over normalized coordinates, and prints one line
/// per level: the float4s as little-endian hex.
async fn cuda_image_sample(
    dir: &str,
    sem_ticket: &str,
    value: u64,
    image_tickets: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::cuda::{cuda_device_for, import_semaphore_cuda, InteropImage};
    use gpushare_interop::cuda::{self, kernels::ImageKernels, DeviceAllocation, TextureOptions};
    let client = Client::connect(dir).await?;
    let sem = client.redeem(&hex::decode(sem_ticket)?).await?;
    let device = cuda_device_for(&sem)?;
    let sem = import_semaphore_cuda(&device, sem)?;
    let kernels = ImageKernels::load(&device)?;
    sem.wait(value, device.stream())?;
    for ticket in image_tickets {
        let image = InteropImage::import(&device, client.redeem(&hex::decode(ticket)?).await?)?;
        let texture = image.texture(&TextureOptions {
            normalized_coords: true,
            ..TextureOptions::default()
        })?;
        for level in 0..image.desc().mip_levels {
            let (w, h, _) = image.desc().level_extent(level);
            let len = u64::from(w) * u64::from(h) * 16;
            let out = DeviceAllocation::new(&device, len)?;
            // SAFETY: `out` holds 16 bytes per texel of the grid and, like the texture, lives
            // past the synchronize below.
            unsafe {
                kernels.read_texture_2d_lod(
                    &texture,
                    w,
                    h,
                    level as f32,
                    out.ptr(),
                    device.stream(),
                )
            }?;
            let mut host = vec![0u8; len as usize];
            // SAFETY: `out` holds `len` bytes and lives past the synchronize; `host` is not
            // touched before it.
            unsafe { cuda::copy_dtoh(device.stream(), out.ptr(), &mut host) }?;
            device.synchronize_stream()?;
            println!("{}", hex::encode(host));
        }
    }
    Ok(())
}

/// A daemon refusal as `error <code> <message>` on stderr (tests match the code).
fn refused(e: gpushare_client::Error) -> Box<dyn std::error::Error> {
    format!("error {:?} {e}", e.code()).into()
}

/// Opens `target` in a session of this process, exports it with a ticket (the session is what
/// gives a token holder its access), imports it into Vulkan and prints `len` bytes at `offset`.
async fn open_read(
    dir: &str,
    target: &str,
    offset: u64,
    len: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::OpenTarget;
    let target = if let Some(id) = target.strip_prefix("id:") {
        OpenTarget::Id(id.to_owned())
    } else if let Some(t) = target.strip_prefix("token:") {
        OpenTarget::Token(hex::decode(t)?)
    } else if let Some(rest) = target.strip_prefix("name:") {
        let (owner, name) = rest.split_once(':').ok_or("name:UID:NAME")?;
        OpenTarget::Named {
            owner_uid: owner.parse()?,
            name: name.to_owned(),
        }
    } else {
        return Err("target: id:ID, token:HEX or name:UID:NAME".into());
    };
    let client = Client::connect_with_session(dir, "gpushare-peer open-read").await?;
    let opened = client.open(target, false).await.map_err(refused)?;
    let ticket = client.export_ticket(&opened.id).await.map_err(refused)?;
    let exported = client.redeem(&ticket.ticket).await.map_err(refused)?;
    let instance = Instance::new("gpushare-peer")?;
    let device = import::vulkan_device_for(&instance, &exported)?;
    let buffer = import::import_buffer_vulkan(&device, exported)?;
    let bytes = Transfer::new(&device)?.download(&buffer, offset, len, &SyncPoints::default())?;
    println!("{}", hex::encode(bytes));
    Ok(())
}

/// Tries an owner's operation (Grant) as this process.
async fn try_grant(dir: &str, id: &str, uid: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(dir).await?;
    client
        .grant(id, gpushare_client::Grantee::Uid(uid))
        .await
        .map_err(refused)?;
    println!("granted");
    Ok(())
}

/// As a member of the admin group: lists every resource (prints how many), then releases `id`.
async fn admin_release(dir: &str, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(dir).await?;
    let listed = client.list().await.map_err(refused)?;
    println!("listed {}", listed.len());
    let freed = client.release(id).await.map_err(refused)?;
    println!("freed {freed}");
    Ok(())
}

/// The crash storm's client: forever, a seeded mix of what clients do (create buffers and
/// semaphores, write, export and keep the descriptors, wait with a timeout, watch, signal,
/// release), so that a SIGKILL at a random moment lands mid-call, mid-descriptor-receive, while
/// holding descriptors, or while waiting.
async fn storm(dir: &str, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    use gpushare_client::Sync;
    use std::time::Duration;
    let mut rng = gpushare_tests::rng::SplitMix64(seed);
    let client = Client::connect_with_session(dir, "gpushare-peer storm").await?;
    let mut held = Vec::new();
    let mut fds = Vec::new();
    let data = vec![0x5a; 64 << 10];
    loop {
        match rng.below(7) {
            0 | 1 => {
                let b = client
                    .create_buffer(1 << 20, &CreateOptions::default())
                    .await?;
                b.write(0, &data, &Sync::none()).await?;
                held.push(b.id().to_owned());
            }
            2 => {
                let s = client
                    .create_semaphore(0, &CreateOptions::default())
                    .await?;
                // A wait nobody satisfies, cut short by its timeout (or by the kill).
                let _ = s.wait(1, Duration::from_millis(rng.below(20) + 1)).await;
                held.push(s.id().to_owned());
            }
            3 => {
                if let Some(id) = held.last() {
                    if let Ok(e) = client.export(id).await {
                        fds.push(e.fd);
                    }
                }
            }
            4 => {
                if let Some(id) = held.first() {
                    let s = client.semaphore(id);
                    let mut w = s.watch();
                    use futures_util::StreamExt;
                    let _ = tokio::time::timeout(Duration::from_millis(5), w.next()).await;
                }
            }
            5 => {
                if let Some(id) = held.pop() {
                    let _ = client.release(&id).await;
                }
            }
            _ => {
                let _ = client.info().await?;
            }
        }
    }
}
