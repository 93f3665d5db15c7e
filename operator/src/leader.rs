//! Leader election through a `coordination.k8s.io/v1` Lease: only the holder reconciles,
//! so several operator replicas can run for availability without writing over each other.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds a lease stays valid without renewal; a crashed leader is replaced after this.
pub const LEASE_DURATION_SECS: u64 = 15;
/// Seconds before expiry at which the holder renews.
pub const LEASE_GRACE_SECS: u64 = 5;

/// A running election.
pub struct Election {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    /// Join the election for Lease `namespace/name` as `identity`.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION_SECS)
            .with_grace(LEASE_GRACE_SECS)
            .with_field_manager(crate::config::FIELD_MANAGER)
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Wait until this replica leads. Returns false when the election ended first.
    pub async fn acquired(&mut self) -> bool {
        self.leading.wait_for(|leading| *leading).await.is_ok()
    }

    /// A future that resolves when leadership is lost.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.leading.clone();
        async move {
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Step down: closing the channel makes the manager release the Lease, so a standby
    /// takes over at once instead of after the lease expires.
    pub async fn release(self) {
        let Election { leading, task } = self;
        drop(leading);
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("timed out releasing the leader Lease"),
        }
    }
}
