//! A handle to a device buffer and the daemon-executed operations on it.

use gpushare_proto::v1;

use crate::client::resource_ref;
use crate::{Client, Error, Exported, HostBuffer, Result, Sync};

/// A buffer, named by id. Holds a clone of its [`Client`] (and so keeps its session alive).
///
/// Every transfer first waits for the [`Sync`]'s wait points, runs on the device, then signals
/// its signal points, and returns once all of that is done. [`Buffer::write`] and
/// [`Buffer::read`] carry the bytes in the gRPC messages: at most the daemon's
/// `Limits.max_transfer_size` per call, at a few hundred MB/s. For bulk data, put the bytes in
/// a [`HostBuffer`] and use [`Buffer::write_from_host`] / [`Buffer::read_into_host`]: no size
/// limit beyond the buffers', and DMA at the copy engine's speed on CUDA hosts.
#[derive(Clone, Debug)]
pub struct Buffer {
    client: Client,
    id: String,
}

impl Buffer {
    pub(crate) fn new(client: Client, id: &str) -> Self {
        Buffer {
            client,
            id: id.to_owned(),
        }
    }

    /// The buffer's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this handle calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The buffer's description (size, allocation size, references).
    pub async fn describe(&self) -> Result<v1::Resource> {
        self.client.describe(&self.id).await
    }

    /// Writes `data` at `offset`.
    pub async fn write(&self, offset: u64, data: &[u8], sync: &Sync) -> Result<()> {
        let request = v1::WriteRequest {
            buffer_id: self.id.clone(),
            offset,
            data: data.to_vec(),
            sync: Some(sync.to_proto()),
            from_host: None,
        };
        self.client
            .grpc()
            .write(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u64, sync: &Sync) -> Result<Vec<u8>> {
        let request = v1::ReadRequest {
            buffer_id: self.id.clone(),
            offset,
            length: len,
            sync: Some(sync.to_proto()),
            to_host: None,
        };
        let data = self
            .client
            .grpc()
            .read(self.client.request(request))
            .await?
            .into_inner()
            .data;
        if u64::try_from(data.len()).ok() != Some(len) {
            return Err(Error::ShortRead {
                expected: len,
                got: data.len(),
            });
        }
        Ok(data)
    }

    /// Writes `len` bytes of `host` at `host_offset` into this buffer at `offset`. Do not change
    /// that host range until this returns.
    pub async fn write_from_host(
        &self,
        offset: u64,
        host: &HostBuffer,
        host_offset: u64,
        len: u64,
        sync: &Sync,
    ) -> Result<()> {
        let request = v1::WriteRequest {
            buffer_id: self.id.clone(),
            offset,
            data: Vec::new(),
            sync: Some(sync.to_proto()),
            from_host: Some(host.range(host_offset, len)),
        };
        self.client
            .grpc()
            .write(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Reads `len` bytes at `offset` into `host` at `host_offset`; read them there with
    /// [`HostBuffer::read_at`] once this returned.
    pub async fn read_into_host(
        &self,
        offset: u64,
        len: u64,
        host: &HostBuffer,
        host_offset: u64,
        sync: &Sync,
    ) -> Result<()> {
        let request = v1::ReadRequest {
            buffer_id: self.id.clone(),
            offset,
            length: len,
            sync: Some(sync.to_proto()),
            to_host: Some(host.range(host_offset, len)),
        };
        self.client
            .grpc()
            .read(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Fills `len` bytes at `offset` with the 32-bit word `value` (offset and length must be
    /// multiples of 4).
    pub async fn fill(&self, offset: u64, len: u64, value: u32, sync: &Sync) -> Result<()> {
        let request = v1::FillRequest {
            buffer_id: self.id.clone(),
            offset,
            length: len,
            value,
            sync: Some(sync.to_proto()),
        };
        self.client
            .grpc()
            .fill(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Copies `len` bytes from `src` at `src_offset` into this buffer at `dst_offset`.
    pub async fn copy_from(
        &self,
        src: &Buffer,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
        sync: &Sync,
    ) -> Result<()> {
        let request = v1::CopyRequest {
            src_buffer_id: src.id.clone(),
            src_offset,
            dst_buffer_id: self.id.clone(),
            dst_offset,
            length: len,
            sync: Some(sync.to_proto()),
        };
        self.client
            .grpc()
            .copy(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Exports the buffer's memory and redeems the descriptor.
    pub async fn export(&self) -> Result<Exported> {
        self.client.export(&self.id).await
    }

    /// Drops this session's reference (or the pin). Returns whether the daemon freed the buffer.
    pub async fn release(&self) -> Result<bool> {
        self.client.release(&self.id).await
    }

    /// The `ResourceRef` naming this buffer.
    pub fn resource_ref(&self) -> v1::ResourceRef {
        resource_ref(&self.id)
    }
}
