//! The spool facade: recover on open, stream a message into `tmp/`, commit it durably into
//! `queue/`, record delivery status, remove or dead-letter it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::spool::SpoolError;
use crate::spool::commit::{
    CommitObserver, CommitRequest, Committer, Durability, FdatasyncEach, Observer, SyncFs,
    SyncMode, remove_quietly,
};
use crate::spool::record::{self, Envelope, IdGenerator, QueueId, RecordError};

/// Write buffer of a `SpoolWriter`: a typical message is one write(2) at commit.
const WRITE_BUFFER: usize = 64 * 1024;
/// Suffix of state side files.
const STATE_SUFFIX: &str = ".state";

/// Delivered message files kept in `tmp/` for reuse, at most. Each new message would
/// otherwise allocate an inode and each delivered one free it; rewriting a kept file instead
/// spares the filesystem that churn (on ext4 without a journal, allocation skips every inode
/// freed in the last minute, so at a thousand messages a second the churn, not SMTP,
/// dominated the relay's CPU).
const FREE_FILES: usize = 256;

/// The durable message queue. Cheap to clone; all clones share one committer thread.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<dir>/lock`, held with an exclusive `flock(2)` for as long as the spool is open: two
    /// processes on one spool would delete each other's tmp files and deliver everything twice.
    _lock: File,
    tmp: PathBuf,
    queue: PathBuf,
    failed: PathBuf,
    committer: Committer,
    ids: IdGenerator,
    /// Messages in `queue/`; the committer increments, remove/move_to_failed decrement.
    queued: Arc<AtomicUsize>,
    /// Told of each group commit, once set ([`Spool::observe`]).
    observer: Observer,
    /// Makes names of state tmp files and of kept files unique.
    tmp_seq: AtomicU64,
    /// Delivered message files parked in `tmp/` to be rewritten by [`Spool::begin`]; like
    /// everything in `tmp/`, garbage after a restart.
    free: Mutex<Vec<PathBuf>>,
    /// How many files `free` may hold ([`FREE_FILES`]).
    free_files: usize,
}

/// A committed message opened for delivery: send `prefix`, then `body_len` bytes of `file`.
#[derive(Debug)]
pub struct StoredBody {
    /// Header lines the relay prepended (Received, Date, Message-ID).
    pub prefix: Vec<u8>,
    /// The message file, positioned at the body start. The envelope trailer follows the body,
    /// so read exactly `body_len` bytes (e.g. through `Read::take`).
    pub file: File,
    /// Body length in bytes.
    pub body_len: u64,
}

impl Spool {
    /// Creates `dir` (and `tmp/`, `queue/`, `failed/`) if needed and recovers: returns every
    /// complete message found (oldest id first), deletes torn ones and leftover tmp files
    /// (logging each with `tracing::warn!`). A file that is intact but unreadable by this build
    /// (unknown version) is moved to `failed/` instead of being deleted.
    pub fn open(
        dir: &Path,
        durability: Arc<dyn Durability>,
    ) -> Result<(Spool, Vec<Envelope>), SpoolError> {
        Spool::open_keeping(dir, durability, FREE_FILES)
    }

    /// `open`, keeping at most `free_files` delivered files for reuse (0: none; for the
    /// measurement of what reuse saves).
    fn open_keeping(
        dir: &Path,
        durability: Arc<dyn Durability>,
        free_files: usize,
    ) -> Result<(Spool, Vec<Envelope>), SpoolError> {
        let (tmp, queue, failed) = (dir.join("tmp"), dir.join("queue"), dir.join("failed"));
        for d in [&tmp, &queue, &failed] {
            fs::create_dir_all(d).map_err(|e| SpoolError::io(d, e))?;
        }
        let lock = lock_dir(dir)?;
        clean_tmp(&tmp)?;
        let envelopes = recover_queue(&queue, &failed)?;
        let queued = Arc::new(AtomicUsize::new(envelopes.len()));
        let observer = Observer::default();
        let committer =
            Committer::start(&queue, durability, Arc::clone(&queued), observer.clone())?;
        let inner = Inner {
            _lock: lock,
            tmp,
            queue,
            failed,
            committer,
            ids: IdGenerator::default(),
            queued,
            observer,
            tmp_seq: AtomicU64::new(0),
            free: Mutex::new(Vec::new()),
            free_files,
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            envelopes,
        ))
    }

    /// `open` with real durability, one `fdatasync(2)` per file (see [`Spool::open_with`]).
    pub fn open_default(dir: &Path) -> Result<(Spool, Vec<Envelope>), SpoolError> {
        Spool::open_with(dir, SyncMode::Fdatasync)
    }

    /// `open` with real durability of the given kind (`queue.sync`).
    pub fn open_with(dir: &Path, mode: SyncMode) -> Result<(Spool, Vec<Envelope>), SpoolError> {
        let durability: Arc<dyn Durability> = match mode {
            SyncMode::Fdatasync => Arc::new(FdatasyncEach::default()),
            SyncMode::Syncfs => {
                fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
                Arc::new(SyncFs::anchored(dir).map_err(|e| SpoolError::io(dir, e))?)
            }
        };
        Spool::open(dir, durability)
    }

    /// Starts a new message: a fresh id and its tmp file.
    pub fn begin(&self) -> Result<SpoolWriter, SpoolError> {
        let inner = &self.inner;
        loop {
            let id = inner.ids.next_id();
            // Ids are unique within a process; across restarts only time + 16 random bits
            // separate them, so never hand out one that is still queued.
            if inner.queue.join(id.as_str()).exists() {
                continue;
            }
            let (tmp_path, file) = match self.reuse_free_file() {
                Some(reused) => reused,
                None => {
                    let tmp_path = inner.tmp.join(id.as_str());
                    // Readable too, for `SpoolWriter::read_back`.
                    match OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&tmp_path)
                    {
                        Ok(file) => (tmp_path, file),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(SpoolError::io(&tmp_path, e)),
                    }
                }
            };
            let mut writer = SpoolWriter {
                id,
                tmp_path,
                out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                crc: crc32fast::Hasher::new(),
                written: 0,
                spool: self.clone(),
            };
            writer.put(&record::message_header())?;
            return Ok(writer);
        }
    }

    /// Opens a committed message for delivery. Checks header and footer, not the checksum
    /// (that was verified when the message was recovered or written).
    pub fn open_body(&self, id: &QueueId) -> Result<StoredBody, SpoolError> {
        let path = self.inner.queue.join(id.as_str());
        let io_err = |e| SpoolError::io(&path, e);
        let mut file = File::open(&path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let layout = record::read_layout(&mut file, len)
            .map_err(io_err)?
            .map_err(|reason| SpoolError::Corrupt {
                path: path.clone(),
                reason,
            })?;
        let prefix = record::read_prefix(&mut file, &layout).map_err(io_err)?;
        Ok(StoredBody {
            prefix,
            file,
            body_len: layout.body_len,
        })
    }

    /// Records per-recipient status, attempts and next attempt time by atomically replacing
    /// `queue/ID.state`.
    ///
    /// Deliberately not fsynced: this runs once per delivery attempt, and a crash that loses
    /// the newest update only rolls the message back to an older status, which can cause a
    /// duplicate delivery but never a lost one. A state file torn by such a crash fails its
    /// checksum on recovery and the older state is used.
    pub fn update(&self, env: &Envelope) -> Result<(), SpoolError> {
        let message = self.inner.queue.join(env.id.as_str());
        if let Err(e) = fs::metadata(&message) {
            return Err(SpoolError::io(message, e));
        }
        let dest = self.inner.queue.join(state_name(&env.id));
        self.write_state(env, &dest)
    }

    /// Removes a message after delivery (or after its bounce was queued).
    ///
    /// Not fsynced, for the same reason as `update`: if a crash undoes the removal the message
    /// is delivered again, a duplicate rather than a loss.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.inner.queue.join(id.as_str());
        if !self.park_free_file(&path) {
            fs::remove_file(&path).map_err(|e| SpoolError::io(path, e))?;
        }
        remove_quietly(&self.inner.queue.join(state_name(id)));
        self.forget_one();
        Ok(())
    }

    /// Moves a message that failed for good to `failed/`, with `env` as its final state, for
    /// the admin. Not fsynced: undone by a crash, the message is just tried again.
    pub fn move_to_failed(&self, env: &Envelope) -> Result<(), SpoolError> {
        let inner = &self.inner;
        self.write_state(env, &inner.failed.join(state_name(&env.id)))?;
        let from = inner.queue.join(env.id.as_str());
        let to = inner.failed.join(env.id.as_str());
        fs::rename(&from, &to).map_err(|e| SpoolError::io(from, e))?;
        remove_quietly(&inner.queue.join(state_name(&env.id)));
        self.forget_one();
        Ok(())
    }

    /// Moves a delivered message file out of `queue/` into `tmp/` for reuse, emptied, when
    /// fewer than [`FREE_FILES`] are kept; false when the caller should delete it instead.
    /// Leaving `queue/` by rename is as final as an unlink: both are undone only by a crash,
    /// which at worst delivers the message again.
    ///
    /// Nothing lingers (issue 8): the file is truncated to 0 as it is parked, so a delivered
    /// message is no more readable on disk than an unlinked one (its blocks are freed, not
    /// overwritten, exactly as by an unlink), while its inode is still kept for reuse. The
    /// rename comes first: a crash in between leaves a full file in `tmp/`, which the next
    /// start deletes, never an empty one in `queue/`.
    fn park_free_file(&self, path: &Path) -> bool {
        let has_room = |free: &Vec<PathBuf>| free.len() < self.inner.free_files;
        if !self.inner.free.lock().is_ok_and(|free| has_room(&free)) {
            return false;
        }
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let parked = self.inner.tmp.join(format!("free.{seq}"));
        if fs::rename(path, &parked).is_err() {
            return false;
        }
        // The file system work is done outside the lock; another remove may have filled
        // the list meanwhile, and then this file goes.
        let emptied = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&parked)
            .is_ok();
        match self.inner.free.lock() {
            Ok(mut free) if emptied && has_room(&free) => free.push(parked),
            _ => remove_quietly(&parked),
        }
        true
    }

    /// A kept file, open for writing, with its path in `tmp/`. It was emptied when parked;
    /// it is truncated again only if something wrote to it since. (Measured with
    /// `reuse_saves` on ext4: truncating each kept file as it was reused, as postern did
    /// before it emptied them when parked, made a reused file slower than a new one.)
    fn reuse_free_file(&self) -> Option<(PathBuf, File)> {
        loop {
            let path = self.inner.free.lock().ok()?.pop()?;
            let opened = OpenOptions::new().read(true).write(true).open(&path);
            let emptied = opened.and_then(|file| match file.metadata()?.len() {
                0 => Ok(file),
                _ => file.set_len(0).map(|()| file),
            });
            match emptied {
                Ok(file) => return Some((path, file)),
                // Gone or unusable: forget it and try the next one.
                Err(_) => remove_quietly(&path),
            }
        }
    }

    /// Sets what is told of each group commit (the metrics); a second call is ignored.
    pub fn observe(&self, observer: Box<dyn CommitObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    /// Whether a file can be created, written and removed in the spool (`/readyz`): a
    /// full or read-only filesystem fails here before a client's message does. Blocking.
    pub fn check_writable(&self) -> Result<(), SpoolError> {
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let probe = self.inner.tmp.join(format!("probe.{seq}"));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"probe\n"))
            .map_err(|e| SpoolError::io(&probe, e));
        let removed = fs::remove_file(&probe).map_err(|e| SpoolError::io(&probe, e));
        written.and(removed)
    }

    /// The spool directory (the parent of `queue/`), for the read-only looks of
    /// [`crate::spool::inspect`].
    pub fn dir(&self) -> &Path {
        self.inner.queue.parent().unwrap_or(&self.inner.queue)
    }

    /// Messages currently in the queue (committed, not yet removed or dead-lettered).
    pub fn count(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    fn forget_one(&self) {
        let _ = self
            .inner
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Writes a state file to a unique tmp name, then renames it over `dest`.
    fn write_state(&self, env: &Envelope, dest: &Path) -> Result<(), SpoolError> {
        let bytes = record::encode_state(env).map_err(|reason| SpoolError::Corrupt {
            path: dest.to_owned(),
            reason,
        })?;
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .inner
            .tmp
            .join(format!("{}{STATE_SUFFIX}.{seq}", env.id));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| SpoolError::io(&tmp, e))
            .and_then(|()| fs::rename(&tmp, dest).map_err(|e| SpoolError::io(dest, e)));
        if written.is_err() {
            remove_quietly(&tmp);
        }
        written
    }
}

fn state_name(id: &QueueId) -> String {
    format!("{id}{STATE_SUFFIX}")
}

/// A message being received: the body streams into a tmp file through a 64 KiB buffer.
/// Dropped without `commit`, the tmp file is removed.
pub struct SpoolWriter {
    id: QueueId,
    tmp_path: PathBuf,
    /// `None` once the file was handed to the committer (or closed by `abort`).
    out: Option<BufWriter<File>>,
    /// crc32 of everything written so far, header included.
    crc: crc32fast::Hasher,
    /// Body bytes written (header excluded).
    written: u64,
    spool: Spool,
}

impl fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("id", &self.id)
            .field("tmp_path", &self.tmp_path)
            .field("written", &self.written)
            .field("open", &self.out.is_some())
            .finish()
    }
}

impl SpoolWriter {
    /// The message's queue id.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Appends body bytes. Buffered page-cache writes: fine to call from async code.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        self.put(chunk)?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Body bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads the body written so far back from the file, in order, in pieces of at most
    /// 64 KiB, through `each` (the buffer is flushed first; the write position is kept).
    /// For the rare message whose size on the wire depends on its content (long lines);
    /// the file was just written, so this reads the page cache.
    pub fn read_back(&mut self, each: &mut dyn FnMut(&[u8])) -> Result<(), SpoolError> {
        use std::os::unix::fs::FileExt;
        let io_err = |e| SpoolError::io(&self.tmp_path, e);
        let out = self.out.as_mut().ok_or(SpoolError::CommitterStopped)?;
        out.flush().map_err(io_err)?;
        let file = out.get_ref();
        let mut buf = vec![0; WRITE_BUFFER];
        let mut at = 0;
        while at < self.written {
            let n =
                usize::try_from(self.written - at).map_or(buf.len(), |left| left.min(buf.len()));
            let piece = buf.get_mut(..n).unwrap_or_default();
            file.read_exact_at(piece, record::HEADER_LEN + at)
                .map_err(io_err)?;
            each(piece);
            at += n as u64;
        }
        Ok(())
    }

    /// Finishes the file (`prefix` is what the relay prepends: delivery sends it, then the
    /// body) and returns once envelope, prefix and body are durable in `queue/`. Sets the
    /// stored `env.size` to prefix + body bytes. If this future is dropped after the request
    /// reached the committer, the message may still be queued (and is found again on restart).
    pub async fn commit(mut self, mut env: Envelope, prefix: Vec<u8>) -> Result<(), SpoolError> {
        if env.id != self.id {
            return Err(SpoolError::IdMismatch {
                expected: self.id.clone(),
                found: env.id,
            });
        }
        env.size = prefix.len() as u64 + self.written;
        let trailer = record::message_trailer(self.written, &prefix, &env, self.crc.clone())
            .map_err(|reason| SpoolError::Corrupt {
                path: self.tmp_path.clone(),
                reason,
            })?;
        self.put(&trailer)?;
        let reply = self.hand_off()?;
        reply.await.map_err(|_| SpoolError::CommitterStopped)?
    }

    /// Discards the message and its tmp file.
    pub fn abort(self) {
        drop(self);
    }

    /// Writes into the file and the checksum.
    fn put(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let out = self.out.as_mut().ok_or(SpoolError::CommitterStopped)?;
        out.write_all(bytes)
            .map_err(|e| SpoolError::io(&self.tmp_path, e))?;
        self.crc.update(bytes);
        Ok(())
    }

    /// Flushes the buffer and gives the file to the committer, which from then on owns the
    /// tmp file (renames it, or removes it on failure).
    fn hand_off(&mut self) -> Result<oneshot::Receiver<Result<(), SpoolError>>, SpoolError> {
        let out = self.out.take().ok_or(SpoolError::CommitterStopped)?;
        let file = out
            .into_inner()
            .map_err(|e| SpoolError::io(&self.tmp_path, e.into_error()))?;
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            file,
            tmp_path: self.tmp_path.clone(),
            final_path: self.spool.inner.queue.join(self.id.as_str()),
            reply,
        };
        match self.spool.inner.committer.submit(req) {
            Ok(()) => Ok(rx),
            Err(req) => {
                remove_quietly(&req.tmp_path);
                Err(SpoolError::CommitterStopped)
            }
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // Still holding the file means it never reached the committer: it is ours to delete.
        if let Some(out) = self.out.take() {
            drop(out.into_parts());
            remove_quietly(&self.tmp_path);
        }
    }
}

/// Takes the spool's exclusive lock, or fails if another process (or another open `Spool` in
/// this one) holds it.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    use rustix::fs::{FlockOperation, flock};
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpoolError::Locked { path }),
        Err(e) => Err(SpoolError::io(path, e.into())),
    }
}

/// Removes everything in `tmp/`: messages never committed (no 250 was sent for them) and
/// state files never renamed into place.
fn clean_tmp(tmp: &Path) -> Result<(), SpoolError> {
    for entry in fs::read_dir(tmp).map_err(|e| SpoolError::io(tmp, e))? {
        let path = entry.map_err(|e| SpoolError::io(tmp, e))?.path();
        tracing::warn!(path = %path.display(), "spool: removing uncommitted tmp file");
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| SpoolError::io(&path, e))?;
    }
    Ok(())
}

/// Loads every message in `queue/`, with its newest valid state; drops torn files, moves
/// unreadable-but-intact ones to `failed/`, deletes orphan state files.
fn recover_queue(queue: &Path, failed: &Path) -> Result<Vec<Envelope>, SpoolError> {
    let mut ids = Vec::new();
    let mut states = Vec::new();
    for entry in fs::read_dir(queue).map_err(|e| SpoolError::io(queue, e))? {
        let name = entry.map_err(|e| SpoolError::io(queue, e))?.file_name();
        let name = name.to_string_lossy();
        if let Ok(id) = name.parse::<QueueId>() {
            ids.push(id);
        } else if let Some(id) = name.strip_suffix(STATE_SUFFIX).and_then(|s| s.parse().ok()) {
            states.push(id);
        } else {
            tracing::warn!(file = %name, dir = %queue.display(), "spool: unknown file left alone");
        }
    }
    ids.sort();
    let mut envelopes = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(env) = recover_one(queue, failed, id)? {
            envelopes.push(env);
        }
    }
    for id in states.iter().filter(|id| ids.binary_search(id).is_err()) {
        let path = queue.join(state_name(id));
        tracing::warn!(path = %path.display(), "spool: removing state file without message");
        remove_quietly(&path);
    }
    Ok(envelopes)
}

/// Recovers one message; `None` when it was dropped or set aside.
fn recover_one(queue: &Path, failed: &Path, id: &QueueId) -> Result<Option<Envelope>, SpoolError> {
    let path = queue.join(id.as_str());
    let state_path = queue.join(state_name(id));
    let io_err = |e| SpoolError::io(&path, e);
    let mut file = File::open(&path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    // An I/O error is not proof of a torn file: fail the open rather than delete mail.
    let verified = record::verify_message(&mut file, len)
        .map_err(io_err)?
        .and_then(|m| {
            if m.envelope.id == *id {
                Ok(m.envelope)
            } else {
                Err(RecordError::IdMismatch {
                    found: m.envelope.id,
                })
            }
        });
    let original = match verified {
        Ok(env) => env,
        // A file reaches queue/ only after its data was synced, so a bad checksum or length
        // here means media corruption or a bug, not a crash mid-write: it may be mail that
        // got a 250, so keep it for the admin in failed/ rather than delete it. (Torn
        // writes can only be in tmp/, which is emptied on open.)
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "spool: unreadable message moved to failed/");
            let to = failed.join(id.as_str());
            fs::rename(&path, &to).map_err(|e| SpoolError::io(&path, e))?;
            remove_quietly(&state_path);
            return Ok(None);
        }
    };
    Ok(Some(load_state(&state_path, id).unwrap_or(original)))
}

/// The envelope from `ID.state`, if there is a valid one; an invalid one is deleted.
fn load_state(path: &Path, id: &QueueId) -> Option<Envelope> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "spool: unreadable state file");
            return None;
        }
    };
    match record::decode_state(&bytes) {
        Ok(env) if env.id == *id => Some(env),
        Ok(env) => {
            let reason = RecordError::IdMismatch { found: env.id };
            tracing::warn!(path = %path.display(), %reason, "spool: ignoring state file");
            None
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "spool: deleting bad state file");
            remove_quietly(path);
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::spool::commit::FdatasyncEach;
    use crate::spool::record::{RcptStatus, Recipient};
    use std::io::Read;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn envelope(id: &QueueId) -> Envelope {
        let pending = |address: &str| Recipient {
            address: address.into(),
            status: RcptStatus::Pending,
            dsn: Default::default(),
        };
        Envelope {
            identity: Some("app1".into()),
            body_8bit: true,
            ..Envelope::new(
                id.clone(),
                1_700_000_000,
                String::new(),
                vec![pending("a@example.org"), pending("b@example.org")],
                "submission".into(),
                "192.0.2.7".parse().unwrap(),
            )
        }
    }

    fn open(dir: &Path) -> (Spool, Vec<Envelope>) {
        Spool::open(dir, Arc::new(FdatasyncEach::default())).unwrap()
    }

    /// Writes one message in `chunk`-sized writes and commits it.
    async fn put(spool: &Spool, prefix: &[u8], body: &[u8], chunk: usize) -> Envelope {
        let mut w = spool.begin().unwrap();
        for part in body.chunks(chunk.max(1)) {
            w.write(part).unwrap();
        }
        assert_eq!(w.written(), body.len() as u64);
        let mut env = envelope(w.id());
        w.commit(env.clone(), prefix.to_vec()).await.unwrap();
        env.size = (prefix.len() + body.len()) as u64;
        env
    }

    fn read_body(spool: &Spool, id: &QueueId) -> (Vec<u8>, Vec<u8>) {
        let stored = spool.open_body(id).unwrap();
        let mut body = Vec::new();
        stored
            .file
            .take(stored.body_len)
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body.len() as u64, stored.body_len);
        (stored.prefix, body)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A delivered message's file is kept in tmp/ and rewritten for the next message: the
    /// same inode, no bytes of the longer old message left, and a restart still finds only
    /// what is queued (kept files are tmp/ garbage).
    #[tokio::test]
    async fn delivered_files_are_reused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let long = vec![b'x'; 100_000];
        let first = put(&spool, b"P1\r\n", &long, 4096).await;
        let ino = fs::metadata(dir.path().join("queue").join(first.id.as_str()))
            .unwrap()
            .ino();
        spool.remove(&first.id).unwrap();
        assert_eq!(spool.count(), 0);
        assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
        let second = put(&spool, b"P2\r\n", b"short body\r\n", 3).await;
        let path = dir.path().join("queue").join(second.id.as_str());
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            ino,
            "the kept inode is rewritten"
        );
        assert_eq!(
            read_body(&spool, &second.id),
            (b"P2\r\n".to_vec(), b"short body\r\n".to_vec())
        );
        drop(spool);
        let (_, found) = open(dir.path());
        assert_eq!(found, vec![second]);
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());
    }

    /// Nothing lingers: a delivered message's kept file holds no content (length 0) from
    /// the moment it is parked, in `tmp/` under its `free.N` name; the next message still
    /// reuses that inode, and a kept file someone wrote to is emptied before reuse.
    #[tokio::test]
    async fn parked_files_are_emptied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let secret = b"Subject: payroll\r\n\r\nconfidential\r\n".repeat(300);
        let first = put(&spool, b"Received: x\r\n", &secret, 4096).await;
        let queued = dir.path().join("queue").join(first.id.as_str());
        let ino = fs::metadata(&queued).unwrap().ino();
        spool.remove(&first.id).unwrap();
        let tmp = dir.path().join("tmp");
        let parked = names(&tmp);
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert!(parked[0].starts_with("free."), "{parked:?}");
        let meta = fs::metadata(tmp.join(&parked[0])).unwrap();
        assert_eq!((meta.len(), meta.ino()), (0, ino));
        assert_eq!(meta.blocks(), 0, "no data blocks left");

        // Reused: same inode, and only the new message in it.
        let second = put(&spool, b"P2\r\n", b"short\r\n", 7).await;
        let path = dir.path().join("queue").join(second.id.as_str());
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(
            read_body(&spool, &second.id),
            (b"P2\r\n".to_vec(), b"short\r\n".to_vec())
        );

        // A kept file that something wrote to is emptied before it is reused.
        spool.remove(&second.id).unwrap();
        let parked = tmp.join(&names(&tmp)[0]);
        fs::write(&parked, vec![b'z'; 50_000]).unwrap();
        let third = put(&spool, b"P3\r\n", b"third\r\n", 64).await;
        assert_eq!(
            read_body(&spool, &third.id),
            (b"P3\r\n".to_vec(), b"third\r\n".to_vec())
        );
        drop(spool);
        let (_, found) = open(dir.path());
        assert_eq!(found, vec![third]);
    }

    /// Without room to keep it, a delivered file is unlinked as before.
    #[tokio::test]
    async fn delivered_files_are_unlinked_without_room() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) =
            Spool::open_keeping(dir.path(), Arc::new(FdatasyncEach::default()), 0).unwrap();
        let env = put(&spool, b"P\r\n", b"body\r\n", 64).await;
        spool.remove(&env.id).unwrap();
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());
        assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
    }

    #[tokio::test]
    async fn round_trip_is_byte_exact() {
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let big: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // (prefix, body, write size)
        let table: &[(&[u8], &[u8], usize)] = &[
            (b"Received: from x\r\n", b"Subject: hi\r\n\r\nhello\r\n", 1),
            (b"", b"", 1),
            (b"Date: now\r\n", b"", 1),
            (b"", b"x", 1),
            (b"Received: \xc3\xa7\r\n", &all_bytes, 7),
            (b"Message-ID: <a@b>\r\n", &big, 65_536),
            (b"Message-ID: <a@b>\r\n", &big, 100_003),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (spool, found) = open(dir.path());
        assert!(found.is_empty());
        let mut expected = Vec::new();
        for &(prefix, body, chunk) in table {
            let env = put(&spool, prefix, body, chunk).await;
            assert_eq!(read_body(&spool, &env.id), (prefix.to_vec(), body.to_vec()));
            expected.push(env);
        }
        assert_eq!(spool.count(), table.len());
        drop(spool);
        let (spool, found) = open(dir.path());
        assert_eq!(found, expected);
        assert_eq!(spool.count(), table.len());
        for (&(prefix, body, _), env) in table.iter().zip(&found) {
            assert_eq!(read_body(&spool, &env.id), (prefix.to_vec(), body.to_vec()));
        }
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    #[tokio::test]
    async fn torn_files_are_dropped_and_good_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let good = put(&spool, b"P: 1\r\n", b"good body\r\n", 4).await;
        let victim = put(&spool, b"P: 2\r\n", b"victim body\r\n", 4).await;
        drop(spool);
        let path = dir.path().join("queue").join(victim.id.as_str());
        let full = fs::read(&path).unwrap();
        let n = full.len();
        // Truncation points: empty, inside the header, at the body, inside the trailer, one short.
        let cuts = [
            0,
            1,
            15,
            16,
            17,
            n / 2,
            n - 33,
            n - 32,
            n - 31,
            n - 4,
            n - 1,
        ];
        for cut in cuts {
            fs::write(&path, &full[..cut]).unwrap();
            // A matching state file must go with it.
            fs::write(
                dir.path()
                    .join("queue")
                    .join(format!("{}.state", victim.id)),
                b"x",
            )
            .unwrap();
            // Garbage and half-written files in tmp/.
            fs::write(
                dir.path().join("tmp").join(victim.id.as_str()),
                &full[..cut],
            )
            .unwrap();
            fs::write(dir.path().join("tmp").join("junk.state.3"), b"\0\0").unwrap();
            let (spool, found) = open(dir.path());
            assert_eq!(found, vec![good.clone()], "cut {cut}");
            assert_eq!(spool.count(), 1);
            assert_eq!(
                names(&dir.path().join("queue")),
                vec![good.id.to_string()],
                "cut {cut}"
            );
            assert!(names(&dir.path().join("tmp")).is_empty(), "cut {cut}");
        }
        // A flipped body byte fails the crc32 the same way.
        let mut flipped = full.clone();
        flipped[20] ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        let (_, found) = open(dir.path());
        assert_eq!(found, vec![good.clone()]);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn uncommitted_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let mut dropped = spool.begin().unwrap();
        dropped.write(b"half a message").unwrap();
        drop(dropped);
        let mut aborted = spool.begin().unwrap();
        aborted.write(&[0u8; 100_000]).unwrap();
        aborted.abort();
        assert!(names(&dir.path().join("tmp")).is_empty());
        // A writer that never finished (as in a crash) stays in tmp/ until the next open.
        let mut crashed = spool.begin().unwrap();
        crashed.write(&[b'x'; 70_000]).unwrap();
        let leftover = dir.path().join("tmp").join(crashed.id().as_str());
        drop((crashed, spool));
        fs::write(&leftover, [b'x'; 70_000]).unwrap();
        let (spool, found) = open(dir.path());
        assert!(found.is_empty());
        assert_eq!(spool.count(), 0);
        assert!(names(&dir.path().join("tmp")).is_empty());
        assert!(names(&dir.path().join("queue")).is_empty());
    }

    #[tokio::test]
    async fn update_remove_and_failed_persist() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let mut kept = put(&spool, b"", b"one\r\n", 64).await;
        let removed = put(&spool, b"", b"two\r\n", 64).await;
        let mut dead = put(&spool, b"", b"three\r\n", 64).await;
        let stale = put(&spool, b"", b"four\r\n", 64).await;

        kept.attempts = 2;
        kept.next_attempt_unix = 1_700_000_999;
        kept.recipients[0].status = RcptStatus::Delivered {
            upstream: "m365".into(),
            reply: "250 2.0.0 OK".into(),
        };
        spool.update(&kept).unwrap();
        spool.remove(&removed.id).unwrap();
        dead.recipients[1].status = RcptStatus::Failed {
            reply: "550 5.1.1 unknown".into(),
        };
        spool.update(&dead).unwrap();
        spool.move_to_failed(&dead).unwrap();
        // A state update torn by a crash: recovery falls back to the committed envelope.
        let mut newer = stale.clone();
        newer.attempts = 9;
        spool.update(&newer).unwrap();
        let state = dir.path().join("queue").join(format!("{}.state", stale.id));
        let bytes = fs::read(&state).unwrap();
        fs::write(&state, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(spool.count(), 2);

        assert!(matches!(
            spool.remove(&removed.id),
            Err(SpoolError::Io { .. })
        ));
        assert!(matches!(spool.update(&removed), Err(SpoolError::Io { .. })));
        assert_eq!(spool.count(), 2);
        drop(spool);

        let (spool, found) = open(dir.path());
        assert_eq!(found, vec![kept.clone(), stale.clone()]);
        assert_eq!(spool.count(), 2);
        let failed = dir.path().join("failed");
        assert_eq!(
            names(&failed),
            vec![dead.id.to_string(), format!("{}.state", dead.id)]
        );
        let dead_state = fs::read(failed.join(format!("{}.state", dead.id))).unwrap();
        assert_eq!(record::decode_state(&dead_state).unwrap(), dead);
        assert_eq!(
            names(&dir.path().join("queue")),
            vec![
                kept.id.to_string(),
                format!("{}.state", kept.id),
                stale.id.to_string()
            ]
        );
    }

    /// `queue.sync: syncfs`: a spool opened with it commits and recovers like the default.
    #[tokio::test]
    async fn syncfs_spool_commits_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_with(dir.path(), SyncMode::Syncfs).unwrap();
        let env = put(&spool, b"P\r\n", b"body\r\n", 2).await;
        drop(spool);
        let (spool, found) = Spool::open_with(dir.path(), SyncMode::Syncfs).unwrap();
        assert_eq!(found, vec![env.clone()]);
        assert_eq!(
            read_body(&spool, &env.id),
            (b"P\r\n".to_vec(), b"body\r\n".to_vec())
        );
    }

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let clone = spool.clone();
        let err = Spool::open_default(dir.path()).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
        drop(spool);
        assert!(matches!(
            Spool::open_default(dir.path()),
            Err(SpoolError::Locked { .. })
        ));
        drop(clone);
        assert!(Spool::open_default(dir.path()).is_ok());
    }

    #[tokio::test]
    async fn open_body_and_commit_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let missing: QueueId = "0000000000000000".parse().unwrap();
        let err = spool.open_body(&missing).unwrap_err();
        assert!(
            matches!(err, SpoolError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        let w = spool.begin().unwrap();
        let other = envelope(&missing);
        let err = w.commit(other, Vec::new()).await.unwrap_err();
        assert!(matches!(err, SpoolError::IdMismatch { .. }), "{err}");
        assert!(names(&dir.path().join("tmp")).is_empty());
        assert_eq!(spool.count(), 0);
    }

    #[tokio::test]
    async fn intact_but_unknown_version_goes_to_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(dir.path());
        let env = put(&spool, b"", b"body\r\n", 64).await;
        drop(spool);
        // Rewrite the envelope schema version to 2 and fix up the crc32, as a newer build would.
        let path = dir.path().join("queue").join(env.id.as_str());
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.windows(6).position(|w| w == br#""v":1,"#).unwrap();
        bytes[at + 4] = b'2';
        let crc_at = bytes.len() - 8;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let (_, found) = open(dir.path());
        assert!(found.is_empty());
        assert_eq!(names(&dir.path().join("failed")), vec![env.id.to_string()]);
    }

    /// Durability that fails on demand and counts what it is asked to do.
    #[derive(Debug, Default)]
    struct Faulty {
        fail_file: bool,
        fail_dir: bool,
        /// Delay of the first file sync, so that concurrent commits pile up behind it.
        first_delay: Option<Duration>,
        file_syncs: Mutex<usize>,
        dir_syncs: Mutex<usize>,
    }

    impl Durability for Faulty {
        fn sync_file(&self, f: &File) -> io::Result<()> {
            let first = {
                let mut n = self.file_syncs.lock().unwrap();
                *n += 1;
                *n == 1
            };
            if let (true, Some(delay)) = (first, self.first_delay) {
                std::thread::sleep(delay);
            }
            if self.fail_file {
                Err(io::Error::from_raw_os_error(5))
            } else {
                f.sync_data()
            }
        }

        fn sync_dir(&self, d: &File) -> io::Result<()> {
            *self.dir_syncs.lock().unwrap() += 1;
            if self.fail_dir {
                Err(io::Error::from_raw_os_error(28))
            } else {
                d.sync_all()
            }
        }
    }

    #[tokio::test]
    async fn failed_sync_means_not_queued() {
        // (fail file sync, fail dir sync, expected errno)
        let table = [(true, false, 5), (false, true, 28)];
        for (fail_file, fail_dir, errno) in table {
            let dir = tempfile::tempdir().unwrap();
            let faulty = Arc::new(Faulty {
                fail_file,
                fail_dir,
                ..Faulty::default()
            });
            let (spool, _) = Spool::open(dir.path(), faulty.clone()).unwrap();
            let mut w = spool.begin().unwrap();
            w.write(b"body\r\n").unwrap();
            let env = envelope(w.id());
            let err = w.commit(env, Vec::new()).await.unwrap_err();
            match err {
                SpoolError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(errno)),
                other => panic!("unexpected {other}"),
            }
            assert_eq!(spool.count(), 0);
            assert!(names(&dir.path().join("tmp")).is_empty());
            drop(spool);
            let (spool, found) = open(dir.path());
            assert!(found.is_empty(), "{fail_file} {fail_dir}");
            assert_eq!(spool.count(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_share_directory_syncs() {
        const N: usize = 20;
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(Faulty {
            first_delay: Some(Duration::from_millis(100)),
            ..Faulty::default()
        });
        let (spool, _) = Spool::open(dir.path(), faulty.clone()).unwrap();
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(
                    async move { put(&spool, b"", format!("m{i}\r\n").as_bytes(), 8).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let dir_syncs = *faulty.dir_syncs.lock().unwrap();
        assert_eq!(*faulty.file_syncs.lock().unwrap(), N);
        assert!(dir_syncs < N, "{dir_syncs} directory syncs for {N} commits");
        assert_eq!(spool.count(), N);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_hundred_commits_from_twenty_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_default(dir.path()).unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|t| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    let mut envs = Vec::new();
                    for i in 0..10 {
                        let body = format!("task {t} message {i}\r\n").repeat(50);
                        envs.push(put(&spool, b"X: y\r\n", body.as_bytes(), 100).await);
                    }
                    envs
                })
            })
            .collect();
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(t.await.unwrap());
        }
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(spool.count(), 200);
        drop(spool);
        let (spool, found) = Spool::open_default(dir.path()).unwrap();
        assert_eq!(found.len(), 200);
        assert_eq!(found, expected);
        assert_eq!(spool.count(), 200);
    }

    /// Counts the batches (directory syncs) of a real durability strategy.
    #[derive(Debug)]
    struct Batches(Arc<dyn Durability>, AtomicUsize);

    impl Durability for Batches {
        fn sync_file(&self, f: &File) -> io::Result<()> {
            self.0.sync_file(f)
        }

        fn sync_dir(&self, d: &File) -> io::Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.sync_dir(d)
        }

        fn sync_files(&self, files: &[&File]) -> Vec<io::Result<()>> {
            self.0.sync_files(files)
        }
    }

    /// Durability that does nothing: isolates the filesystem's own cost (inode and block
    /// allocation, truncation) in [`reuse_saves`].
    #[derive(Debug)]
    struct NoSync;

    impl Durability for NoSync {
        fn sync_file(&self, _: &File) -> io::Result<()> {
            Ok(())
        }

        fn sync_dir(&self, _: &File) -> io::Result<()> {
            Ok(())
        }
    }

    /// What keeping delivered files for reuse saves: N messages of 10 KiB committed and
    /// removed one after the other, with reuse and without, with real fdatasync and with
    /// none, three rounds interleaved. A measurement, not a test: it asserts nothing about
    /// speed. Run with
    /// `cargo test --release --lib -- --ignored --nocapture reuse_saves`.
    #[test]
    #[ignore = "measurement, touches the disk for some seconds"]
    fn reuse_saves() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = vec![b'a'; 10 * 1024];
        for round in 1..=3 {
            for (sync, n) in [("no sync", 5_000), ("fdatasync", 300)] {
                for keep in [FREE_FILES, 0] {
                    let durability: Arc<dyn Durability> = match sync {
                        "fdatasync" => Arc::new(FdatasyncEach { max_threads: 1 }),
                        _ => Arc::new(NoSync),
                    };
                    let dir = tempfile::tempdir().unwrap();
                    let (spool, _) = Spool::open_keeping(dir.path(), durability, keep).unwrap();
                    let start = Instant::now();
                    rt.block_on(async {
                        for _ in 0..n {
                            let env = put(&spool, b"Received: x\r\n", &body, 64 * 1024).await;
                            spool.remove(&env.id).unwrap();
                        }
                    });
                    let secs = start.elapsed().as_secs_f64();
                    let how = if keep > 0 { "reuse" } else { "no reuse" };
                    println!(
                        "round {round}, {sync}, {how}: {n} commit+remove in {secs:.2} s = {:.1} us each",
                        secs * 1e6 / f64::from(n)
                    );
                }
            }
        }
    }

    /// Throughput of 20 concurrent writers of 10 KiB messages under each real durability
    /// strategy. Run with `cargo test --release -- --ignored --nocapture throughput`.
    #[test]
    #[ignore = "measurement, touches the disk for a few seconds"]
    fn throughput() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let strategies: Vec<(&str, Arc<dyn Durability>)> = vec![
            (
                "fdatasync, serial",
                Arc::new(FdatasyncEach { max_threads: 1 }),
            ),
            (
                "fdatasync, 8 threads",
                Arc::new(FdatasyncEach { max_threads: 8 }),
            ),
            ("syncfs", Arc::new(SyncFs::default())),
        ];
        for (name, durability) in strategies {
            let counted = Arc::new(Batches(durability, AtomicUsize::new(0)));
            let dir = tempfile::tempdir().unwrap();
            let (spool, _) = Spool::open(dir.path(), counted.clone()).unwrap();
            let n = 20 * 150;
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let spool = spool.clone();
                        tokio::spawn(async move {
                            for _ in 0..150 {
                                put(&spool, b"Received: x\r\n", &[b'a'; 10 * 1024], 4096).await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let secs = start.elapsed().as_secs_f64();
            let batches = counted.1.load(Ordering::Relaxed);
            println!(
                "{name}: {n} msgs in {secs:.2} s = {:.0} msgs/s, {batches} batches (avg {:.1})",
                n as f64 / secs,
                n as f64 / batches as f64
            );
        }
    }
}
