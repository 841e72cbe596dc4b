//! The back end of one session: answers the engine's questions (AUTH, MAIL, RCPT, DATA,
//! the finished message), streams the body to the spool, and builds the envelope and trace
//! headers. No sockets here: `conn.rs` owns the I/O loop and asks (go-smtp's backend seam).
//!
//! A session decides by the rules snapshot it started with, even when a reload swaps in
//! new rules meanwhile.

mod envelope;

use envelope::wrap_octets;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::schema::SenderCheck;
use crate::message::HeaderScan;
use crate::policy::lockout::LockRefusal;
use crate::policy::ratelimit::{Counted, Keys, Refusal};
use crate::policy::{Caps, Identity, MailRefusal, networks};
use crate::reason::Reason;
use crate::rules::{ListenerInfo, Rules};
use crate::server::Runtime;
use crate::server::headers::{Fed, HeaderStage};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Envelope, Question, Verdict};
use crate::spool::SpoolWriter;
use crate::telemetry::events::{self, MessageSummary};
use crate::telemetry::metrics::{AuthResult, ListenerMetrics};
use crate::upstream::route::Origin;
use crate::upstream::wrap;
use crate::users::AuthCheck;

/// The transaction-scoped state kept beside the engine's.
#[derive(Debug, Default)]
struct Tx {
    /// The envelope sender after policy (and rewrite).
    sender: String,
    /// The spool file being written, during DATA.
    writer: Option<SpoolWriter>,
    /// A spool write failed: the message will be refused with 451 at the end.
    write_failed: bool,
    /// Watches the header section for Date / Message-ID.
    scan: HeaderScan,
    /// The body has an octet above 127, declared or not (RFC 6152: the upstream must then
    /// be told `BODY=8BITMIME`, or not be given the message).
    eight_bit: bool,
    /// The header section held back for a check or rewrite, while it is.
    headers: Option<HeaderStage>,
    /// The message will be refused at its end (header check, header too large).
    refusal: Option<(Reply, Reason)>,
    /// The header stage wrote a line over 998 octets (a rewrite can lengthen one).
    head_long: bool,
}

impl Tx {
    /// Appends to the spool file unless a write failed or the message is being refused.
    fn write(&mut self, bytes: &[u8]) {
        if self.write_failed || self.refusal.is_some() || bytes.is_empty() {
            return;
        }
        if let Some(writer) = self.writer.as_mut()
            && let Err(e) = writer.write(bytes)
        {
            warn!(error = %e, "spool write failed");
            self.write_failed = true;
        }
    }

    /// Acts on what the header stage made of the latest bytes: nothing yet, the header
    /// section (checked, perhaps rewritten) and the body bytes after it, or a refusal.
    fn header_stage_done(&mut self, fed: Fed<'_>) {
        match fed {
            Fed::Held => {}
            Fed::TooLarge => {
                self.headers = None;
                self.refusal = Some((Reply::header_too_large(), Reason::HeaderTooLarge));
            }
            Fed::Complete { head, rest } => {
                self.headers = None;
                match head {
                    Ok(head) => {
                        self.head_long = !wrap::fits(&head);
                        self.write(&head);
                        self.write(rest);
                    }
                    Err(refusal) => self.refusal = Some(refusal),
                }
            }
        }
    }
}

/// What the session knows about its client, and what it is sending.
#[derive(Debug)]
pub struct Backend {
    rt: Arc<Runtime>,
    /// The snapshot this session started with, kept to its end.
    pub rules: Arc<Rules>,
    /// The listener's settings from that snapshot.
    pub listener: Arc<ListenerInfo>,
    /// The listener's metrics.
    pub metrics: Arc<ListenerMetrics>,
    /// The client's address, canonical (IPv4-mapped IPv6 as IPv4).
    ip: IpAddr,
    identity: Identity,
    /// `identity.label()`, made once per identity: logs, rate keys and the envelope use it.
    label: Option<String>,
    /// A listener allowlist or a `networks` entry vouches for the client without AUTH.
    allowlisted: bool,
    tx: Tx,
    /// Messages queued in this session.
    messages: u32,
    /// Why the back end closed the session, when it did.
    closed_for: Option<Reason>,
}

/// The session details the trace header needs from the engine.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    /// The HELO/EHLO name.
    pub helo: Option<&'a str>,
    /// EHLO rather than HELO.
    pub esmtp: bool,
    /// TLS in use.
    pub tls: bool,
    /// AUTH succeeded.
    pub authenticated: bool,
}

impl Backend {
    /// The back end for a client at `peer` on `listener`, under `rules`.
    pub fn new(
        rt: Arc<Runtime>,
        rules: Arc<Rules>,
        listener: Arc<ListenerInfo>,
        metrics: Arc<ListenerMetrics>,
        peer: SocketAddr,
    ) -> Backend {
        let ip = networks::canonical(peer.ip());
        let identity = rules.policy.connect_identity(ip);
        let allowlisted = !listener.allow_networks.is_empty()
            && networks::allowed(&listener.allow_networks, ip)
            || matches!(identity, Identity::Device(_));
        Backend {
            rt,
            rules,
            listener,
            metrics,
            ip,
            label: identity.label(),
            identity,
            allowlisted,
            tx: Tx::default(),
            messages: 0,
            closed_for: None,
        }
    }

    /// Answers one question of the engine. The caller has flushed pending replies before
    /// the slow ones (AUTH runs argon2, the message waits for the spool's fsync).
    pub async fn decide(&mut self, question: Question, facts: SessionFacts<'_>) -> Verdict {
        match question {
            Question::Auth {
                mechanism,
                authzid,
                username,
                password,
            } => {
                // Boxed, like the message commit below: these futures are large and rare,
                // and inline they would sit in every idle session's task.
                let (verdict, result) = Box::pin(self.auth(&authzid, &username, &password)).await;
                self.metrics.auth(mechanism, result);
                verdict
            }
            Question::Mail { from, .. } => self.mail(&from.to_string()).await,
            Question::Rcpt { to } => self.rcpt(&to.to_string()).await,
            Question::Data => self.data(),
            Question::Message { envelope } => Box::pin(self.message(envelope, facts)).await,
        }
    }

    /// Refuses AUTH before argon2 runs while the address (or username) is locked out: a
    /// locked-out client learns nothing, even with the right password.
    async fn lockout_check(&self, username: &str) -> Result<(), (Verdict, AuthResult)> {
        let redis = self.rt.redis.as_ref();
        match self.rt.lockout.check_shared(redis, self.ip, username).await {
            Ok(()) => Ok(()),
            Err(LockRefusal::Locked(locked)) => {
                info!(reason = %Reason::Lockout, user = username, by = ?locked.by, remaining = ?locked.remaining, "AUTH refused: locked out");
                let verdict = Verdict::Reject(Reply::locked_out(locked.remaining));
                Err((verdict, AuthResult::LockedOut))
            }
            // RFC 4954 6: 454, the check cannot be done now (the shared lockout's Redis).
            Err(LockRefusal::Unavailable) => {
                let verdict = Verdict::Defer(Reply::temp_auth_failure());
                Err((verdict, AuthResult::Deferred))
            }
        }
    }

    /// Verifies against the *current* accounts, not the session's snapshot: a password
    /// changed or an account removed by a reload is refused at once, even in a session
    /// opened before it (revocation must not wait for the client to reconnect).
    async fn auth(
        &mut self,
        authzid: &str,
        username: &str,
        password: &str,
    ) -> (Verdict, AuthResult) {
        // A locked-out client is told so whatever it sends (454, temporary).
        if let Err(refused) = self.lockout_check(username).await {
            return refused;
        }
        // RFC 4616 2: an authorization identity other than the authentication identity
        // asks to act as someone else; no account here may do that.
        if !authzid.is_empty() && authzid != username {
            warn!(user = %username, authzid = %authzid, "AUTH asked for another authorization identity");
            return (Verdict::Reject(Reply::auth_failed()), AuthResult::Failure);
        }
        let accounts = self.rt.rules().accounts.clone();
        let checked = self.rt.verifier.verify(&accounts, username, password).await;
        // Attempts run in parallel (argon2 takes a while): a lockout that started while
        // this one was verified answers it too, right password or not, so parallel guesses
        // past the limit learn nothing.
        if checked != AuthCheck::Busy
            && let Err(refused) = self.lockout_check(username).await
        {
            return refused;
        }
        match checked {
            AuthCheck::Valid | AuthCheck::Cached => self.authenticated(username, checked),
            AuthCheck::Invalid => {
                // The password is never logged, only that this user failed.
                warn!(reason = %Reason::AuthFailed, user = username, "authentication failed");
                let known = accounts.exists(username);
                let redis = self.rt.redis.as_ref();
                let lockout = &self.rt.lockout;
                let started = lockout.record_failure_shared(redis, self.ip, username, known);
                let verdict = match started.await {
                    Some(locked) => {
                        warn!(reason = %Reason::Lockout, user = username, by = ?locked.by, duration = ?locked.remaining, "AUTH lockout started: too many failures");
                        self.metrics.lockout();
                        self.close(Reply::lockout(), Reason::Lockout)
                    }
                    None => Verdict::Reject(Reply::auth_failed()),
                };
                (verdict, AuthResult::Failure)
            }
            AuthCheck::Busy => {
                // RFC 4954 6: 454 when the check cannot be done now; not counted as a
                // failure, the client retries.
                warn!(
                    user = username,
                    "authentication deferred: verifier queue full"
                );
                (
                    Verdict::Defer(Reply::temp_auth_failure()),
                    AuthResult::Deferred,
                )
            }
        }
    }

    /// The credentials are good (`checked`: verified, or from the cache).
    fn authenticated(&mut self, username: &str, checked: AuthCheck) -> (Verdict, AuthResult) {
        let result = match checked {
            AuthCheck::Cached => AuthResult::Cached,
            _ => AuthResult::Success,
        };
        if !self.rules.accounts.exists(username) {
            // Added by a reload after this session began: its sender rules, caps and
            // limits are only in the new snapshot, which a new session gets.
            let reply = Reply::reconnect_for_new_rules(&self.rules.hostname);
            return (self.close(reply, Reason::StaleRules), result);
        }
        info!(user = username, "authenticated");
        self.identity = Identity::User(username.to_owned());
        self.label = self.identity.label();
        (Verdict::Authenticated, result)
    }

    /// Messages queued in this session so far.
    pub fn messages(&self) -> u32 {
        self.messages
    }

    /// Why the back end closed the session, when it did.
    pub fn closed_for(&self) -> Option<Reason> {
        self.closed_for
    }

    /// Refuses with `reply` for `reason`, logging the reason.
    fn refuse(&self, reply: Reply, reason: Reason) -> Verdict {
        info!(%reason, reply = %reply, "refused");
        self.metrics.message_refused(reason);
        Verdict::Reject(reply)
    }

    /// Ends the session with `reply` for `reason`.
    fn close(&mut self, reply: Reply, reason: Reason) -> Verdict {
        info!(%reason, reply = %reply, "refused; closing the session");
        self.closed_for = Some(reason);
        Verdict::RejectAndClose(reply)
    }

    async fn mail(&mut self, from: &str) -> Verdict {
        let cap = self.rules.limits.max_messages_per_session;
        if cap > 0 && self.messages >= cap {
            let reply = Reply::too_many_messages(&self.rules.hostname);
            return self.close(reply, Reason::TooManyMessages);
        }
        let check = self.sender_check();
        let sender = match self
            .rules
            .policy
            .mail(&self.identity, self.allowlisted, from, check)
        {
            Ok(sender) => sender,
            Err(MailRefusal::SenderNotOwned) => {
                info!(sender = from, identity = ?self.label, "sender not allowed");
                return self.refuse(Reply::sender_not_allowed(), Reason::SenderNotOwned);
            }
            Err(_) => return self.refuse(Reply::auth_required(), Reason::AuthRequired),
        };
        if !self
            .rules
            .upstreams
            .router()
            .takes_origin(&self.origin(&sender))
        {
            return self.refuse(Reply::no_route(), Reason::NoRoute);
        }
        if let Err(refusal) = self.rate(Counted::Message, &sender).await {
            self.metrics.message_refused(Reason::RateLimit);
            return self.rate_limited(&refusal);
        }
        self.tx = Tx {
            sender,
            ..Tx::default()
        };
        Verdict::Accept
    }

    /// What routes match on, besides the recipient.
    fn origin<'a>(&'a self, sender: &'a str) -> Origin<'a> {
        Origin {
            sender,
            listener: &self.listener.name,
            identity: self.label.as_deref(),
        }
    }

    async fn rcpt(&self, to: &str) -> Verdict {
        let origin = self.origin(&self.tx.sender);
        if self.rules.upstreams.router().route(&origin, to).is_none() {
            self.metrics.recipient(false);
            return self.refuse(Reply::no_route_recipient(), Reason::NoRoute);
        }
        let verdict = match self.rate(Counted::Recipient, &self.tx.sender).await {
            Ok(()) => Verdict::Accept,
            Err(refusal) => self.rate_limited(&refusal),
        };
        self.metrics.recipient(verdict == Verdict::Accept);
        verdict
    }

    /// Counts one message or recipient against the rate rules for this client, local then
    /// cluster.
    async fn rate(&self, what: Counted, sender: &str) -> Result<(), Refusal> {
        let user = match &self.identity {
            Identity::User(u) => Some(u.as_str()),
            _ => None,
        };
        let keys = Keys {
            ip: self.ip,
            listener: &self.listener.name,
            identity: self.label.as_deref(),
            user,
            sender_domain: None,
        }
        .with_sender(sender);
        let limits = &self.rules.rate_limits;
        let overrides = limits.overrides_for(&self.identity);
        let redis = self.rt.redis.as_ref();
        limits.check_shared(redis, what, &keys, overrides).await
    }

    /// `450 4.7.1` naming the rule and when to retry. Not counted towards `max_errors`
    /// (like the recipient cap): a client that pipelined past a limit must still reach DATA
    /// with what was accepted, not be disconnected and charged again on its retry.
    /// A cluster rule that cannot be checked and says `deny` gets `451 4.3.0` instead.
    fn rate_limited(&self, refusal: &Refusal) -> Verdict {
        let hit = match refusal {
            Refusal::Limit(hit) => hit,
            Refusal::Unavailable { rule } => {
                return Verdict::Defer(Reply::rate_limit_unavailable(rule));
            }
        };
        info!(reason = %Reason::RateLimit, rule = %hit.rule, limit = %hit.description, retry_after = ?hit.retry_after, "over a rate limit");
        self.rt.metrics.rate_limit_hit(&hit.rule);
        Verdict::Defer(Reply::rate_limit(&hit.rule, hit.retry_after))
    }

    /// The size and recipient caps for the current identity (they change with AUTH, after
    /// which the shell gives them to the engine).
    pub fn caps(&self) -> Caps {
        self.rules.policy.caps(&self.identity)
    }

    /// The `sender_check` in force for this client on this listener.
    fn sender_check(&self) -> SenderCheck {
        let policy = &self.rules.policy;
        policy.sender_check(&self.identity, self.listener.sender_check)
    }

    fn data(&mut self) -> Verdict {
        match self.rt.spool.begin() {
            Ok(writer) => {
                let policy = &self.rules.policy;
                let check = match self.sender_check() {
                    SenderCheck::Header => policy.sender_rules(&self.identity),
                    SenderCheck::Envelope | SenderCheck::Off => None,
                };
                let rewrite = policy.rewrite(&self.identity);
                let limit = self.rules.limits.max_header_size;
                self.tx.headers = HeaderStage::plan(check, rewrite, limit);
                self.tx.writer = Some(writer);
                self.tx.write_failed = false;
                self.tx.refusal = None;
                self.tx.scan = HeaderScan::default();
                self.tx.eight_bit = false;
                self.tx.head_long = false;
                Verdict::Accept
            }
            Err(e) => {
                warn!(error = %e, "cannot create a spool file");
                self.queue_refused(&self.tx.sender, 0)
            }
        }
    }

    /// Appends body bytes the engine decoded to the spool file.
    pub fn body(&mut self, body: &[u8]) {
        if self.tx.writer.is_none() {
            return;
        }
        self.tx.scan.feed(body);
        self.tx.eight_bit = self.tx.eight_bit || !body.is_ascii();
        let Some(stage) = self.tx.headers.as_mut() else {
            self.tx.write(body);
            return;
        };
        let fed = stage.feed(body);
        self.tx.header_stage_done(fed);
    }

    /// The engine refused the message it was receiving: drop the spool file and log the
    /// summary line (it covers refusals too, so an admin can see why a device's mail never
    /// arrived).
    pub fn discard(&mut self, refusal: &Reply, reason: Reason) {
        let tx = std::mem::take(&mut self.tx);
        let size = tx.writer.as_ref().map_or(0, SpoolWriter::written);
        if let Some(writer) = tx.writer {
            writer.abort();
        }
        self.refused_message(&tx.sender, size, refusal, reason);
    }

    /// Counts and logs (the summary line) a message refused for `reason` with `refusal`.
    fn refused_message(&self, sender: &str, size: u64, refusal: &Reply, reason: Reason) {
        self.metrics.message_refused(reason);
        let outcome = format!("refused: {} {}", refusal.code(), refusal.text());
        events::message(&MessageSummary {
            queue_id: "-",
            listener: &self.listener.name,
            client_ip: self.ip,
            identity: self.label.as_deref(),
            sender,
            recipients: 0,
            size,
            outcome: &outcome,
            reason: Some(reason),
        });
    }

    /// `451 4.3.0`: the spool cannot take the message now (full or failing disk); counted
    /// and logged, since it is what an operator most needs to see.
    fn queue_refused(&self, sender: &str, size: u64) -> Verdict {
        let reply = Reply::queue_error();
        self.refused_message(sender, size, &reply, Reason::QueueError);
        Verdict::Defer(reply)
    }

    /// The session is over: a spool file still open is removed.
    pub fn abort(&mut self) {
        if let Some(writer) = self.tx.writer.take() {
            writer.abort();
        }
    }

    async fn message(&mut self, envelope: Envelope, facts: SessionFacts<'_>) -> Verdict {
        if let Some(stage) = self.tx.headers.as_mut() {
            let fed = stage.finish();
            self.tx.header_stage_done(fed);
        }
        if let Some((reply, reason)) = self.tx.refusal.take() {
            self.discard(&reply, reason);
            return Verdict::Reject(reply);
        }
        let mut tx = std::mem::take(&mut self.tx);
        let Some(writer) = tx.writer.take() else {
            return self.queue_refused(&tx.sender, 0);
        };
        if tx.write_failed {
            let size = writer.written();
            writer.abort();
            return self.queue_refused(&tx.sender, size);
        }
        let id = writer.id().to_string();
        let (mut env, prefix) = self.envelope(&tx, &writer, &envelope, facts);
        let mut writer = writer;
        match wrap_octets(&tx, &mut writer, &envelope, &prefix) {
            Ok(n) => env.wrap_octets = n,
            Err(e) => {
                warn!(error = %e, "cannot read the spool file back");
                let size = writer.written();
                writer.abort();
                return self.queue_refused(&tx.sender, size);
            }
        }
        match writer.commit(env.clone(), prefix).await {
            Ok(()) => {
                events::message(&MessageSummary {
                    queue_id: &id,
                    listener: &self.listener.name,
                    client_ip: env.client_ip,
                    identity: env.identity.as_deref(),
                    sender: &env.sender,
                    recipients: env.recipients.len(),
                    size: env.size,
                    outcome: "queued",
                    reason: None,
                });
                let mut env = env;
                env.accepted_ms = self.rt.clock.unix_millis();
                self.metrics.message_accepted(env.size);
                self.messages = self.messages.saturating_add(1);
                self.rt.delivery.submit(env);
                Verdict::Queued(id)
            }
            Err(e) => {
                warn!(error = %e, "spool commit failed");
                self.queue_refused(&env.sender, env.size)
            }
        }
    }
}
