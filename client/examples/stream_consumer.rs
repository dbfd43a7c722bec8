//! A frame stream's consumer (README, "Frame streams"): attaches to the stream named on the
//! command line, reads every frame through the daemon and prints it, until the stream ends.
use std::time::Duration;

use gpushare_client::{default_runtime_dir, v1, Client, Sync};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let id = std::env::args()
        .nth(1)
        .ok_or("usage: stream_consumer <stream-id>")?;
    let client = Client::connect_with_session(default_runtime_dir(), "consumer").await?;
    let consumer = client
        .attach_consumer(&id, v1::DeliveryMode::Fifo, 1)
        .await?;
    loop {
        let frame = match consumer.acquire_frame(Duration::from_secs(5), true) {
            Ok(frame) => frame,
            Err(e) if e.code() == Some(tonic::Code::Aborted) => break, // the producer is done
            Err(e) => return Err(e.into()),
        };
        let slot = client.buffer(&consumer.attachment().slots[frame.slot as usize].resource_id);
        let bytes = slot.read(0, 7, &Sync::none()).await?;
        println!(
            "{}: {}",
            frame.metadata.unwrap_or_default().number,
            String::from_utf8_lossy(&bytes)
        );
        consumer.release_frame(frame.slot, 0)?;
    }
    Ok(())
}
