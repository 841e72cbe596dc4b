//! Read-only looks at a spool directory, for the queue tools: the messages in `queue/` with
//! their newest state, and the dead letters in `failed/`. Unlike recovery
//! ([`crate::spool::Spool::open`]) these never take the lock and never change, move or delete
//! a file, so they are safe on the spool of a stopped relay (and harmless on a running one:
//! a file renamed away meanwhile is skipped). Purging dead letters is the one write, and it
//! touches `failed/` only, which postern never reads back.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::spool::SpoolError;
use crate::spool::record::{self, Envelope, QueueId};

/// Suffix of state side files (as in `store.rs`).
const STATE_SUFFIX: &str = ".state";

/// What a look at one directory found.
#[derive(Debug, Default)]
pub struct Found {
    /// The envelopes, oldest id first.
    pub envelopes: Vec<Envelope>,
    /// Message files that could not be decoded, with why (left as they are).
    pub unreadable: Vec<(String, String)>,
}

/// The messages in `<dir>/queue/`, each with the state in its `.state` file when that one
/// is valid.
pub fn queued(dir: &Path) -> Result<Found, SpoolError> {
    look(&dir.join("queue"))
}

/// The dead letters in `<dir>/failed/`.
pub fn failed(dir: &Path) -> Result<Found, SpoolError> {
    look(&dir.join("failed"))
}

fn look(dir: &Path) -> Result<Found, SpoolError> {
    let mut found = Found::default();
    // No directory yet (postern never started on this spool): nothing is queued.
    if !dir.exists() {
        return Ok(found);
    }
    for id in ids(dir)? {
        match read_one(dir, &id) {
            Ok(env) => found.envelopes.push(env),
            Err(why) if why.kind() == io::ErrorKind::NotFound => {}
            Err(why) => found.unreadable.push((id.to_string(), why.to_string())),
        }
    }
    Ok(found)
}

/// The message ids in `dir`, sorted (oldest first).
fn ids(dir: &Path) -> Result<Vec<QueueId>, SpoolError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
        let name = entry.map_err(|e| SpoolError::io(dir, e))?.file_name();
        if let Ok(id) = name.to_string_lossy().parse::<QueueId>() {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// The newest envelope of one message: its state file's, else the one in the message file.
fn read_one(dir: &Path, id: &QueueId) -> io::Result<Envelope> {
    let state = dir.join(format!("{id}{STATE_SUFFIX}"));
    if let Ok(bytes) = fs::read(&state)
        && let Ok(env) = record::decode_state(&bytes)
        && env.id == *id
    {
        return Ok(env);
    }
    let mut file = File::open(dir.join(id.as_str()))?;
    let len = file.metadata()?.len();
    match record::verify_message(&mut file, len)? {
        Ok(m) => Ok(m.envelope),
        Err(reason) => Err(io::Error::other(format!("corrupt record: {reason}"))),
    }
}

/// Removes dead letters from `<dir>/failed/`: the one with `id`, or all of them; returns how
/// many messages were removed.
pub fn purge_failed(dir: &Path, id: Option<&QueueId>) -> Result<usize, SpoolError> {
    let failed = dir.join("failed");
    let ids = match id {
        Some(id) => vec![id.clone()],
        None => ids(&failed)?,
    };
    let mut removed = 0;
    for id in ids {
        let path = failed.join(id.as_str());
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(path, e)),
        }
        let state = failed.join(format!("{id}{STATE_SUFFIX}"));
        match fs::remove_file(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(state, e)),
        }
    }
    Ok(removed)
}
