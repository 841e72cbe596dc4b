//! A connection pool per upstream: at most `max_connections` sessions, idle ones reused.
//!
//! Reuse skips the TCP, TLS, EHLO and AUTH round trips, which dominate the cost of a small
//! message. The cap counts deliveries in progress (a semaphore); a new connection is opened
//! only when no idle one is left, so live connections never exceed the cap either: every
//! connection is idle or held by a permit holder, and one is created only by a holder that
//! found the idle stack empty. Idle connections live in a stack, so the most recently used
//! (the least likely to have been closed by the upstream) is taken first, and old ones sink
//! to the bottom and expire after `idle_timeout`.
//!
//! An idle connection the upstream closed meanwhile (a `421` and EOF after its own idle
//! timer, RFC 5321 4.5.3.2.7, leaving ours in CLOSE_WAIT) is found at checkout: the RSET
//! that opens every reuse fails, the connection is dropped and the next one (or a new one)
//! is used. That costs a round trip, never a delivery attempt. Expired connections are
//! closed with QUIT by [`Pool::reap_idle`], which the delivery runner calls periodically,
//! and all of them by [`Pool::close_idle`] at shutdown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

use crate::upstream::client::{Client, Outgoing, RcptOutcome, Settings};
use crate::upstream::error::{Error, Stage};

/// An idle connection and when it became idle.
#[derive(Debug)]
struct Idle {
    client: Client,
    since: Instant,
}

/// The connections to one SMTP upstream.
#[derive(Debug)]
pub struct Pool {
    settings: Settings,
    idle_timeout: Duration,
    /// Deliveries in progress, at most `max_connections`.
    permits: Semaphore,
    /// Idle connections, most recently used on top.
    idle: Mutex<Vec<Idle>>,
    /// Connections opened so far (for metrics and tests).
    opened: AtomicU64,
    /// Connections open now, idle or in use.
    open: Arc<AtomicUsize>,
    /// `max_connections`, as the semaphore was made with.
    max: usize,
    /// Transactions per connection before it is closed (0: no limit).
    per_connection: u32,
}

impl Pool {
    /// A pool for the upstream described by `settings`. `max_connections` of 0 is taken as 1.
    /// The connection settings (for `postern probe`).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn new(settings: Settings, max_connections: usize, idle_timeout: Duration) -> Pool {
        let max = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Pool {
            settings,
            idle_timeout,
            permits: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
            open: Arc::new(AtomicUsize::new(0)),
            max,
            per_connection: 0,
        }
    }

    /// Closes each connection with QUIT after `n` transactions (`messages_per_connection`;
    /// 0: no limit).
    pub fn with_messages_per_connection(mut self, n: u32) -> Pool {
        self.per_connection = n;
        self
    }

    /// Connections open now, idle or carrying a delivery.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Deliveries in progress now (each holds, or is opening, a connection).
    pub fn busy(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The upstream's host name (a DSN's Remote-MTA).
    pub fn host(&self) -> &str {
        &self.settings.host
    }

    /// How long a connection may stay idle before it is closed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How many connections this pool has opened since it was made.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sends one message over a pooled or new connection. Waits while `max_connections`
    /// deliveries are in progress. A connection that failed is dropped, never reused (one
    /// that merely lacked an extension the message needs stays: nothing was sent on it);
    /// retrying (here or on another upstream) is the caller's decision.
    pub async fn deliver(&self, msg: &mut Outgoing<'_>) -> Result<Vec<RcptOutcome>, Error> {
        // The semaphore is never closed, so this only fails if that invariant breaks.
        let Ok(_permit) = self.permits.acquire().await else {
            let detail = "connection pool closed".to_owned();
            return Err(Error::Protocol {
                upstream: self.settings.name.clone(),
                stage: Stage::Connect,
                detail,
            });
        };
        let mut client = self.checkout().await?;
        let result = client.send(msg).await;
        let spent = self.per_connection > 0 && client.transactions() >= self.per_connection;
        if spent && client.is_reusable() {
            // Its QUIT runs beside the next delivery (bounded by `Client::quit`'s own limit).
            tokio::spawn(client.quit());
        } else if client.is_reusable() {
            // Pushed back before the permit is released (end of scope): keeps the cap exact.
            self.lock().push(Idle {
                client,
                since: Instant::now(),
            });
        }
        result
    }

    /// An idle connection that answers RSET (RFC 5321 4.1.1.5: also clears a transaction
    /// left open by a message whose recipients were all refused), or a new one.
    async fn checkout(&self) -> Result<Client, Error> {
        while let Some(mut client) = self.pop_idle() {
            match client.reset().await {
                Ok(()) => return Ok(client),
                // Closed by the upstream while idle (421, EOF, reset): not a delivery
                // failure; forget it and try the next.
                Err(e) => debug!(error = %e, "pooled connection gone; dropping it"),
            }
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut client = Client::connect(&self.settings).await?;
        client.count_in(&self.open);
        Ok(client)
    }

    /// Drops expired idle connections and pops the freshest one.
    fn pop_idle(&self) -> Option<Client> {
        let now = Instant::now();
        let mut idle = self.lock();
        idle.retain(|i| now.duration_since(i.since) < self.idle_timeout);
        idle.pop().map(|i| i.client)
    }

    /// Closes idle connections older than `idle_timeout` with QUIT. Call it periodically
    /// (the delivery runner does) so idle connections do not outlive their welcome; expired
    /// ones are also dropped at the next checkout.
    pub async fn reap_idle(&self) {
        quit_all(self.take_expired()).await;
    }

    /// Closes every idle connection with QUIT (shutdown).
    pub async fn close_idle(&self) {
        quit_all(self.take_all()).await;
    }

    /// Removes and returns the idle connections past `idle_timeout`.
    pub(crate) fn take_expired(&self) -> Vec<Client> {
        let now = Instant::now();
        let mut idle = self.lock();
        let (old, fresh): (Vec<Idle>, Vec<Idle>) = idle
            .drain(..)
            .partition(|i| now.duration_since(i.since) >= self.idle_timeout);
        *idle = fresh;
        old.into_iter().map(|i| i.client).collect()
    }

    /// Removes and returns every idle connection.
    pub(crate) fn take_all(&self) -> Vec<Client> {
        self.lock().drain(..).map(|i| i.client).collect()
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock cannot leave the Vec inconsistent: keep going.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Says QUIT on every connection at once (each bounded by [`Client::quit`]'s own limit), so
/// closing many connections takes one round trip, not one each. Dropping the future
/// aborts the rest; their connections are then closed without QUIT.
pub(crate) async fn quit_all(clients: Vec<Client>) {
    let mut set = JoinSet::new();
    for client in clients {
        set.spawn(client.quit());
    }
    while set.join_next().await.is_some() {}
}
