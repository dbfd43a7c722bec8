//! Export: a descriptor of a resource for another process, with what it needs to import it.
//!
//! Two ways to ask: the Export call issues a one-time ticket (bound to the caller's uid, for a
//! resource it may use), redeemed on fd.sock, which is how a descriptor is handed to another
//! process; or fd.sock exports a resource the connection's peer may use directly, in one round
//! trip. Either way a semaphore its device cannot export is refused (FAILED_PRECONDITION).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::Daemon;
use crate::access::Caller;
use crate::error::{Error, Result};
use crate::ids;
use crate::registry::Snapshot;
use crate::resource::{Object, Resource};

/// What fd.sock was asked to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExportAsk {
    /// Redeem this ticket.
    Ticket([u8; ids::ID_BYTES]),
    /// This resource id (well formed, not yet looked up).
    Id(String),
}

/// A descriptor and what an importer needs besides it.
#[derive(Debug)]
pub(crate) struct Exported {
    /// The resource.
    pub(crate) resource: Arc<Resource>,
    /// The descriptor (the daemon's copy closes once sent).
    pub(crate) fd: OwnedFd,
    /// The device and driver UUIDs of its GPU (`None` for host memory, which belongs to no
    /// device).
    pub(crate) uuids: Option<([u8; 16], [u8; 16])>,
    /// A semaphore's value at export.
    pub(crate) value: Option<u64>,
    /// A semaphore's word, when asked for and it has one: its buffer's descriptor, sent second.
    pub(crate) word: Option<OwnedFd>,
}

impl Daemon {
    /// `snap`, unless it is a semaphore its device cannot export.
    fn exportable(snap: Snapshot) -> Result<Snapshot> {
        if let Object::Semaphore(s) = &snap.resource.object {
            if !s.exportable() {
                return Err(Error::NotExportable(snap.resource.id.clone()));
            }
        }
        Ok(snap)
    }

    /// Export: a ticket for resource `id`, redeemable on fd.sock by the caller's uid within
    /// `limits.ticket_ttl_ms` (`quotas.tickets_per_uid`, `tickets_per_session`).
    pub(crate) fn issue_ticket(&self, caller: &Caller, id: &str) -> Result<[u8; ids::ID_BYTES]> {
        Self::exportable(self.resource(id, caller)?)?;
        self.tickets.issue(
            id,
            caller.uid(),
            caller.session.as_deref(),
            self.config.quotas.tickets_per_uid,
            self.config.quotas.tickets_per_session,
        )
    }

    /// A descriptor for `ask`, by `caller` (fd.sock: its connection's peer, no session); with
    /// `word`, a semaphore's word buffer's too, when it has a word.
    pub(crate) async fn export(
        &self,
        caller: &Caller,
        ask: ExportAsk,
        word: bool,
    ) -> Result<Exported> {
        let snap = match ask {
            ExportAsk::Ticket(ticket) => {
                let id = self.tickets.redeem(&ticket, caller.uid())?;
                // The ticket is the authorization: issued to this uid after an access check.
                self.registry.get_unchecked(&id)?
            }
            ExportAsk::Id(id) => Self::exportable(self.resource(&id, caller)?)?,
        };
        let resource = snap.resource;
        let fd = resource.descriptor().await?;
        let (value, word) = match &resource.object {
            Object::Semaphore(s) => {
                let word = match s.word() {
                    Some(w) if word => Some(
                        w.buffer()
                            .export_fd()
                            .map_err(Error::gpu("exporting a semaphore's word"))?,
                    ),
                    _ => None,
                };
                (Some(s.value()?), word)
            }
            _ => (None, None),
        };
        let uuids = match &resource.object {
            Object::HostBuffer(_) => None,
            _ => {
                let info = self.device(resource.device)?.info();
                Some((info.device_uuid, info.driver_uuid))
            }
        };
        tracing::debug!(id = %resource.id, uid = caller.uid(), "descriptor exported");
        Ok(Exported {
            resource,
            fd,
            uuids,
            value,
            word,
        })
    }
}
