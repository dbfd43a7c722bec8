//! The three-process pipeline example (`examples/pipeline`, `gpushare-pipeline`) against the
//! real daemon: a Vulkan producer, a filter (CUDA where this machine has it, else Vulkan and
//! the host) and a sink that checks every pixel of every frame, for 500 frames. Without a GPU
//! (lavapipe: HOST points) the frames are small; on the GPU suite (`GPUSHARE_REQUIRE_GPU`)
//! they are 1920x1080, and the filter must be the CUDA kernel with GPU points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use gpushare_tests::{bin, gpu_required, run, TempDir, TestDaemon};

const FRAMES: u64 = 500;
const PNG_FRAME: u64 = 123;

/// What the producer writes into every pixel of frame `n`, after the filter (see the
/// example's `pixel` and `filtered`): the number in R, G, B, inverted; alpha 255.
fn expected_pixel(n: u64) -> [u8; 4] {
    ((0xff00_0000 | (n as u32 & 0x00ff_ffff)) ^ 0x00ff_ffff).to_le_bytes()
}

#[test]
fn pipeline_moves_and_checks_every_frame() {
    let Some(d) = TestDaemon::start() else { return };
    let gpu = gpu_required();
    let (width, height) = if gpu { (1920u32, 1080u32) } else { (64, 32) };
    let scratch = TempDir::new();
    let png_path = scratch.path().join("frame.png");
    let (status, out, err) = run(
        Command::new(bin("gpushare-pipeline"))
            .arg("--runtime-dir")
            .arg(d.runtime_dir())
            .args(["--frames", &FRAMES.to_string()])
            .args(["--width", &width.to_string()])
            .args(["--height", &height.to_string()])
            .args(["--png-frame", &PNG_FRAME.to_string()])
            .arg("--png")
            .arg(&png_path),
        Duration::from_secs(120),
    );
    println!("{out}");
    eprintln!("{err}");
    assert!(status.success(), "the pipeline failed: {status}\n{err}");

    let result = out
        .lines()
        .find_map(|l| l.split("RESULT ").nth(1))
        .expect("the sink's RESULT line");
    let field = |k: &str| {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {result:?}"))
            .to_owned()
    };
    assert_eq!(field("frames"), FRAMES.to_string());
    assert_eq!(field("expected"), FRAMES.to_string());
    assert_eq!(field("bad"), "0");
    assert_eq!(field("out_of_order"), "0");
    assert_eq!(field("checked"), "all-pixels");
    assert_eq!(field("png"), png_path.display().to_string());
    for stage in [
        "producer present -> filter acquire:",
        "filter present -> sink acquire:",
        "producer present -> sink acquire:",
        "producer present -> sink read back:",
    ] {
        assert!(out.contains(stage), "no {stage:?} latency in the output");
    }
    assert!(out.contains(" fps"), "no fps in the output");

    // The filter says which way it went; with HOST points the output says so.
    let cuda = out.contains("CUDA kernel invert_rgb");
    if gpu {
        assert!(cuda, "on a GPU the filter is the CUDA kernel");
        assert_eq!(field("points"), "gpu");
        assert!(out.contains("GPU points"));
    } else if !cuda {
        assert!(out.contains("falling back to a Vulkan/host-side filter"));
    }
    if field("points") == "host" {
        assert!(out.contains("HOST points: the daemon signals each hand-off"));
    }

    // The PNG decodes to the frame it names, every pixel.
    let decoder = png::Decoder::new(std::fs::File::open(&png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (width, height));
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let want = expected_pixel(PNG_FRAME);
    assert!(
        buf[..info.buffer_size()]
            .chunks_exact(4)
            .all(|px| px == want),
        "the PNG is not frame {PNG_FRAME} filtered"
    );
}
