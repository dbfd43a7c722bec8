//! Host buffers: shared host memory for bulk uploads and downloads, mapped in this process and
//! in the daemon (see `CreateHostBuffer` in the proto).

use std::sync::Arc;

use gpushare_interop::host::HostMemory;
use gpushare_proto::v1;

use crate::client::resource_ref;
use crate::{Client, Error, Exported, Result};

/// A host buffer, mapped here. Bytes put in it with [`HostBuffer::write_at`] are what
/// [`Buffer::write_from_host`](crate::Buffer::write_from_host) uploads; what
/// [`Buffer::read_into_host`](crate::Buffer::read_into_host) downloads is read back with
/// [`HostBuffer::read_at`]. The daemon reads and writes a range only while such a call runs:
/// change or read that range only before or after it.
///
/// Clones share the mapping; it is unmapped when the last clone goes (the daemon's reference is
/// the session's or the pin, as for any resource: [`HostBuffer::release`]).
#[derive(Clone, Debug)]
pub struct HostBuffer {
    client: Client,
    id: String,
    mem: Arc<HostMemory>,
}

impl HostBuffer {
    /// Maps an exported host buffer (kind `HOST_BUFFER`, handle type `MEMFD`): checks the
    /// memfd's size against the metadata and its seals. The descriptor is closed on failure.
    pub fn map(client: &Client, exported: Exported) -> Result<HostBuffer> {
        if exported.kind() != v1::ResourceKind::HostBuffer {
            return Err(Error::WrongKind {
                expected: v1::ResourceKind::HostBuffer,
                found: exported.info.kind,
            });
        }
        if exported.handle_type() != v1::HandleType::Memfd {
            return Err(Error::HandleType(exported.info.handle_type));
        }
        let size = match &exported.info.details {
            Some(v1::exported_fd::Details::HostBuffer(h)) => h.size,
            _ => return Err(Error::MissingField("ExportedFd.host_buffer")),
        };
        let mem = HostMemory::map(exported.fd, size)?;
        Ok(HostBuffer {
            client: client.clone(),
            id: exported.info.resource_id,
            mem: Arc::new(mem),
        })
    }

    /// The host buffer's id (what `HostRange.host_buffer_id` names).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.mem.len()
    }

    /// Never: a host buffer is never empty.
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        Ok(self.mem.write_at(offset, data)?)
    }

    /// Copies the buffer's bytes at `offset` into `out`.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        Ok(self.mem.read_at(offset, out)?)
    }

    /// The mapping, for callers that fill or read it in place (through raw pointers: the
    /// daemon may write it during a read call).
    pub fn memory(&self) -> &HostMemory {
        &self.mem
    }

    /// The range `offset..offset + len` as the proto names it.
    pub fn range(&self, offset: u64, len: u64) -> v1::HostRange {
        v1::HostRange {
            host_buffer_id: self.id.clone(),
            offset,
            length: len,
        }
    }

    /// Drops this session's reference (or the pin). The mapping here stays valid until this
    /// handle and its clones are dropped.
    pub async fn release(&self) -> Result<bool> {
        self.client.release(&self.id).await
    }

    /// The `ResourceRef` naming this host buffer.
    pub fn resource_ref(&self) -> v1::ResourceRef {
        resource_ref(&self.id)
    }
}
