//! Group commit: one OS thread makes every pending message durable together.
//!
//! Sessions hand a finished tmp file to the committer and wait on a oneshot. The committer takes
//! every request that is waiting, then for the whole batch: syncs the files' data, renames each
//! tmp file into `queue/`, syncs `queue/` once, and only then answers. The order is the point:
//! a rename before the data is durable could leave a visible, acknowledged file with holes after
//! a crash, and answering before the directory sync could acknowledge a name that a crash undoes.
//! Sharing the syncs is what lets N concurrent sessions commit for roughly the cost of one.
//!
//! # Choice of data sync
//!
//! Measured with the `throughput` test in store.rs (20 writers x 10 KiB, release build, ext4 on
//! a shared 2-core VM, so noisy), msgs/s over four runs:
//!
//! ```text
//! fdatasync, serial in the committer    3865  2434  1027  1824
//! fdatasync, 8 overlapping threads      3878  3171  6616  1518
//! syncfs, once per batch                3307  4078  5426  3536
//! ```
//!
//! Batches averaged 5-10 messages. `syncfs` costs one journal commit per batch however large
//! the batch, but it also writes back every other dirty page on the same filesystem, so its
//! latency (and the 250s waiting on it) depends on whatever else writes there: logs, a
//! backup, a compiler. The default is therefore `FdatasyncEach`, whose cost is confined to
//! the spool's own files (Postfix, too, syncs each queue file); `queue.sync: syncfs` is there
//! for a spool on a volume of its own, where the only dirty data is the spool's.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::spool::SpoolError;

/// Which [`Durability`] a real spool uses (`queue.sync` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// [`FdatasyncEach`]: one `fdatasync` per file, overlapped across threads.
    #[default]
    Fdatasync,
    /// [`SyncFs`]: one `syncfs` per batch; for a spool on its own filesystem.
    Syncfs,
}

/// How data and directory entries are made durable: the fault-injection seam (STYLE.md habit
/// 11). The committer calls `sync_files` once per batch with every file of the batch, then
/// renames the files that synced, then `sync_dir` once on `queue/`.
pub trait Durability: Send + Sync + fmt::Debug {
    /// Makes one file's data durable (it need not cover metadata other than what is needed to
    /// read the data back, i.e. `fdatasync` semantics).
    fn sync_file(&self, f: &File) -> io::Result<()>;

    /// Makes a directory's entries (the renames into it) durable.
    fn sync_dir(&self, d: &File) -> io::Result<()>;

    /// Makes the data of every file in `files` durable; one result per file, in order. The
    /// default syncs them one after the other with `sync_file`.
    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        files.iter().map(|f| self.sync_file(f)).collect()
    }
}

/// Real durability with one `fdatasync(2)` per file. A batch is spread over up to
/// `max_threads` scoped threads, so that the kernel can fold the concurrent syncs into one
/// journal commit instead of one commit per file.
#[derive(Debug, Clone, Copy)]
pub struct FdatasyncEach {
    /// Threads used to sync one batch (1 = one after the other).
    pub max_threads: usize,
}

impl Default for FdatasyncEach {
    fn default() -> Self {
        FdatasyncEach { max_threads: 8 }
    }
}

impl Durability for FdatasyncEach {
    fn sync_file(&self, f: &File) -> io::Result<()> {
        rustix::fs::fdatasync(f).map_err(io::Error::from)
    }

    fn sync_dir(&self, d: &File) -> io::Result<()> {
        rustix::fs::fsync(d).map_err(io::Error::from)
    }

    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        if self.max_threads <= 1 || files.len() <= 1 {
            return files.iter().map(|f| self.sync_file(f)).collect();
        }
        let per_thread = files.len().div_ceil(self.max_threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(per_thread)
                .map(|chunk| {
                    let handle = s
                        .spawn(move || chunk.iter().map(|f| self.sync_file(f)).collect::<Vec<_>>());
                    (chunk.len(), handle)
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(n, h)| {
                    // A sync thread cannot panic short of a bug; count its files as failed.
                    h.join().unwrap_or_else(|_| {
                        (0..n)
                            .map(|_| Err(io::Error::other("sync thread panicked")))
                            .collect()
                    })
                })
                .collect()
        })
    }
}

/// Real durability with one `syncfs(2)` per batch (Linux): it writes back the whole filesystem
/// holding the spool, which costs one journal commit however many files the batch has. Every
/// file of a batch gets the same result.
///
/// `syncfs` reports a writeback error to a descriptor only if it happened after that
/// descriptor last saw one (errseq, Linux 5.8+). So the sync goes through one long-lived
/// descriptor opened when the spool opens, never a message file's own: every error since
/// start-up is then reported exactly once, failing the batch it lands in, whichever file's
/// pages it hit. Without an anchor (tests) it falls back to the first file of the batch.
///
/// An error reported once can land in the wrong batch, though: write-back of a file still
/// being received can fail, and the next batch's `syncfs` (for other files) consumes it.
/// So after a clean `syncfs` each file of the batch also gets its own `fdatasync`: its
/// descriptor sampled the error sequence when the file was created, so it reports any error
/// that hit any of its pages since, and with the data already written back it costs a
/// system call, not another journal commit.
#[derive(Debug, Default)]
pub struct SyncFs {
    anchor: Option<File>,
}

impl SyncFs {
    /// Syncs through a descriptor of `dir` (the spool), opened now.
    pub fn anchored(dir: &Path) -> io::Result<SyncFs> {
        Ok(SyncFs {
            anchor: Some(File::open(dir)?),
        })
    }
}

impl Durability for SyncFs {
    fn sync_file(&self, f: &File) -> io::Result<()> {
        rustix::fs::syncfs(self.anchor.as_ref().unwrap_or(f)).map_err(io::Error::from)
    }

    fn sync_dir(&self, d: &File) -> io::Result<()> {
        rustix::fs::fsync(d).map_err(io::Error::from)
    }

    fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
        let Some(first) = files.first() else {
            return Vec::new();
        };
        let result = self.sync_file(first);
        files
            .iter()
            .map(|f| match &result {
                Ok(()) => rustix::fs::fdatasync(f).map_err(io::Error::from),
                Err(e) => Err(copy_io(e)),
            })
            .collect()
    }
}

/// `io::Error` is not `Clone`; one batch-wide failure is reported to every request in it.
fn copy_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Told of every group commit that made messages durable (the metrics' seam: the spool
/// knows nothing of Prometheus).
pub trait CommitObserver: Send + Sync + fmt::Debug {
    /// `messages` were made durable by one commit that took `took`.
    fn committed(&self, messages: usize, took: Duration);
}

/// Where the committer finds its observer, set at most once after the spool is open.
pub type Observer = Arc<OnceLock<Box<dyn CommitObserver>>>;

/// One finished tmp file waiting to become durable.
#[derive(Debug)]
pub struct CommitRequest {
    /// The tmp file, flushed to the page cache.
    pub file: File,
    /// Where it is now, in `tmp/`.
    pub tmp_path: PathBuf,
    /// Where it goes, in `queue/`.
    pub final_path: PathBuf,
    /// Answered once the file is durable in `queue/`, or with why not.
    pub reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// Handle to the committer thread. The thread stops once every handle is dropped and the
/// requests already sent are answered.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::Sender<CommitRequest>,
}

/// What the committer thread owns.
#[derive(Debug)]
struct Worker {
    queue_dir: File,
    queue_path: PathBuf,
    durability: Arc<dyn Durability>,
    queued: Arc<AtomicUsize>,
    observer: Observer,
}

impl Committer {
    /// Opens `queue_path` (for the directory syncs) and starts the thread. `queued` is
    /// incremented for every message made durable; `observer`, once set, is told of each
    /// group commit.
    pub fn start(
        queue_path: &Path,
        durability: Arc<dyn Durability>,
        queued: Arc<AtomicUsize>,
        observer: Observer,
    ) -> Result<Committer, SpoolError> {
        let queue_dir = File::open(queue_path).map_err(|e| SpoolError::io(queue_path, e))?;
        let worker = Worker {
            queue_dir,
            queue_path: queue_path.to_owned(),
            durability,
            queued,
            observer,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| SpoolError::io(queue_path, e))?;
        Ok(Committer { tx })
    }

    /// Queues a request; gives it back if the thread is gone.
    pub fn submit(&self, req: CommitRequest) -> Result<(), CommitRequest> {
        self.tx.send(req).map_err(|e| e.0)
    }
}

impl Worker {
    fn run(&self, rx: &mpsc::Receiver<CommitRequest>) {
        while let Ok(first) = rx.recv() {
            // Take everything that queued up while the previous batch was syncing: this is
            // where the batching comes from, with no timer and no added latency when idle.
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            self.commit_batch(batch);
        }
    }

    /// Data sync, renames, one directory sync, answers: in that order.
    fn commit_batch(&self, batch: Vec<CommitRequest>) {
        let started = Instant::now();
        let files: Vec<&File> = batch.iter().map(|r| &r.file).collect();
        let mut synced = self.durability.sync_files(&files).into_iter();
        let mut renamed = Vec::with_capacity(batch.len());
        for req in batch {
            let result = synced
                .next()
                .unwrap_or_else(|| Err(io::Error::other("sync skipped")));
            let result = result
                .map_err(|e| SpoolError::io(&req.tmp_path, e))
                .and_then(|()| {
                    fs::rename(&req.tmp_path, &req.final_path)
                        .map_err(|e| SpoolError::io(&req.final_path, e))
                });
            match result {
                Ok(()) => renamed.push(req),
                Err(e) => {
                    tracing::warn!(error = %e, "spool: commit failed");
                    remove_quietly(&req.tmp_path);
                    // The session may have gone away meanwhile; nothing to tell it then.
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if renamed.is_empty() {
            return;
        }
        match self.durability.sync_dir(&self.queue_dir) {
            Ok(()) => {
                self.queued.fetch_add(renamed.len(), Ordering::Relaxed);
                if let Some(observer) = self.observer.get() {
                    observer.committed(renamed.len(), started.elapsed());
                }
                for req in renamed {
                    let _ = req.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.queue_path.display(), "spool: dir sync failed");
                for req in renamed {
                    // The client is told 451 and will retry, so take the file back out: best
                    // effort, as a crash now could still surface it (a duplicate, not a loss).
                    remove_quietly(&req.final_path);
                    let _ = req
                        .reply
                        .send(Err(SpoolError::io(&self.queue_path, copy_io(&e))));
                }
            }
        }
    }
}

/// Removes a file whose removal is only cleanup; a failure is logged, not returned.
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "spool: could not remove file");
    }
}
