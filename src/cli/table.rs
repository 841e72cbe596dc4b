//! Human output of the queue tools: an aligned table for listings, `key: value` lines for one
//! message, and short durations ("3m20s").

use crate::delivery::view::MessageView;

/// "45s", "3m20s", "2h5m", "3d4h".
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// When the next attempt is, relative to `now`.
fn next(v: &MessageView, now: u64) -> String {
    match v.next_attempt_unix {
        None => "-".to_owned(),
        Some(t) if t <= now => "now".to_owned(),
        Some(t) => format!("in {}", short_duration(t - now)),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

/// One row per message, columns aligned; the last column is the reason, else the last reply.
pub fn list(messages: &[MessageView], now: u64) -> String {
    let mut rows = vec![
        [
            "ID",
            "AGE",
            "STATE",
            "TRIES",
            "NEXT",
            "SENDER",
            "PENDING",
            "FAILED",
            "REASON/LAST REPLY",
        ]
        .map(str::to_owned),
    ];
    for v in messages {
        let failed: Vec<&str> = v.failed.iter().map(|f| f.address.as_str()).collect();
        rows.push([
            v.id.clone(),
            short_duration(v.age_secs),
            v.state.as_str().to_owned(),
            v.attempts.to_string(),
            next(v, now),
            if v.sender.is_empty() {
                "<>".to_owned()
            } else {
                v.sender.clone()
            },
            or_dash(v.pending.join(",")),
            or_dash(failed.join(",")),
            v.reason
                .clone()
                .or_else(|| v.last_reply.clone())
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One message, a field per line.
pub fn show(v: &MessageView, now: u64) -> String {
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<14} {val}\n"));
    line("id:", v.id.clone());
    line("state:", v.state.as_str().to_owned());
    if let Some(r) = &v.reason {
        line("reason:", r.clone());
    }
    line("age:", short_duration(v.age_secs));
    line("received:", v.received_unix.to_string());
    line(
        "sender:",
        if v.sender.is_empty() {
            "<>".into()
        } else {
            v.sender.clone()
        },
    );
    line("size:", v.size.to_string());
    line("attempts:", v.attempts.to_string());
    line("next attempt:", next(v, now));
    line(
        "last reply:",
        v.last_reply.clone().unwrap_or_else(|| "-".into()),
    );
    for p in &v.pending {
        line("pending:", p.clone());
    }
    for f in &v.failed {
        line("failed:", format!("{} ({})", f.address, f.reply));
    }
    for d in &v.delivered {
        line("delivered:", d.clone());
    }
    for m in &v.maybe_delivered {
        let to = match m.recipients.is_empty() {
            true => String::new(),
            false => format!(" for {}", m.recipients.join(", ")),
        };
        line(
            "maybe at:",
            format!("{} at {}{to} ({} bytes)", m.upstream, m.at_unix, m.bytes),
        );
    }
    if let Some(h) = &v.held {
        line("held since:", h.at_unix.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (200, "3m20s"),
            (7500, "2h5m"),
            (273600, "3d4h"),
        ] {
            assert_eq!(short_duration(secs), text);
        }
    }
}
