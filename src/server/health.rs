//! The standard `grpc.health.v1.Health` service's status, kept current from Raft's metrics.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::KvService;
use crate::proto::v1::kv_server::KvServer;
use crate::raft::Raft;

/// Reports SERVING once this node is a member of a cluster that has a leader, NOT_SERVING
/// otherwise (before it joins, during elections, and after it has been removed).
pub async fn track_health(raft: Raft, health: HealthReporter) {
    let mut metrics = raft.metrics();
    let mut last = None;
    let mut was_member = false;
    loop {
        let (has_leader, is_member) = {
            let m = metrics.borrow();
            let is_member = m.membership_config.membership().get_node(&m.id).is_some();
            (m.current_leader.is_some(), is_member)
        };
        if was_member && !is_member {
            was_member = false;
            tracing::warn!(
                "this node was removed from the cluster; it no longer serves. Stop it, or wipe \
                 its data dir and --join again to rejoin"
            );
        }
        was_member |= is_member;
        let serving = has_leader && is_member;
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <KvServer<KvService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            last = Some(serving);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
