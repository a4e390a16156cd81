//! The data of a snapshot as openraft handles it: an open file, never a copy in memory.
//!
//! A snapshot is a SQLite database (a consistent copy of `state.db` whose `meta` table also
//! names the snapshot), so a replica sends one by reading the file in chunks and receives one by
//! writing the chunks into a temporary file. Memory use does not grow with the size of the
//! state, and a snapshot is written to disk once.
//!
//! Invariant: a file a [`SnapshotFile`] reads is never written again once it is complete (a
//! newer snapshot replaces `snapshot.current` by rename, and an open file keeps the old one).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot's data: an open file, positioned like any file. Received data is written into a
/// temporary file that is removed when the handle is dropped, unless it was installed.
#[derive(Debug)]
pub struct SnapshotFile {
    /// The open file.
    file: tokio::fs::File,
    /// Where the file is (for a received snapshot: the temporary file being written).
    path: PathBuf,
    /// Whether dropping the handle removes the file (a received snapshot not installed).
    temporary: bool,
}

impl SnapshotFile {
    /// Opens a complete snapshot for reading.
    pub(crate) fn open(path: &Path) -> io::Result<SnapshotFile> {
        let file = std::fs::File::open(path)?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: path.to_owned(),
            temporary: false,
        })
    }

    /// Creates the temporary file a received snapshot is written into (removed on drop).
    pub(crate) fn create_temporary(path: &Path) -> io::Result<SnapshotFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: path.to_owned(),
            temporary: true,
        })
    }

    /// Where the data is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for every write to reach the file and the file to reach the disk.
    pub(crate) async fn sync(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await
    }

    /// Keeps the file when the handle is dropped (it was installed, or renamed away).
    pub(crate) fn keep(&mut self) {
        self.temporary = false;
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary {
            // A received snapshot that was never installed (the transfer was abandoned or the
            // data refused). An error only leaves a file that the next start-up removes.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
