//! openraft's storage conformance suite against the sled log store and state machine, each case
//! on a fresh real sled directory.

use openraft::testing::{StoreBuilder, Suite};
use raftkv::raft::{StorageError, TypeConfig};
use raftkv::storage::{self, LogStore, StateMachineStore};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create a temporary data dir");
        let (log_store, state_machine) = storage::open(dir.path(), true)
            .await
            .expect("open a fresh sled store");
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn sled_store_passes_openraft_conformance_suite() {
    if let Err(e) = Suite::test_all(SledStoreBuilder) {
        panic!("conformance suite failed: {e}");
    }
}
