//! A frame stream's producer (README, "Frame streams"): creates a stream of 3 slots, waits for
//! a consumer, and presents 5 frames written through the daemon. Host-side: points given as 0
//! are signaled by the daemon, so this runs with HOST and GPU points alike.
use std::time::Duration;

use gpushare_client::{default_runtime_dir, Client, FrameMetadata, SlotKind, StreamOptions, Sync};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_with_session(default_runtime_dir(), "producer").await?;
    let producer = client
        .create_stream(3, &SlotKind::Buffer(64), &StreamOptions::default())
        .await?;
    let id = producer.info().id.clone();
    println!("{id}");
    while client.describe_stream(&id).await?.consumers.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 1..=5u64 {
        let grant = producer.acquire_slot(Duration::from_secs(5), true)?;
        let slot = client.buffer(&producer.attachment().slots[grant.slot as usize].resource_id);
        slot.write(0, format!("frame {n}").as_bytes(), &Sync::none())
            .await?;
        let meta = FrameMetadata {
            number: n,
            ..Default::default()
        };
        producer.present(grant.slot, 0, meta)?;
    }
    producer.detach().await?;
    Ok(())
}
