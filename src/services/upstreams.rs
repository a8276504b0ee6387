//! Operations on the Ollama servers (SPEC §11): their status, and draining one for
//! maintenance. Proxy admins only — a server belongs to no team.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::auth::authorize::{Capability, check};
use crate::error::AppError;
use crate::store::{Audit, AuditAction, AuditEntry, Store};
use crate::upstream::{ServerStatus, Upstream};

/// `GET /upstream/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetStatus {
    pub servers: Vec<ServerStatus>,
    /// Requests waiting in this instance's queue.
    pub queued: u64,
}

/// `POST /upstream/drain` and `/upstream/undrain`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerName {
    /// A server's `name` from `upstream.servers` (`default` for `upstream.url`).
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub name: String,
}

/// Reads and changes the servers' routing state; long-lived, built from the upstream.
pub struct UpstreamService {
    upstream: Arc<Upstream>,
    /// Where drain and undrain are audited.
    store: Arc<dyn Store>,
}

impl UpstreamService {
    pub fn new(upstream: Arc<Upstream>, store: Arc<dyn Store>) -> Self {
        Self { upstream, store }
    }

    pub fn status(&self, caller: &Caller) -> Result<FleetStatus, AppError> {
        check(caller, Capability::UpstreamRead, None)?;
        let fleet = self.upstream.fleet();
        Ok(FleetStatus {
            servers: fleet.status(),
            queued: u64::try_from(fleet.queued()).unwrap_or(u64::MAX),
        })
    }

    /// Stops (`draining: true`) or resumes routing new requests to a server; requests
    /// in flight there finish. Answers the server's status.
    ///
    /// The drain state lives in this process, not in the database, so it cannot share a
    /// transaction with its audit row. The change is made, its row written, and when the
    /// row cannot be written the change is undone and the call fails (503 or 500): no
    /// change without its row, and never a success the log does not show.
    pub async fn set_draining(
        &self,
        caller: &Caller,
        name: &str,
        draining: bool,
    ) -> Result<ServerStatus, AppError> {
        check(caller, Capability::UpstreamWrite, None)?;
        let fleet = self.upstream.fleet();
        let server = self
            .upstream
            .server_named(name)
            .ok_or_else(|| AppError::NotFound(format!("no server named `{name}`")))?;
        let status = |fleet: &crate::upstream::Fleet| {
            fleet
                .status()
                .into_iter()
                .nth(server)
                .ok_or_else(|| AppError::NotFound(format!("no server named `{name}`")))
        };
        let before = status(fleet)?;
        let was_draining = fleet.is_draining(server);
        fleet.set_draining(server, draining);
        let after = status(fleet)?;
        let action = if draining {
            AuditAction::UpstreamDrain
        } else {
            AuditAction::UpstreamUndrain
        };
        let audit = Audit::new(caller.actor(), action);
        let entry = AuditEntry::of(&audit, name, None, Some(&before), Some(&after));
        if let Err(e) = self.store.record_audit(&entry).await {
            fleet.set_draining(server, was_draining);
            return Err(e.into());
        }
        tracing::info!(server = name, draining, caller = %caller.label, "server routing changed");
        Ok(after)
    }
}
