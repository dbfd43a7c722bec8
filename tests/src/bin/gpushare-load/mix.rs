//! The mixed calls of the load test, and the resources each client makes them on.

use gpushare_client::{Buffer, Client, CreateOptions, Semaphore, Sync as Points};
use gpushare_tests::rng::SplitMix64;

use crate::Res;

/// One client's resources for the mixed calls.
pub struct Kit {
    pub client: Client,
    pub buf: Buffer,
    pub sem: Semaphore,
    /// The next value Signal sets.
    pub next_signal: u64,
    /// What Write writes.
    pub data: Vec<u8>,
}

impl Kit {
    pub async fn new(dir: &std::path::Path, name: &str) -> Res<Kit> {
        let client = Client::connect_with_session(dir, name).await?;
        let buf = client
            .create_buffer(1 << 20, &CreateOptions::default())
            .await?;
        let sem = client
            .create_semaphore(0, &CreateOptions::default())
            .await?;
        Ok(Kit {
            client,
            buf,
            sem,
            next_signal: 1,
            data: vec![0x5a; 4096],
        })
    }
}

/// The kinds of mixed call, as [`kind_of`] numbers them.
pub const KINDS: [&str; 6] = ["GetValue", "Signal", "Write", "Read", "Describe", "export"];

/// Which of [`KINDS`] [`call`] makes for `r`.
pub fn kind_of(r: u64) -> usize {
    match r {
        0..30 => 0,
        30..40 => 1,
        40..60 => 2,
        60..80 => 3,
        80..90 => 4,
        _ => 5,
    }
}

/// One mixed call, chosen by `r` in 0..100. Returns the error, if any.
pub async fn call(kit: &mut Kit, r: u64) -> Result<(), gpushare_client::Error> {
    let none = Points::none();
    match r {
        0..30 => kit.sem.value().await.map(drop),
        30..40 => {
            let v = kit.next_signal;
            kit.next_signal += 1;
            kit.sem.signal(v).await.map(drop)
        }
        40..60 => kit.buf.write(8192, &kit.data, &none).await,
        60..80 => kit.buf.read(8192, 4096, &none).await.map(drop),
        80..90 => kit.client.describe(kit.buf.id()).await.map(drop),
        _ => kit.client.export(kit.buf.id()).await.map(drop),
    }
}

/// The probe's mix, and the overload callers': the mixed calls but Signal (concurrent callers
/// share a semaphore).
pub fn probe_mix(rng: &mut SplitMix64) -> u64 {
    match rng.below(90) {
        x if x < 30 => x,
        x => x + 10,
    }
}
