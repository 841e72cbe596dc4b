//! The DSN extension's parameters (RFC 3461): `RET` and `ENVID` on MAIL, `NOTIFY` and
//! `ORCPT` on RCPT, with the xtext encoding they use. Syntax only; what they cause (which
//! notifications are sent) is the delivery side's business.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::smtp::reply::Reply;

/// RFC 3461 4.4: an ENVID value is at most 100 characters.
pub const ENVID_MAX: usize = 100;
/// RFC 3461 4.2: an ORCPT value is at most 500 characters.
pub const ORCPT_MAX: usize = 500;

/// RFC 3461 4.3 `RET=`: what a failure notification returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header section only.
    Hdrs,
}

impl Ret {
    /// The parameter value as sent upstream.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// RFC 3461 4.1 `NOTIFY=`: `NEVER`, or any non-empty set of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Notify {
    /// Notify on delivery.
    pub success: bool,
    /// Notify on failure.
    pub failure: bool,
    /// Notify on delay.
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`: no notification at all.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Parses the value of `NOTIFY=` (case-insensitive keywords).
    pub fn parse(value: &str) -> Result<Notify, Reply> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::NEVER);
        }
        let mut out = Notify::NEVER;
        for word in value.split(',') {
            let slot = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut out.success,
                "FAILURE" => &mut out.failure,
                "DELAY" => &mut out.delay,
                "NEVER" => return Err(dsn_error("NOTIFY=NEVER must stand alone")),
                _ => {
                    return Err(dsn_error(
                        "NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY",
                    ));
                }
            };
            if std::mem::replace(slot, true) {
                return Err(dsn_error("NOTIFY lists a keyword twice"));
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Notify::NEVER {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let list: Vec<&str> = words.iter().filter(|(on, _)| *on).map(|w| w.1).collect();
        f.write_str(&list.join(","))
    }
}

impl From<Notify> for String {
    fn from(n: Notify) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for Notify {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Notify::parse(&s).map_err(|r| r.text().to_owned())
    }
}

/// RFC 3461 4.2 `ORCPT=addr-type;xtext`: the recipient as the original sender gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orcpt {
    /// The address type (`rfc822`, `utf-8`, ...), as sent.
    pub addr_type: String,
    /// The address, still xtext-encoded, as sent (relayed unchanged, RFC 3461 5.2.1).
    pub xtext: String,
}

impl Orcpt {
    /// Parses the value of `ORCPT=`.
    pub fn parse(value: &str) -> Result<Orcpt, Reply> {
        if value.len() > ORCPT_MAX {
            return Err(dsn_error("ORCPT is longer than 500 characters"));
        }
        let Some((addr_type, xtext)) = value.split_once(';') else {
            return Err(dsn_error("ORCPT needs addr-type;address"));
        };
        // RFC 3461 4.2: addr-type = atom (RFC 5321's Atom); in practice a registered
        // type name of letters, digits and hyphens.
        let type_ok = !addr_type.is_empty()
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !type_ok {
            return Err(dsn_error("ORCPT has a bad address type"));
        }
        if xtext.is_empty() || !is_xtext(xtext) {
            return Err(dsn_error("ORCPT address is not valid xtext"));
        }
        Ok(Orcpt {
            addr_type: addr_type.to_owned(),
            xtext: xtext.to_owned(),
        })
    }

    /// The parameter value as sent upstream.
    pub fn to_param(&self) -> String {
        format!("{};{}", self.addr_type, self.xtext)
    }
}

/// Parses the value of `ENVID=` (RFC 3461 4.4): xtext of at most 100 characters.
pub fn parse_envid(value: &str) -> Result<String, Reply> {
    if value.len() > ENVID_MAX {
        return Err(dsn_error("ENVID is longer than 100 characters"));
    }
    if value.is_empty() || !is_xtext(value) {
        return Err(dsn_error("ENVID is not valid xtext"));
    }
    Ok(value.to_owned())
}

/// Parses `RET=` (RFC 3461 4.3).
pub fn parse_ret(value: &str) -> Result<Ret, Reply> {
    if value.eq_ignore_ascii_case("FULL") {
        Ok(Ret::Full)
    } else if value.eq_ignore_ascii_case("HDRS") {
        Ok(Ret::Hdrs)
    } else {
        Err(dsn_error("RET takes FULL or HDRS"))
    }
}

/// RFC 3461 4: xtext = *( xchar / hexchar ); xchar is `!`..`~` except `+` and `=`;
/// hexchar is `+` and two upper-case hex digits.
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => {
                let hex = |o: usize| {
                    b.get(i + o)
                        .is_some_and(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
                };
                if !(hex(1) && hex(2)) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if c != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes valid xtext for a report field: the text when it decodes to printable ASCII
/// (so no control character can reach a header), otherwise the xtext as it is.
pub fn xtext_display(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let decoded = (c == b'+')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(text) if text.bytes().all(|c| (b' '..=b'~').contains(&c)) => text,
        _ => s.to_owned(),
    }
}

/// Parameters of one RCPT postern understands (RFC 5321 4.1.2 Rcpt-parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// RFC 3461 4.1 NOTIFY=.
    pub notify: Option<Notify>,
    /// RFC 3461 4.2 ORCPT=.
    pub orcpt: Option<Orcpt>,
}

/// Parses RCPT parameters: NOTIFY and ORCPT, each at most once; anything else is 555.
pub fn parse_rcpt_params(params: &str) -> Result<RcptParams, Reply> {
    let mut out = RcptParams::default();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let Some((key, value)) = param.split_once('=') else {
            return match param.to_ascii_uppercase().as_str() {
                "NOTIFY" | "ORCPT" => Err(Reply::bad_param_value()),
                _ => Err(Reply::unsupported_param()),
            };
        };
        let duplicate = match key.to_ascii_uppercase().as_str() {
            "NOTIFY" => out.notify.replace(Notify::parse(value)?).is_some(),
            "ORCPT" => out.orcpt.replace(Orcpt::parse(value)?).is_some(),
            _ => return Err(Reply::unsupported_param()),
        };
        if duplicate {
            return Err(Reply::duplicate_param());
        }
    }
    Ok(out)
}

/// `501 5.5.4` naming what is wrong with a DSN parameter.
fn dsn_error(what: &'static str) -> Reply {
    Reply::new(501, (5, 5, 4), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rows() {
        let n = |s, f, d| {
            Ok(Notify {
                success: s,
                failure: f,
                delay: d,
            })
        };
        let rows = [
            ("NEVER", Ok(Notify::NEVER)),
            ("never", Ok(Notify::NEVER)),
            ("SUCCESS", n(true, false, false)),
            ("failure,Delay", n(false, true, true)),
            ("SUCCESS,FAILURE,DELAY", n(true, true, true)),
            (
                "NEVER,SUCCESS",
                Err(dsn_error("NOTIFY=NEVER must stand alone")),
            ),
            (
                "SUCCESS,NEVER",
                Err(dsn_error("NOTIFY=NEVER must stand alone")),
            ),
            (
                "SUCCESS,SUCCESS",
                Err(dsn_error("NOTIFY lists a keyword twice")),
            ),
            (
                "",
                Err(dsn_error(
                    "NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY",
                )),
            ),
            (
                "SUCCESS,",
                Err(dsn_error(
                    "NOTIFY takes NEVER or a list of SUCCESS, FAILURE, DELAY",
                )),
            ),
        ];
        for (value, want) in rows {
            assert_eq!(Notify::parse(value), want, "{value:?}");
            if let Ok(n) = want {
                assert_eq!(Notify::parse(&n.to_string()), Ok(n));
            }
        }
    }

    #[test]
    fn xtext_rows() {
        let rows = [
            ("a@b.example", true, "a@b.example"),
            ("a+2Bb@x", true, "a+b@x"),
            ("+3D", true, "="),
            ("a+0D+0Ab", true, "a+0D+0Ab"),
            ("+C3+BC", true, "+C3+BC"),
            ("a+2b", false, ""),
            ("a+2", false, ""),
            ("a=b", false, ""),
            ("a b", false, ""),
            ("ü", false, ""),
            ("", true, ""),
        ];
        for (text, valid, shown) in rows {
            assert_eq!(is_xtext(text), valid, "{text:?}");
            if valid {
                assert_eq!(xtext_display(text), shown, "{text:?}");
            }
        }
    }

    #[test]
    fn orcpt_envid_ret_rows() {
        assert_eq!(
            Orcpt::parse("rfc822;a+2Bb@x.example"),
            Ok(Orcpt {
                addr_type: "rfc822".into(),
                xtext: "a+2Bb@x.example".into()
            })
        );
        for bad in ["rfc822", ";a@b", "rf c;a@b", "rfc822;", "rfc822;a=b"] {
            assert!(Orcpt::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("rfc822;{}", "a".repeat(493));
        assert!(Orcpt::parse(&long).is_ok());
        assert_eq!(
            Orcpt::parse(&format!("{long}a")),
            Err(dsn_error("ORCPT is longer than 500 characters"))
        );
        assert!(parse_envid(&"e".repeat(100)).is_ok());
        assert_eq!(
            parse_envid(&"e".repeat(101)),
            Err(dsn_error("ENVID is longer than 100 characters"))
        );
        assert_eq!(
            parse_envid("a+zz"),
            Err(dsn_error("ENVID is not valid xtext"))
        );
        assert_eq!(parse_ret("hdrs"), Ok(Ret::Hdrs));
        assert_eq!(parse_ret("FULL"), Ok(Ret::Full));
        assert_eq!(parse_ret("ALL"), Err(dsn_error("RET takes FULL or HDRS")));
    }

    #[test]
    fn rcpt_param_rows() {
        assert_eq!(
            parse_rcpt_params(" NOTIFY=never ORCPT=rfc822;u@x"),
            Ok(RcptParams {
                notify: Some(Notify::NEVER),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    xtext: "u@x".into()
                }),
            })
        );
        assert_eq!(parse_rcpt_params(""), Ok(RcptParams::default()));
        assert_eq!(
            parse_rcpt_params(" NOTIFY=DELAY notify=DELAY"),
            Err(Reply::duplicate_param())
        );
        assert_eq!(parse_rcpt_params(" NOTIFY"), Err(Reply::bad_param_value()));
        assert_eq!(
            parse_rcpt_params(" XFOO=1"),
            Err(Reply::unsupported_param())
        );
    }
}
