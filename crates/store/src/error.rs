//! Typed errors of the storage layer: [`OpenError`] says why a data directory is refused at
//! start (always naming the file and the reason, so an operator can act on it), and
//! [`StoreError`] is what the log store, the state machine and the [`crate::StateReader`] fail
//! with at run time. Inside the openraft trait impls a [`StoreError`] is wrapped into openraft's
//! `StorageError`, which stops the Raft node.

use std::io;
use std::path::PathBuf;

use openraft::{AnyError, StorageError, StorageIOError};

use crate::types::ReplicaId;

/// Why a data directory (its `log.db` or `state.db`) is refused when a store opens.
///
/// A refused directory is never modified: nothing is wiped or re-initialised. Only a directory
/// without the files is initialised.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not a SQLite database, fails `PRAGMA quick_check`, lacks tables, or its
    /// metadata is unreadable.
    #[error("{}: refusing a damaged or foreign file: {reason}", .file.display())]
    Corrupt {
        /// The refused file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file belongs to another replica set.
    #[error("{}: belongs to cluster {found:?}, this replica is configured for cluster {expected:?}", .file.display())]
    OtherCluster {
        /// The refused file.
        file: PathBuf,
        /// The cluster name recorded in the file.
        found: String,
        /// The cluster name this replica was started with.
        expected: String,
    },
    /// The file belongs to another replica of the same replica set.
    #[error("{}: belongs to replica {found}, this replica is {expected}", .file.display())]
    OtherReplica {
        /// The refused file.
        file: PathBuf,
        /// The replica id recorded in the file.
        found: ReplicaId,
        /// The replica id this replica was started with.
        expected: ReplicaId,
    },
    /// The file was written by a version of Tandem with another on-disk format.
    #[error("{}: on-disk format version {found} is not supported (this build reads version {supported})", .file.display())]
    UnknownFormat {
        /// The refused file.
        file: PathBuf,
        /// The format version recorded in the file.
        found: u32,
        /// The format version this build reads and writes.
        supported: u32,
    },
    /// A file-system operation failed (creating the directory, renaming a new file into place).
    #[error("{}: {source}", .file.display())]
    Io {
        /// The file or directory the operation was on.
        file: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite failed for a reason other than the file's content (permissions, locking, ...).
    #[error("{}: {source}", .file.display())]
    Sqlite {
        /// The file being opened.
        file: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
}

impl OpenError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            OpenError::Corrupt { file, .. }
            | OpenError::OtherCluster { file, .. }
            | OpenError::OtherReplica { file, .. }
            | OpenError::UnknownFormat { file, .. }
            | OpenError::Io { file, .. }
            | OpenError::Sqlite { file, .. } => file,
        }
    }
}

/// A run-time error of the log store, the state machine or the reader API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file-system operation failed (snapshot files).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A stored blob could not be encoded or decoded.
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    /// Stored data is inconsistent (a missing metadata row, an impossible value).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A change-feed read asked for changes that are no longer retained.
    #[error("changes after revision {requested} are compacted; the oldest retained revision is {oldest}")]
    Compacted {
        /// The revision the read asked for changes after.
        requested: u64,
        /// The oldest revision whose changes are still retained (all later ones are too).
        oldest: u64,
    },
    /// A received snapshot was refused (not a database, another cluster, unknown format).
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The runtime is shutting down: the storage task was cancelled.
    #[error("the store is closed")]
    Closed,
    /// A storage task panicked; the store must not be used further.
    #[error("a storage task panicked: {0}")]
    Panicked(String),
    /// A lock is poisoned because a storage task panicked while holding it.
    #[error("a storage lock is poisoned (an earlier storage task panicked)")]
    Poisoned,
}

impl StoreError {
    /// Wraps the error as an openraft error of reading the log.
    pub(crate) fn into_read_logs(self) -> StorageError<ReplicaId> {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of writing the log.
    pub(crate) fn into_write_logs(self) -> StorageError<ReplicaId> {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of reading the vote.
    pub(crate) fn into_read_vote(self) -> StorageError<ReplicaId> {
        StorageIOError::read_vote(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of writing the vote.
    pub(crate) fn into_write_vote(self) -> StorageError<ReplicaId> {
        StorageIOError::write_vote(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of reading the state machine.
    pub(crate) fn into_read_sm(self) -> StorageError<ReplicaId> {
        StorageIOError::read_state_machine(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of writing the state machine.
    pub(crate) fn into_write_sm(self) -> StorageError<ReplicaId> {
        StorageIOError::write_state_machine(AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of reading a snapshot.
    pub(crate) fn into_read_snapshot(self) -> StorageError<ReplicaId> {
        StorageIOError::read_snapshot(None, AnyError::new(&self)).into()
    }

    /// Wraps the error as an openraft error of writing a snapshot.
    pub(crate) fn into_write_snapshot(
        self,
        signature: Option<openraft::storage::SnapshotSignature<ReplicaId>>,
    ) -> StorageError<ReplicaId> {
        StorageIOError::write_snapshot(signature, AnyError::new(&self)).into()
    }
}
