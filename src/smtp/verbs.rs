//! Transitions: each takes the phase by value and returns the next one
//! (rustls style), queueing replies through [`Ctx`]. Order and policy-gate
//! checks live here; syntax is already checked by `command.rs`.

use crate::reason::Reason;
use crate::smtp::address::ReversePath;
use crate::smtp::command::{Command, MailParams};
use crate::smtp::data::DataDecoder;
use crate::smtp::ehlo::{self, Offer};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials, Mechanism, SaslProgress};
use crate::smtp::session::{
    AuthPolicy, Ctx, Helo, Next, Pending, Phase, Question, Rcpt, Step, TlsOffer, Transaction,
    Verdict,
};

/// Handles one parsed command outside DATA and SASL.
pub(super) fn command(ctx: &mut Ctx, phase: Phase, cmd: Command) -> Next {
    match cmd {
        Command::Ehlo(name) => hello(ctx, name, true),
        Command::Helo(name) => hello(ctx, name, false),
        Command::Mail { from, params } => mail(ctx, phase, from, params),
        Command::Rcpt { to, params } => rcpt(ctx, phase, Rcpt { to, params }),
        Command::Data => data(ctx, phase),
        Command::Auth { mechanism, initial } => auth(ctx, phase, mechanism, initial),
        Command::StartTls => starttls(ctx, phase),
        // RFC 5321 4.1.1.5: RSET clears the transaction, keeps the EHLO.
        Command::Rset => {
            let phase = match phase {
                Phase::Transaction { helo, .. } => Phase::Ready { helo },
                other => other,
            };
            junk(ctx, phase, Reply::ok())
        }
        Command::Noop => junk(ctx, phase, Reply::ok()),
        Command::Help => junk(ctx, phase, Reply::help()),
        Command::Vrfy => junk(ctx, phase, Reply::vrfy()),
        Command::Expn => ctx.reject(Reply::not_implemented(), phase),
        Command::Quit => ctx.close_with(&Reply::bye()),
    }
}

/// A command that moves no mail (Postfix's `smtpd_junk_command_limit`): answered, and
/// counted; past `max_junk_commands` since the last queued message, `421 4.7.0` and close,
/// so a NOOP/RSET/VRFY loop cannot hold a session forever.
fn junk(ctx: &mut Ctx, phase: Phase, reply: Reply) -> Next {
    ctx.junk = ctx.junk.saturating_add(1);
    let cap = ctx.cfg.max_junk_commands;
    if cap > 0 && ctx.junk > cap {
        let bye = Reply::junk_commands(&ctx.cfg.hostname);
        return ctx.close_for(&bye, Reason::JunkCommands);
    }
    ctx.send(&reply);
    (phase, None)
}

/// RFC 5321 4.1.4: EHLO/HELO may come at any time and resets any
/// transaction, as RSET does.
fn hello(ctx: &mut Ctx, name: String, esmtp: bool) -> Next {
    let host = ctx.cfg.hostname.clone();
    let reply = if esmtp {
        let offer = Offer {
            max_message_size: ctx.cfg.max_message_size,
            starttls: ctx.cfg.tls == TlsOffer::StartTls && !ctx.tls,
            // RFC 4954 4 / RFC 8314: never offer a password exchange in clear.
            auth: ctx.cfg.auth != AuthPolicy::None && ctx.tls,
        };
        ehlo::capabilities(&host, offer)
    } else {
        Reply::helo(&host)
    };
    ctx.send(&reply);
    let helo = Helo { name, esmtp };
    (Phase::Ready { helo }, None)
}

/// The submission gate before MAIL (RFC 6409 4.1, RFC 3207 4).
fn auth_gate(ctx: &Ctx) -> Option<Reply> {
    if ctx.cfg.auth != AuthPolicy::Required || ctx.identity.is_some() {
        None
    } else if ctx.cfg.tls == TlsOffer::StartTls && !ctx.tls {
        Some(Reply::starttls_first())
    } else {
        Some(Reply::auth_required())
    }
}

/// RFC 5321 4.1.1.2 MAIL; RFC 1870 6 SIZE.
fn mail(ctx: &mut Ctx, phase: Phase, from: ReversePath, params: MailParams) -> Next {
    let helo = match phase {
        Phase::Ready { helo } => helo,
        Phase::Greeted => return ctx.reject(Reply::need_helo(), phase),
        Phase::Transaction { .. } => return ctx.reject(Reply::nested_mail(), phase),
        _ => return ctx.logic_error(),
    };
    if let Some(refusal) = auth_gate(ctx) {
        ctx.refused.push(Reason::AuthRequired);
        return ctx.reject(refusal, Phase::Ready { helo });
    }
    if params.size.is_some_and(|s| s > ctx.cfg.max_message_size) {
        ctx.refused.push(Reason::Size);
        return ctx.reject(Reply::size_exceeded(), Phase::Ready { helo });
    }
    let question = Question::Mail {
        from: from.clone(),
        params: params.clone(),
    };
    let pending = Pending::Mail { from, params };
    (
        Phase::Deciding { helo, pending },
        Some(Step::Decide(question)),
    )
}

/// RFC 5321 4.1.1.3 RCPT; 4.5.3.1.10 recipient cap.
fn rcpt(ctx: &mut Ctx, phase: Phase, rcpt: Rcpt) -> Next {
    let (helo, tx) = match phase {
        Phase::Transaction { helo, tx } => (helo, tx),
        Phase::Greeted | Phase::Ready { .. } => return ctx.reject(Reply::need_mail(), phase),
        _ => return ctx.logic_error(),
    };
    if tx.rcpts.len() >= ctx.cfg.max_recipients {
        // Not counted as a client error (Postfix does the same): a client that pipelines
        // more recipients than the cap must still reach DATA for the accepted ones and
        // send the rest in another transaction (RFC 5321 4.5.3.1.10).
        ctx.refused.push(Reason::Recipients);
        ctx.send(&Reply::too_many_recipients());
        return (Phase::Transaction { helo, tx }, None);
    }
    let refusal = if !tx.params.smtputf8 && !rcpt.to.0.is_ascii() {
        // RFC 6531 3.4: UTF-8 addresses only in SMTPUTF8 transactions.
        Some(Reply::non_ascii_recipient())
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return ctx.reject(refusal, Phase::Transaction { helo, tx });
    }
    let question = Question::Rcpt {
        to: rcpt.to.clone(),
    };
    let pending = Pending::Rcpt { tx, rcpt };
    (
        Phase::Deciding { helo, pending },
        Some(Step::Decide(question)),
    )
}

/// RFC 5321 4.1.1.4 DATA; RFC 2920 3.1: no valid recipients -> 554.
fn data(ctx: &mut Ctx, phase: Phase) -> Next {
    match phase {
        Phase::Transaction { helo, tx } if tx.rcpts.is_empty() => ctx.reject(
            Reply::no_valid_recipients(),
            Phase::Transaction { helo, tx },
        ),
        Phase::Transaction { helo, tx } => {
            let pending = Pending::Data { tx };
            (
                Phase::Deciding { helo, pending },
                Some(Step::Decide(Question::Data)),
            )
        }
        Phase::Greeted | Phase::Ready { .. } => ctx.reject(Reply::need_mail(), phase),
        _ => ctx.logic_error(),
    }
}

/// RFC 3207 4: STARTTLS. The caller returns at once so no pipelined byte
/// after this line is read in clear (CVE-2011-0411).
fn starttls(ctx: &mut Ctx, phase: Phase) -> Next {
    if ctx.tls {
        return ctx.reject(Reply::tls_already_active(), phase);
    }
    if ctx.cfg.tls != TlsOffer::StartTls {
        return ctx.reject(Reply::not_implemented(), phase);
    }
    ctx.send(&Reply::starttls_ready());
    // RFC 3207 4.2: all state is discarded once TLS starts.
    (Phase::Greeted, Some(Step::StartTls))
}

/// RFC 4954 4: AUTH, with Postfix's order of checks.
fn auth(ctx: &mut Ctx, phase: Phase, mech: Option<Mechanism>, initial: Option<String>) -> Next {
    let helo = match phase {
        Phase::Ready { helo } => helo,
        Phase::Greeted => return ctx.reject(Reply::need_helo(), phase),
        Phase::Transaction { .. } => {
            let refusal = if ctx.identity.is_some() {
                Reply::already_authenticated()
            } else {
                Reply::auth_in_transaction()
            };
            return ctx.reject(refusal, phase);
        }
        _ => return ctx.logic_error(),
    };
    let refusal = if ctx.cfg.auth == AuthPolicy::None || ctx.cfg.tls == TlsOffer::None {
        Some(Reply::auth_not_enabled())
    } else if !ctx.tls {
        Some(Reply::starttls_first())
    } else if ctx.identity.is_some() {
        Some(Reply::already_authenticated())
    } else if mech.is_none() {
        Some(Reply::unknown_mechanism())
    } else {
        None
    };
    let (None, Some(mechanism)) = (refusal.clone(), mech) else {
        let refusal = refusal.unwrap_or_else(Reply::unknown_mechanism);
        return ctx.reject(refusal, Phase::Ready { helo });
    };
    sasl_progress(
        ctx,
        helo,
        mechanism,
        sasl::start(mechanism, initial.as_deref()),
    )
}

/// One SASL continuation line.
pub(super) fn sasl_response(ctx: &mut Ctx, phase: Phase, line: &[u8]) -> Next {
    let Phase::Sasl {
        helo,
        mechanism,
        step,
    } = phase
    else {
        return ctx.logic_error();
    };
    sasl_progress(ctx, helo, mechanism, sasl::step(step, line))
}

fn sasl_progress(
    ctx: &mut Ctx,
    helo: Helo,
    mechanism: Mechanism,
    progress: Result<SaslProgress, sasl::SaslError>,
) -> Next {
    match progress {
        Ok(SaslProgress::Challenge(step, challenge)) => {
            ctx.send(&challenge);
            let phase = Phase::Sasl {
                helo,
                mechanism,
                step,
            };
            (phase, None)
        }
        Ok(SaslProgress::Done(Credentials {
            authzid,
            username,
            password,
        })) => {
            let question = Question::Auth {
                mechanism,
                authzid,
                username: username.clone(),
                password,
            };
            let pending = Pending::Auth { username };
            (
                Phase::Deciding { helo, pending },
                Some(Step::Decide(question)),
            )
        }
        Err(e) => ctx.reject(e.reply(), Phase::Ready { helo }),
    }
}

/// A line over the cap was discarded. In a SASL exchange that also aborts
/// the exchange: the client's next line will be a command again.
pub(super) fn line_too_long(ctx: &mut Ctx, phase: Phase) -> Next {
    let phase = match phase {
        Phase::Sasl { helo, .. } => Phase::Ready { helo },
        other => other,
    };
    ctx.reject(Reply::line_too_long(), phase)
}

/// Applies the shell's verdict to the pending question.
pub(super) fn answer(ctx: &mut Ctx, phase: Phase, verdict: Verdict) -> Next {
    let Phase::Deciding { helo, pending } = phase else {
        return ctx.logic_error();
    };
    match verdict {
        Verdict::RejectAndClose(reply) => ctx.close_with(&reply),
        Verdict::Reject(reply) => ctx.reject(reply, refused(helo, pending)),
        Verdict::Defer(reply) => {
            ctx.send(&reply);
            (refused(helo, pending), None)
        }
        positive => accept(ctx, helo, pending, positive),
    }
}

/// The phase after a refused question: a refused RCPT or DATA keeps the transaction
/// (RFC 5321 3.3); a refused MAIL, AUTH or message leaves none.
fn refused(helo: Helo, pending: Pending) -> Phase {
    match pending {
        Pending::Rcpt { tx, .. } | Pending::Data { tx } => Phase::Transaction { helo, tx },
        Pending::Auth { .. } | Pending::Mail { .. } | Pending::Message => Phase::Ready { helo },
    }
}

fn accept(ctx: &mut Ctx, helo: Helo, pending: Pending, verdict: Verdict) -> Next {
    let (reply, phase) = match (pending, verdict) {
        (Pending::Mail { from, params }, Verdict::Accept) => {
            let tx = Transaction {
                from,
                params,
                rcpts: Vec::new(),
            };
            (Reply::mail_ok(), Phase::Transaction { helo, tx })
        }
        (Pending::Rcpt { mut tx, rcpt }, Verdict::Accept) => {
            tx.rcpts.push(rcpt);
            (Reply::rcpt_ok(), Phase::Transaction { helo, tx })
        }
        (Pending::Data { tx }, Verdict::Accept) => {
            let decoder = DataDecoder::new(ctx.cfg.bare_line_endings, ctx.cfg.max_message_size)
                .with_long_lines(ctx.cfg.long_lines);
            let phase = Phase::Receiving { helo, tx, decoder };
            (Reply::start_data(), phase)
        }
        (Pending::Auth { username }, Verdict::Authenticated) => {
            ctx.identity = Some(username);
            (Reply::auth_ok(), Phase::Ready { helo })
        }
        (Pending::Message, Verdict::Queued(id)) => {
            ctx.junk = 0;
            (Reply::queued(&id), Phase::Ready { helo })
        }
        _ => return ctx.logic_error(),
    };
    ctx.send(&reply);
    (phase, None)
}
