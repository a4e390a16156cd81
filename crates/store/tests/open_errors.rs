//! Data directories that must be refused at start, with an error naming the file and the
//! reason, and left exactly as they were.

use std::fs;
use std::path::{Path, PathBuf};

use tandem_store::{HistoryLimit, LogStore, OpenError, StateMachine};

const CLUSTER: &str = "prod";

/// Creates both files in `dir` the normal way, then closes them.
fn initialise(dir: &Path) {
    let log = LogStore::open(dir, CLUSTER, 1).unwrap();
    let (sm, reader) = StateMachine::open(dir, CLUSTER, 1, HistoryLimit::revisions(100)).unwrap();
    drop((log, sm, reader));
}

/// The bytes of every file in `dir`, by name.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn open_log(dir: &Path, cluster: &str, replica_id: u64) -> OpenError {
    match LogStore::open(dir, cluster, replica_id) {
        Ok(_) => panic!("log.db was accepted"),
        Err(e) => e,
    }
}

fn open_state(dir: &Path, cluster: &str, replica_id: u64) -> OpenError {
    match StateMachine::open(dir, cluster, replica_id, HistoryLimit::revisions(100)) {
        Ok(_) => panic!("state.db was accepted"),
        Err(e) => e,
    }
}

#[test]
fn an_empty_directory_is_initialised_and_reopened() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("not/yet/there");
    initialise(&dir);
    assert!(dir.join("log.db").exists());
    assert!(dir.join("state.db").exists());
    initialise(&dir);
    // No temporary files are left behind.
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("log.db") || n.starts_with("state.db")),
        "{names:?}"
    );
}

#[test]
fn a_garbage_log_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("log.db"),
        b"this is not a database, just some text\n".repeat(200),
    )
    .unwrap();
    let before = contents(dir.path());
    let err = open_log(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::Corrupt { file, .. } if file.ends_with("log.db")),
        "{err}"
    );
    assert!(err.to_string().contains("log.db"), "{err}");
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_sqlite_database_that_is_not_ours_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch("CREATE TABLE something (x INTEGER); INSERT INTO something VALUES (1);")
            .unwrap();
    }
    let before = contents(dir.path());
    let err = open_state(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::Corrupt { file, reason } if file.ends_with("state.db") && reason.contains("meta")),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_state_of_another_cluster_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path());
    let before = contents(dir.path());
    let err = open_state(dir.path(), "staging", 1);
    match &err {
        OpenError::OtherCluster { file, found, expected } => {
            assert!(file.ends_with("state.db"));
            assert_eq!((found.as_str(), expected.as_str()), (CLUSTER, "staging"));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("state.db"));
    let err = open_log(dir.path(), "staging", 1);
    assert!(
        matches!(&err, OpenError::OtherCluster { file, .. } if file.ends_with("log.db")),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_directory_of_another_replica_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path());
    let before = contents(dir.path());
    let err = open_log(dir.path(), CLUSTER, 2);
    assert!(
        matches!(&err, OpenError::OtherReplica { file, found: 1, expected: 2 } if file.ends_with("log.db")),
        "{err}"
    );
    let err = open_state(dir.path(), CLUSTER, 2);
    assert!(
        matches!(&err, OpenError::OtherReplica { file, found: 1, expected: 2 } if file.ends_with("state.db")),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn an_unknown_format_version_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path());
    for file in ["log.db", "state.db"] {
        let conn = rusqlite::Connection::open(dir.path().join(file)).unwrap();
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'format_version'", [])
            .unwrap();
    }
    let before = contents(dir.path());
    let err = open_log(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::UnknownFormat { file, found: 2, supported: 1 } if file.ends_with("log.db")),
        "{err}"
    );
    let err = open_state(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::UnknownFormat { file, found: 2, supported: 1 } if file.ends_with("state.db")),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn a_missing_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path());
    {
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute("DROP TABLE leases", []).unwrap();
    }
    let err = open_state(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::Corrupt { file, reason } if file.ends_with("state.db") && reason.contains("leases")),
        "{err}"
    );
}

#[test]
fn a_stray_write_ahead_log_without_its_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("log.db-wal"), b"leftover").unwrap();
    let err = open_log(dir.path(), CLUSTER, 1);
    assert!(
        matches!(&err, OpenError::Corrupt { file, .. } if file.ends_with("log.db")),
        "{err}"
    );
    assert!(!dir.path().join("log.db").exists());
}

#[test]
fn a_damaged_snapshot_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path());
    // In this version's format (a database) and in the earlier one (`TDSNAP01`, meta, database).
    for garbage in [&b"TDSNAP01garbage"[..], b"not a database at all, not even close to one"] {
        fs::write(dir.path().join("snapshot.current"), garbage).unwrap();
        let before = contents(dir.path());
        let err = open_state(dir.path(), CLUSTER, 1);
        assert!(
            matches!(&err, OpenError::Corrupt { file, .. } if file.ends_with("snapshot.current")),
            "{err}"
        );
        assert_eq!(contents(dir.path()), before);
    }
}
