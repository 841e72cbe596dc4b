//! Reading a committed message's body back from the spool for an upstream.

/// The last two octets of a spool body (fewer if it is shorter), read in place without
/// moving the file position, which stays at the body's start for the upstream to read.
pub(super) fn body_tail(file: &std::fs::File, body_len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Seek;
    use std::os::unix::fs::FileExt;
    let start = (&mut &*file).stream_position()?;
    let n = body_len.min(2);
    let mut tail = vec![0; usize::try_from(n).unwrap_or(0)];
    file.read_exact_at(&mut tail, start + body_len - n)?;
    Ok(tail)
}

/// Reads a spool body for the upstream client, straight from the file.
///
/// Not `tokio::fs::File`: that sends every read to the blocking pool, and with hundreds of
/// deliveries in flight the pool grows to hundreds of threads (measured: ~380 MB of stacks
/// and malloc arenas under load). The file was written moments ago and is in the page cache,
/// and each read is capped at the client's chunk size (64 KiB), so an inline read costs
/// microseconds, less than the hand-off to another thread would.
pub(super) struct BodyReader {
    pub(super) file: std::fs::File,
    pub(super) left: u64,
}

impl tokio::io::AsyncRead for BodyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        let want = (buf.remaining() as u64).min(self.left) as usize;
        if want == 0 {
            return std::task::Poll::Ready(Ok(()));
        }
        let dst = buf.initialize_unfilled_to(want);
        let n = self.file.read(dst)?;
        if n == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "spool file shorter than its recorded body length",
            )));
        }
        buf.advance(n);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// The tail is read in place: the file position stays at the body's start.
    #[test]
    fn body_tail_reads_in_place() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let rows: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"x", b"x"),
            (b"ab\r\n", b"\r\n"),
            (b"no end", b"nd"),
        ];
        for &(body, tail) in rows {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(b"HEADER").unwrap();
            file.write_all(body).unwrap();
            file.write_all(b"TRAILER").unwrap();
            file.seek(SeekFrom::Start(6)).unwrap();
            assert_eq!(body_tail(&file, body.len() as u64).unwrap(), tail);
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, [body, b"TRAILER"].concat());
        }
    }
}
