//! GPU suite: cross-process correctness. `gpushare-pingpong` runs process A (CUDA) against
//! process B, once with B on CUDA and once on Vulkan: 10,000 rounds each of random ranges written
//! by one process and checked by the other, handed over only through a shared timeline semaphore
//! waited on and signaled on each process's own GPU stream or queue. Then both again on the CUDA
//! fast path (the semaphore's memop word): 50,000 rounds (100,000 hand-offs) CUDA to CUDA, and
//! 10,000 with the Vulkan peer signaling through the semaphore, which the daemon bridges into the
//! word A waits on. Zero mismatches; a hang fails through the program's watchdog.
//!
//! Needs CUDA and a daemon device that exports timeline semaphores: elsewhere (CI: lavapipe, no
//! CUDA) it prints `SKIP: <reason>`, and fails instead under `GPUSHARE_REQUIRE_GPU=1`.
//!
//! `GPUSHARE_PINGPONG_ROUNDS` overrides the number of rounds (a quick run); with
//! `GPUSHARE_RESULTS_DIR` set, each run's JSON summary is also written there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use gpushare_client::{v1, Client};
use gpushare_tests::{bin, gpu_required, run, TestDaemon};

const ROUNDS: u64 = 10_000;
/// CUDA to CUDA on the fast path: 100,000 hand-offs.
const WORD_ROUNDS: u64 = 50_000;

/// Skips (prints `SKIP:` and returns) or, under `GPUSHARE_REQUIRE_GPU=1`, fails.
macro_rules! skip {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but {why}");
        }
        println!("SKIP: {why}");
        return;
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_writes_and_another_process_answers_on_its_gpu_queue() {
    if !gpushare_interop::cuda::is_present() {
        skip!("no CUDA driver (libcuda) on this machine");
    }
    match gpushare_interop::cuda::devices() {
        Ok(d) if !d.is_empty() => {}
        Ok(_) => skip!("CUDA sees no device"),
        Err(e) => skip!("CUDA cannot list devices: {e}"),
    }
    let Some(d) = TestDaemon::start() else {
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but the daemon found no Vulkan device");
        }
        return;
    };
    let client = Client::connect(d.runtime_dir()).await.unwrap();
    let info = client.info().await.unwrap();
    let caps = info.devices[0].capabilities.clone().unwrap_or_default();
    if !caps
        .timeline_semaphore_export
        .contains(&(v1::HandleType::OpaqueFd as i32))
    {
        skip!(
            "the daemon's device ({}) cannot export timeline semaphores",
            info.devices[0].name
        );
    }
    let rounds = std::env::var("GPUSHARE_PINGPONG_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let results_dir = std::env::var_os("GPUSHARE_RESULTS_DIR").map(PathBuf::from);
    let runs = [
        ("cuda", "semaphore", rounds),
        ("vulkan", "semaphore", rounds),
        ("cuda", "word", rounds.max(WORD_ROUNDS).min(rounds * 5)),
        ("vulkan", "word", rounds),
    ];
    for (api, path, rounds) in runs {
        let name = match path {
            "word" => format!("pingpong-{api}-word"),
            _ => format!("pingpong-{api}"),
        };
        let json = d.scratch().join(format!("{name}.json"));
        let (status, stdout, stderr) = tokio::task::block_in_place(|| {
            run(
                Command::new(bin("gpushare-pingpong"))
                    .arg(d.runtime_dir())
                    .args(["--peer-api", api])
                    .args(["--path", path])
                    .args(["--rounds", &rounds.to_string()])
                    .arg("--json")
                    .arg(&json),
                Duration::from_secs(600),
            )
        });
        print!("{stdout}");
        eprint!("{stderr}");
        assert!(
            status.success(),
            "pingpong with B on {api}, {path} path, failed ({status}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
            d.log()
        );
        let text = std::fs::read_to_string(&json).unwrap();
        if let Some(dir) = &results_dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.json")), &text).unwrap();
        }
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(summary["rounds"], rounds, "{summary}");
        assert_eq!(summary["peer_rounds"], rounds, "{summary}");
        assert_eq!(summary["mismatches"], 0, "{summary}");
    }
    assert_eq!(d.stop().code(), Some(0));
}
