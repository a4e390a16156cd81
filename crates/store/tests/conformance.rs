//! openraft's storage conformance suite, run against [`LogStore`] and [`StateMachine`] opened
//! on a fresh temporary directory for every case.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tandem_store::{HistoryLimit, LogStore, ReplicaId, StateMachine, TypeConfig};
use tempfile::TempDir;

/// Opens both stores in a new temporary directory; the directory is the drop guard.
struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<ReplicaId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(dir.path(), "conformance", 0).unwrap();
        let (sm, _reader) = StateMachine::open(dir.path(), "conformance", 0, HistoryLimit::revisions(1000)).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance() {
    if let Err(e) = Suite::test_all(TempDirBuilder) {
        panic!("conformance suite failed: {e}");
    }
}
