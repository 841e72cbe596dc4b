//! The `directory` upstream: each message becomes `<dir>/<id>.eml` (exactly the bytes an
//! SMTP upstream would get after un-stuffing: prefix then body, CRLF kept, lines over 998
//! octets wrapped) and
//! `<dir>/<id>.json` (`{"sender", "recipients", "received"}`).
//!
//! For labs, tests, and handing mail to a script. Readers never see a partial file: each is
//! written under a dot-prefixed temporary name, fsynced, and renamed into place. The `.json`
//! is renamed first and the `.eml` last, so a reader that waits for `*.eml` always finds its
//! envelope beside it. Delivering the same id again (a retry after a crash) replaces both
//! files, so the result is the same as one delivery.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::client::{Outgoing, RcptOutcome, RcptResult};
use crate::upstream::error::{Error, Stage};
use crate::upstream::wrap::Wrapper;

/// Read size when copying the body.
const CHUNK: usize = 64 * 1024;

/// A directory upstream.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Upstream name, for errors.
    name: String,
    /// The target directory; must exist.
    dir: PathBuf,
}

impl Directory {
    /// A directory upstream named `name` writing into `dir`.
    pub fn new(name: &str, dir: PathBuf) -> Directory {
        Directory {
            name: name.to_owned(),
            dir,
        }
    }

    /// The target directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes the message; every recipient is accepted.
    pub async fn deliver(
        &self,
        queue_id: &str,
        msg: &mut Outgoing<'_>,
    ) -> Result<Vec<RcptOutcome>, Error> {
        if !safe_id(queue_id) {
            let detail = format!("queue id {queue_id:?} is not a safe file name");
            return Err(Error::Protocol {
                upstream: self.name.clone(),
                stage: Stage::Directory,
                detail,
            });
        }
        let io = |source| Error::Io {
            upstream: self.name.clone(),
            stage: Stage::Directory,
            source,
        };
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let envelope = serde_json::json!({
            "sender": msg.sender,
            "recipients": msg.recipients,
            "received": received,
        });
        let mut json = serde_json::to_vec_pretty(&envelope)
            .map_err(io::Error::from)
            .map_err(io)?;
        json.push(b'\n');
        let json_tmp = self.dir.join(format!(".{queue_id}.json.tmp"));
        let eml_tmp = self.dir.join(format!(".{queue_id}.eml.tmp"));
        write_file(&json_tmp, &json).await.map_err(io)?;
        write_message(&eml_tmp, msg).await.map_err(io)?;
        tokio::fs::rename(&json_tmp, self.dir.join(format!("{queue_id}.json")))
            .await
            .map_err(io)?;
        tokio::fs::rename(&eml_tmp, self.dir.join(format!("{queue_id}.eml")))
            .await
            .map_err(io)?;
        // Make the renames themselves durable.
        File::open(&self.dir)
            .await
            .map_err(io)?
            .sync_all()
            .await
            .map_err(io)?;
        let reply = format!("250 2.0.0 Ok: saved as {queue_id}.eml");
        let accepted = |index| RcptOutcome {
            index,
            result: RcptResult::Accepted(reply.clone()),
        };
        Ok((0..msg.recipients.len()).map(accepted).collect())
    }
}

/// The id becomes a file name: refuse anything that could leave the directory or hide.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Creates `path` with `head`, then fsyncs it.
async fn write_file(path: &Path, head: &[u8]) -> io::Result<()> {
    let mut file = File::create(path).await?;
    file.write_all(head).await?;
    file.flush().await?;
    file.sync_all().await
}

/// Creates `path` with the prefix and body of `msg`, lines over 998 octets wrapped exactly
/// as the SMTP client wraps them (so "never sends a longer line" holds for every upstream),
/// then fsyncs it.
async fn write_message(path: &Path, msg: &mut Outgoing<'_>) -> io::Result<()> {
    let mut file = File::create(path).await?;
    let mut wrapper = Wrapper::new();
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    let mut chunk = vec![0; CHUNK];
    wrapper.push(msg.prefix, &mut out);
    loop {
        let n = msg.body.read(&mut chunk).await?;
        let Some(data) = chunk.get(..n).filter(|d| !d.is_empty()) else {
            break;
        };
        wrapper.push(data, &mut out);
        if out.len() >= CHUNK {
            file.write_all(&out).await?;
            out.clear();
        }
    }
    wrapper.finish(&mut out);
    file.write_all(&out).await?;
    file.flush().await?;
    file.sync_all().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let up = Directory::new("files", dir.path().to_owned());
        let body = b"Subject: hi\r\n\r\n.leading dot\r\n\xe9t\xe9\r\nno final newline";
        let recipients = vec!["a@x.example".to_string(), "b@y.example".to_string()];
        let mut source: &[u8] = body;
        let mut msg = Outgoing {
            sender: "s@corp.example",
            recipients: &recipients,
            prefix: b"Received: by test\r\n",
            body: &mut source,
            size: 0,
            body_8bit: true,
            smtputf8: false,
            dsn: Default::default(),
            upstream_dsn: false,
        };
        let outcomes = up.deliver("Q123-a_b.c", &mut msg).await.unwrap();
        let accepted = |index| RcptOutcome {
            index,
            result: RcptResult::Accepted("250 2.0.0 Ok: saved as Q123-a_b.c.eml".into()),
        };
        assert_eq!(outcomes, vec![accepted(0), accepted(1)]);
        let eml = std::fs::read(dir.path().join("Q123-a_b.c.eml")).unwrap();
        assert_eq!(eml, [b"Received: by test\r\n".as_slice(), body].concat());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("Q123-a_b.c.json")).unwrap())
                .unwrap();
        assert_eq!(json["sender"], "s@corp.example");
        assert_eq!(
            json["recipients"],
            serde_json::json!(["a@x.example", "b@y.example"])
        );
        assert!(json["received"].as_u64().unwrap() > 1_600_000_000);
        // Only the two final files remain: no temporaries.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["Q123-a_b.c.eml", "Q123-a_b.c.json"]);
    }

    /// The file gets the same wrapped lines an SMTP upstream gets: a 5,000-octet header
    /// field folded at its spaces, a 5,000-octet body line broken with CRLF SPACE.
    #[tokio::test]
    async fn long_lines_are_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let up = Directory::new("files", dir.path().to_owned());
        let words = "word ".repeat(1000);
        let line = "x".repeat(5000);
        let body = format!("Subject: {words}\r\n\r\n{line}\r\n");
        let recipients = vec!["a@x.example".to_string()];
        let mut source: &[u8] = body.as_bytes();
        let mut msg = Outgoing {
            sender: "s@corp.example",
            recipients: &recipients,
            prefix: b"Received: by test\r\n",
            body: &mut source,
            size: 0,
            body_8bit: false,
            smtputf8: false,
            dsn: Default::default(),
            upstream_dsn: false,
        };
        up.deliver("Q1", &mut msg).await.unwrap();
        let eml = std::fs::read(dir.path().join("Q1.eml")).unwrap();
        let mut expected = b"Received: by test\r\n".to_vec();
        let mut wrapper = Wrapper::new();
        wrapper.push(body.as_bytes(), &mut expected);
        wrapper.finish(&mut expected);
        assert_eq!(eml, expected);
        let text = String::from_utf8(eml).unwrap();
        assert!(text.lines().all(|l| l.len() <= 998));
        assert!(text.contains(&format!("\r\n {}\r\n", &line[998..1995])));
        assert_eq!(text.replace("\r\n ", " ").matches("word").count(), 1000);
    }

    #[tokio::test]
    async fn unsafe_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let up = Directory::new("files", dir.path().to_owned());
        for id in ["", "../x", ".hidden", "a/b", "a b"] {
            let mut source: &[u8] = b"x";
            let mut msg = Outgoing {
                sender: "",
                recipients: &[],
                prefix: b"",
                body: &mut source,
                size: 1,
                body_8bit: false,
                smtputf8: false,
                dsn: Default::default(),
                upstream_dsn: false,
            };
            let err = up.deliver(id, &mut msg).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Protocol {
                        stage: Stage::Directory,
                        ..
                    }
                ),
                "{id:?}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
