//! Accept loops: one per listener, with backoff when accept itself fails (EMFILE and
//! friends). Each connection then runs in its own task: the PROXY header if the listener
//! takes one, admission on the client's real address, and the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info, warn};

use crate::config::schema::ListenerTls;
use crate::rules::{ListenerInfo, Rules};
use crate::server::Runtime;
use crate::server::admission::{Caps, Gate, Permits, Refusal};
use crate::server::conn;
use crate::server::fdlimit::Spare;
use crate::server::proxy::{self, Client, Refused};
use crate::shutdown::Shutdown;
use crate::smtp::reply::Reply;
use crate::telemetry::metrics::{ConnResult, ListenerMetrics};

/// A bound listener ready to serve.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Its settings at start. Each connection takes them from the current rules instead
    /// (a reload may change `auth` and `allow_networks`); the reloader keeps every bound
    /// listener in them, so this is only a fallback.
    pub info: Arc<ListenerInfo>,
    /// Its own cap, if configured.
    pub own_cap: Option<Arc<Semaphore>>,
    /// Its metrics.
    pub metrics: Arc<ListenerMetrics>,
}

/// Accepts until shutdown; each connection runs in its own tracked task.
pub async fn run(listener: Listener, rt: Arc<Runtime>, caps: Caps, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(5);
    let mut spare = Spare::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.stop.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e)
                if Spare::is_exhaustion(&e)
                    && spare
                        .refuse_one(
                            &listener.socket,
                            &rt.rules().hostname,
                            &listener.info.name,
                            &listener.metrics,
                        )
                        .await =>
            {
                continue;
            }
            Err(e) => {
                // Out of memory, or of descriptors with no spare to give up: wait and try
                // again rather than spin (mini-redis accept backoff), doubling up to one
                // second.
                warn!(listener = %listener.info.name, error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let rules = rt.rules();
        let info = rules
            .listener(&listener.info.name)
            .unwrap_or(&listener.info)
            .clone();
        let reserved = reserve(&listener, &rules, &info, &rt, &caps, &shutdown, peer);
        // A refusal holds no connection slot while its header is read and its reply
        // written, only one of the few refusal slots; past them it is closed at once.
        let refusing = match &reserved {
            Ok(_) => None,
            Err(refusal) => match caps.refusals.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refused_silently(&listener.metrics, &info.name, peer, &refusal.result);
                    continue;
                }
            },
        };
        let span = tracing::info_span!(
            "session",
            session = %session_id(),
            listener = %listener.info.name,
            client = tracing::field::Empty,
            proxy = tracing::field::Empty,
        );
        let arrival = Arrival {
            tcp,
            peer,
            rules,
            info,
            reserved,
            refusing,
            own_cap: listener.own_cap.clone(),
            metrics: listener.metrics.clone(),
        };
        let task = connection(arrival, rt.clone(), caps.clone(), shutdown.clone());
        shutdown.tracker.spawn(task.instrument(span));
    }
    info!(listener = %listener.info.name, "stopped accepting");
}

/// In the accept loop, in order of arrival: the drain's refusal, or the caps that do not
/// depend on the client's address (see [`Gate::reserve`]); on a listener without
/// `proxy_protocol` the allowlist comes first, as it did before ([`Gate::allowlist`]).
fn reserve(
    listener: &Listener,
    rules: &Rules,
    info: &ListenerInfo,
    rt: &Runtime,
    caps: &Caps,
    shutdown: &Shutdown,
    peer: SocketAddr,
) -> Result<Permits, Refusal> {
    if shutdown.draining.load(Ordering::Relaxed) {
        // A queue drain: new mail goes elsewhere while the queue empties.
        return Err(Refusal {
            reply: Reply::shutting_down(&rules.hostname),
            result: ConnResult::Draining,
        });
    }
    let gate = Gate {
        rt,
        rules,
        info,
        caps,
        own_cap: listener.own_cap.as_ref(),
    };
    if info.proxy_protocol.is_none() {
        gate.allowlist(peer)?;
    }
    gate.reserve(peer)
}

/// One accepted connection, with what its task needs.
struct Arrival {
    tcp: TcpStream,
    peer: SocketAddr,
    /// The rules snapshot the connection is admitted and served under.
    rules: Arc<Rules>,
    /// The listener's settings in it.
    info: Arc<ListenerInfo>,
    /// The slots [`reserve`] took, or its refusal.
    reserved: Result<Permits, Refusal>,
    /// The refusal slot held for that refusal.
    refusing: Option<OwnedSemaphorePermit>,
    own_cap: Option<Arc<Semaphore>>,
    metrics: Arc<ListenerMetrics>,
}

/// One connection from accept to close: the PROXY header, admission on the client's
/// address, and the session or its refusal.
async fn connection(arrival: Arrival, rt: Arc<Runtime>, caps: Caps, shutdown: Shutdown) {
    let Arrival {
        mut tcp,
        peer,
        rules,
        info,
        reserved,
        mut refusing,
        own_cap,
        metrics,
    } = arrival;
    let client = match identify(&mut tcp, peer, &rules, &info, reserved.is_ok()).await {
        Ok(client) => client,
        Err(refused) => return closed(&metrics, &info.name, peer, &refused),
    };
    let gate = Gate {
        rt: &rt,
        rules: &rules,
        info: &info,
        caps: &caps,
        own_cap: own_cap.as_ref(),
    };
    let verdict = match reserved {
        Ok(held) => gate.admit(client.addr, held).await,
        Err(refusal) => Err(refusal),
    };
    let (refusal, permits) = match verdict {
        Ok(permits) => (None, permits),
        Err(refusal) => {
            if refusing.is_none() {
                let Ok(permit) = caps.refusals.clone().try_acquire_owned() else {
                    return refused_silently(&metrics, &info.name, client.addr, &refusal.result);
                };
                refusing = Some(permit);
            }
            (Some(refusal), Permits::default())
        }
    };
    metrics.connection(
        refusal
            .as_ref()
            .map_or(&ConnResult::Accepted, |r| &r.result),
    );
    let accepted = conn::Accepted {
        tcp,
        peer: client.addr,
        refusal: refusal.map(|r| r.reply),
        watch_proxy: client.watch,
        hello_waited: client.waited,
    };
    let _held = (permits, refusing);
    conn::serve(accepted, rt.clone(), rules.clone(), info, metrics, shutdown).await;
}

/// The PROXY protocol stage, with the session span's `client` (and `proxy`, the load
/// balancer) recorded once known. On an implicit-TLS listener, waiting for a direct
/// client's first bytes is part of its handshake's time (shorter for one already refused).
async fn identify(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    rules: &Rules,
    info: &ListenerInfo,
    reserved: bool,
) -> Result<Client, Refused> {
    let span = tracing::Span::current();
    let hello = (info.tls == ListenerTls::Implicit).then(|| conn::handshake_limit(rules, reserved));
    let header = rules.timeouts.proxy_header.get();
    let client = proxy::identify(tcp, peer, info.proxy_protocol.as_ref(), header, hello).await;
    match &client {
        Ok(c) => {
            span.record("client", tracing::field::display(c.addr));
            if let Some(via) = c.via {
                span.record("proxy", tracing::field::display(via));
            }
        }
        Err(_) => {
            span.record("client", tracing::field::display(peer));
        }
    }
    client
}

/// A connection closed by the PROXY stage: logged and counted.
fn closed(metrics: &ListenerMetrics, listener: &str, peer: SocketAddr, refused: &Refused) {
    let result = match refused {
        Refused::Untrusted(_) => ConnResult::ProxyUntrusted,
        Refused::Header(proxy::HeaderError::Invalid(_)) => ConnResult::ProxyInvalid,
        Refused::Header(proxy::HeaderError::Missing(_)) => ConnResult::ProxyMissing,
    };
    warn!(listener, tcp_peer = %peer, reason = result.as_str(), error = %refused, "PROXY protocol: connection closed");
    metrics.connection(&result);
}

/// A refused connection past the refusal cap: counted, and closed without a reply.
fn refused_silently(
    metrics: &ListenerMetrics,
    listener: &str,
    peer: SocketAddr,
    result: &ConnResult,
) {
    metrics.connection(result);
    debug!(listener, client = %peer, "refusal cap reached: closed without a reply");
}

/// A short random id that names a session in every log line.
fn session_id() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}
