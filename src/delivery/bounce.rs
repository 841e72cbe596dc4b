//! Bounces and delay warnings (RFC 3461, 3464): after each attempt the runner reports the
//! recipients that failed for good in it, in one notification per message, and once per
//! message warns of a long delay when `queue.delay_warning` is set.
//!
//! A notification is an ordinary message: written into the spool through the writer and
//! its commit (so it is as durable as any accepted message), then handed to the runner, so
//! it takes the normal routes (the null sender's route) with retries and failover. Only
//! once it is committed are the recipients it covers marked reported; a crash in between
//! sends it twice, never not at all.
//!
//! Never sent: for a null-sender message (RFC 5321 4.5.5 / RFC 3461 6.2; so never a bounce
//! of a bounce), or for a recipient whose NOTIFY leaves the event out (RFC 3461 4.1).

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr};

use tracing::{info, warn};

use crate::delivery::Runner;
use crate::delivery::report::{Action, RcptReport, Report};
use crate::rules::Timing;
use crate::smtp::dsn::{RcptParams, Ret};
use crate::spool::{Envelope, RcptDsn, RcptStatus, Recipient, SpoolError, SpoolWriter};
use crate::telemetry::metrics::DsnAction;
use crate::upstream::wrap::{Count, Wrapper};

/// Bytes read from the original per step while it is copied into a notification.
const CHUNK: usize = 64 * 1024;
/// Most octets of the original's header section returned with RET=HDRS.
const HEADERS_MAX: usize = 1024 * 1024;

/// The parameters relayed to a DSN-capable upstream for one recipient (RFC 3461 5.2.1).
pub(super) fn relayed_params(dsn: &RcptDsn) -> RcptParams {
    RcptParams {
        notify: dsn.notify,
        orcpt: dsn.orcpt.clone(),
    }
}

/// After an attempt without DSN at `upstream`: the `pending` recipients it took are
/// ours to report as relayed, if they asked for success notices (RFC 3461 4.1).
pub(super) fn note_relayed(env: &mut Envelope, pending: &[usize], upstream: &str) {
    for &i in pending {
        let Some(r) = env.recipients.get_mut(i) else {
            continue;
        };
        if matches!(r.status, RcptStatus::Delivered { .. }) {
            r.dsn.relayed = true;
            r.dsn.remote = Some(upstream.to_owned());
        }
    }
}

/// Whether `r`'s outcome is due to be reported as `action` (and not yet reported).
fn due(r: &Recipient, action: Action) -> bool {
    let outcome = match action {
        Action::Failed => matches!(r.status, RcptStatus::Failed { .. }),
        Action::Relayed => matches!(r.status, RcptStatus::Delivered { .. }) && r.dsn.relayed,
        Action::Delayed => false,
    };
    outcome && !r.dsn.reported
}

impl Runner {
    /// Reports the recipients that failed for good, and those relayed without DSN that
    /// asked for success notices, each set in one notification. Returns false when a
    /// wanted notification could not be queued: the message must then stay in the queue so
    /// the next pass tries again.
    ///
    /// With `queue.bounces: dead_letter` only the recipients that asked for failure notices
    /// with NOTIFY get one: DSN is advertised, so an explicit request is honoured (RFC 3461
    /// 4.1); the others are left to the dead-letter directory.
    pub(super) async fn report_outcomes(&self, env: &mut Envelope, timing: Timing) -> bool {
        let failed = self.report(env, Action::Failed, timing.bounces.dsn()).await;
        let relayed = self.report(env, Action::Relayed, true).await;
        failed && relayed
    }

    /// Reports the recipients [`due`] as `action` that want it (all who want it when
    /// `by_default`, else only those who asked with NOTIFY); marks them reported once the
    /// notification is queued (or none is wanted).
    async fn report(&self, env: &mut Envelope, action: Action, by_default: bool) -> bool {
        if !env.recipients.iter().any(|r| due(r, action)) {
            return true;
        }
        let wanted: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| {
                let r = &env.recipients[i];
                due(r, action)
                    && match action {
                        Action::Relayed => r.dsn.wants_success(),
                        _ if by_default => r.dsn.wants_failure(),
                        _ => r.dsn.asked_for_failure(),
                    }
            })
            .collect();
        let send = !env.sender.is_empty() && !wanted.is_empty();
        if send && let Err(e) = self.notify(env, &wanted, action).await {
            warn!(queue_id = %env.id, error = %e, action = action_name(action), "cannot queue the delivery status notification; will try again");
            return false;
        }
        for r in env.recipients.iter_mut().filter(|r| due(r, action)) {
            r.dsn.reported = true;
        }
        true
    }

    /// A message done with failed recipients (their bounce queued, as configured): kept in
    /// `failed/` (`queue.bounces: dead_letter | both`) or removed (`dsn`).
    pub(super) fn failed(&self, env: &Envelope, timing: Timing) {
        let id = env.id.as_str();
        let kept = timing.bounces.dead_letter();
        let result = match kept {
            true => self.spool.move_to_failed(env),
            false => self.spool.remove(&env.id),
        };
        match (result, kept) {
            (Ok(()), true) => {
                warn!(queue_id = %id, "message failed for some recipients; kept in the failed directory")
            }
            (Ok(()), false) => {
                warn!(queue_id = %id, "message failed for some recipients; removed after its bounce")
            }
            (Err(e), _) => {
                warn!(queue_id = %id, error = %e, "cannot move the failed message out of the queue");
                // Record its final state (and that its bounce is queued), so that a restart
                // finishes it instead of trying or bouncing it again.
                if let Err(e) = self.spool.update(env) {
                    warn!(queue_id = %id, error = %e, "cannot record delivery state");
                }
            }
        }
    }

    /// Once per message, after `queue.delay_warning`: an `Action: delayed` notification for
    /// the pending recipients whose NOTIFY has DELAY (or who gave none).
    pub(super) async fn warn_delay(&self, env: &mut Envelope, timing: Timing) {
        let Some(after) = timing.delay_warning else {
            return;
        };
        let age = self.clock.unix().saturating_sub(env.received_unix);
        if env.dsn.delay_warned || age < after.as_secs() {
            return;
        }
        let wanted: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| {
                let r = &env.recipients[i];
                r.status == RcptStatus::Pending && r.dsn.wants_delay()
            })
            .collect();
        if !env.sender.is_empty()
            && !wanted.is_empty()
            && let Err(e) = self.notify(env, &wanted, Action::Delayed).await
        {
            warn!(queue_id = %env.id, error = %e, "cannot queue the delay warning; will try again");
            return;
        }
        env.dsn.delay_warned = true;
    }

    /// Writes the notification about `rcpts` of `env` into the spool and hands it to the
    /// runner.
    async fn notify(
        &self,
        env: &Envelope,
        rcpts: &[usize],
        action: Action,
    ) -> Result<(), SpoolError> {
        let rules = self.rules.load();
        let mut writer = self.spool.begin()?;
        let own_id = writer.id().to_string();
        let remote_hosts: Vec<Option<&str>> = rcpts
            .iter()
            .map(|&i| {
                let remote = env.recipients[i].dsn.remote.as_deref()?;
                rules.upstreams.pool(remote).map(|p| p.host())
            })
            .collect();
        let report = Report {
            action,
            hostname: &rules.hostname,
            to: &env.sender,
            queue_id: env.id.as_str(),
            own_id: &own_id,
            envid: env.dsn.envid.as_deref(),
            arrival_unix: env.received_unix,
            now: self.clock.wall(),
            rcpts: rcpts
                .iter()
                .zip(remote_hosts)
                .map(|(&i, remote_mta)| rcpt_report(&env.recipients[i], remote_mta))
                .collect(),
            // RFC 3461 4.3: without RET the choice is the server's; headers only, as
            // Postfix. A delay warning never returns the whole message.
            full: env.dsn.ret == Some(Ret::Full) && action == Action::Failed,
            eight_bit: env.body_8bit || env.smtputf8,
        };
        let head = report.head();
        let mut out = Out::new(&mut writer);
        out.write(head.as_bytes())?;
        let ends_in_crlf = self.copy_original(env, &mut out, report.full)?;
        out.write(report.tail(ends_in_crlf).as_bytes())?;
        let wrap_octets = out.added();
        let mut dsn = notification_envelope(env, writer.id().clone(), self.clock.unix());
        dsn.body_8bit = env.body_8bit || env.smtputf8 || !head.is_ascii();
        dsn.wrap_octets = wrap_octets;
        // What the commit will store (it sets its own copy's size): the queue gauges and
        // the listing read this one.
        dsn.size = writer.written();
        writer.commit(dsn.clone(), Vec::new()).await?;
        info!(queue_id = %env.id, dsn_id = %own_id, action = action_name(action), recipients = rcpts.len(), "delivery status notification queued");
        self.metrics.dsn_queued(match action {
            Action::Failed => DsnAction::Failed,
            Action::Delayed => DsnAction::Delayed,
            Action::Relayed => DsnAction::Relayed,
        });
        dsn.accepted_ms = self.clock.unix_millis();
        self.back.submit(dsn);
        Ok(())
    }

    /// Copies the original (all of it, or its header section) into `writer`; returns
    /// whether what was copied ends in CRLF.
    fn copy_original(
        &self,
        env: &Envelope,
        writer: &mut Out<'_>,
        full: bool,
    ) -> Result<bool, SpoolError> {
        let stored = self.spool.open_body(&env.id)?;
        let io = |e| SpoolError::io(env.id.as_str(), e);
        let mut original = (&stored.prefix[..]).chain(stored.file.take(stored.body_len));
        if !full {
            let headers = header_section(&mut original).map_err(io)?;
            writer.write(&headers)?;
            return Ok(headers.ends_with(b"\r\n"));
        }
        let mut chunk = vec![0; CHUNK];
        let mut last = [0u8; 2];
        loop {
            let n = original.read(&mut chunk).map_err(io)?;
            let Some(data) = chunk.get(..n).filter(|d| !d.is_empty()) else {
                break;
            };
            writer.write(data)?;
            for &b in data.iter().rev().take(2).rev() {
                last = [last[1], b];
            }
        }
        Ok(last == *b"\r\n")
    }
}

/// Writes a notification into the spool and counts the octets that wrapping its lines
/// over 998 octets will add on the way out (a returned original may have such lines), for
/// the SIZE declared upstream (RFC 1870).
struct Out<'a> {
    writer: &'a mut SpoolWriter,
    wrapper: Wrapper,
    added: Count,
}

impl<'a> Out<'a> {
    fn new(writer: &'a mut SpoolWriter) -> Out<'a> {
        Out {
            writer,
            wrapper: Wrapper::new(),
            added: Count::default(),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.wrapper.push(data, &mut self.added);
        self.writer.write(data)
    }

    /// The octets wrapping adds to everything written.
    fn added(mut self) -> u64 {
        self.wrapper.finish(&mut self.added);
        self.added.0
    }
}

/// The header section of a message (RFC 5322 2.1: up to the first empty line), its lines
/// with their CRLFs, the empty line left out; at most [`HEADERS_MAX`] octets, cut after a
/// whole line.
fn header_section(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0; CHUNK];
    loop {
        let n = r.read(&mut chunk)?;
        let Some(data) = chunk.get(..n).filter(|d| !d.is_empty()) else {
            return Ok(out);
        };
        let from = out.len().saturating_sub(3);
        out.extend_from_slice(data);
        if out.starts_with(b"\r\n") {
            // An empty line first: no header fields at all.
            return Ok(Vec::new());
        }
        if let Some(at) = out[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            out.truncate(from + at + 2);
            return Ok(out);
        }
        // A message without an empty line is all header section (RFC 5322 2.1 allows
        // no body); when it is very long, cut it after a whole line.
        if out.len() >= HEADERS_MAX {
            let cut = out[..HEADERS_MAX]
                .windows(2)
                .rposition(|w| w == b"\r\n")
                .map_or(0, |p| p + 2);
            out.truncate(cut);
            return Ok(out);
        }
    }
}

/// The report line for one recipient.
fn rcpt_report<'a>(r: &'a Recipient, remote_mta: Option<&'a str>) -> RcptReport<'a> {
    let reply = match &r.status {
        RcptStatus::Failed { reply } => reply.as_str(),
        RcptStatus::Pending => "delivery deferred; still being tried",
        RcptStatus::Delivered { reply, .. } => reply.as_str(),
    };
    RcptReport {
        address: &r.address,
        orcpt: r.dsn.orcpt.as_ref(),
        reply,
        remote_mta,
    }
}

/// The envelope of a notification about `env`: from the null sender (RFC 3461 6.2, RFC
/// 5321 4.5.5) to `env`'s sender.
fn notification_envelope(env: &Envelope, id: crate::spool::QueueId, now: u64) -> Envelope {
    let to = Recipient {
        address: env.sender.clone(),
        status: RcptStatus::Pending,
        dsn: RcptDsn::default(),
    };
    Envelope {
        smtputf8: env.smtputf8 || !env.sender.is_ascii(),
        ..Envelope::new(
            id,
            now,
            String::new(),
            vec![to],
            env.listener.clone(),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        )
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Failed => "failed",
        Action::Delayed => "delayed",
        Action::Relayed => "relayed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn header_section_rows() {
        let rows: &[(&[u8], &[u8])] = &[
            (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2\r\n"),
            (b"\r\nbody only", b""),
            (b"A: 1\r\n", b"A: 1\r\n"),
            (b"A: 1\r\n\r\n", b"A: 1\r\n"),
            (b"", b""),
        ];
        for &(msg, want) in rows {
            // Fed in one-octet reads too, so the empty line straddles every split.
            assert_eq!(header_section(&mut &msg[..]).unwrap(), want);
            let mut slow = OneByte(msg);
            assert_eq!(header_section(&mut slow).unwrap(), want);
        }
        let long = b"X: y\r\n".repeat(HEADERS_MAX / 5);
        let cut = header_section(&mut &long[..]).unwrap();
        assert!(cut.len() <= HEADERS_MAX && cut.ends_with(b"\r\n"));
    }

    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }
}
