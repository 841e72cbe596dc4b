#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/seeds/<target>/ (run from anywhere).

session_raw seeds are the dialog scripts in tests/dialogs/ (client side
only, settings from each script's "@" header); the other targets get a few
hand-picked realistic inputs. The header bytes follow the layouts documented
in fuzz/src/*.rs. Re-run after changing a dialog or a header layout.
"""
import ast
import pathlib
import re

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
SEEDS = FUZZ / "seeds"

SIZES = [10240, 0, 1, 16, 100, 1000, 35_882_577]
RCPTS = [100, 0, 1, 2]
ERRORS = [10, 0, 1, 3, 1000]


def session_header(header: str) -> bytes:
    """The three settings bytes of fuzz/src/session.rs::session_config."""
    kv = dict(item.split("=", 1) for item in header.split())
    tls = ["starttls", "implicit", "none"].index(kv.get("tls", "starttls"))
    auth = ["required", "optional", "none"].index(kv.get("auth", "required"))
    started = kv.get("tls_active") == "yes" and tls == 0
    normalise = kv.get("bare") == "normalise"
    b0 = tls + 3 * auth + 9 * started + 18 * normalise
    size = int(kv.get("max_size", 10240))
    size_i = SIZES.index(size) if size in SIZES else SIZES.index(16 if size < 100 else 10240)
    rcpt = int(kv.get("max_recipients", 100))
    rcpt_i = RCPTS.index(rcpt) if rcpt in RCPTS else 0
    errs = int(kv.get("max_errors", 10))
    errs_i = ERRORS.index(errs) if errs in ERRORS else ERRORS.index(3 if errs < 10 else 10)
    return bytes([b0, size_i + 7 * rcpt_i, errs_i])


def unescape(s: str) -> bytes:
    """The R: escapes of src/smtp/dialog_tests.rs."""
    s = re.sub(r"\$\{(\d+)\*(.)\}", lambda m: m.group(2) * int(m.group(1)), s)
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out += {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0"}.get(s[i + 1], b"\\")
            i += 2
        else:
            out += c.encode()
            i += 1
    return bytes(out)


def dialog_client_bytes(text: str) -> tuple[bytes, bytes]:
    header, stream = "", bytearray()
    for line in text.splitlines():
        if line.startswith("@"):
            header = line[1:]
        elif line.startswith("C:"):
            stream += line[3:].encode() + b"\r\n"
        elif line.startswith("R:"):
            stream += unescape(line[3:])
    return session_header(header), bytes(stream)


def tokens() -> list[bytes]:
    src = (FUZZ / "src" / "alphabet.rs").read_text()
    table = src.split("const TOKENS")[1].split("];")[0]
    return [ast.literal_eval(m) for m in re.findall(r'(b"(?:[^"\\]|\\.)*")', table)]


def write(target: str, name: str, data: bytes) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def clear_generated() -> None:
    """Removes the seeds this script writes, keeping inputs libFuzzer found and that were
    committed by hand (named by their SHA-1, 40 hex digits)."""
    if not SEEDS.exists():
        return
    for path in SEEDS.rglob("*"):
        if path.is_file() and not re.fullmatch(r"[0-9a-f]{40}", path.name):
            path.unlink()


def main() -> None:
    clear_generated()
    dialogs = sorted((ROOT / "tests" / "dialogs").glob("*.dialog"))
    for i, path in enumerate(dialogs):
        header, stream = dialog_client_bytes(path.read_text())
        # split seed (whole, bytewise, random), verdict seed, ending
        write("session_raw", path.stem, header + bytes([i % 5, i, i % 3]) + stream)
        if i % 4 == 0:
            write("line", path.stem, bytes([i % 4, 10 + i, i % 7]) + stream)

    for name, line in {
        "ehlo": b"EHLO client.example",
        "mail-params": b"MAIL FROM:<app1@corp.example> SIZE=20 BODY=8BITMIME AUTH=<>",
        "mail-quoted-utf8": b'MAIL FROM:<"x> y"@b\xc3\xbc.example> SMTPUTF8',
        "mail-null": b"MAIL FROM:<>",
        "mail-dsn": b"MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1",
        "rcpt-dsn": b"RCPT TO:<u@x.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;U+2Bx@x.example",
        "rcpt-route-literal": b"RCPT TO:<@r.example,@s.example:u@[IPv6:2001:db8::1]>",
        "rcpt-postmaster": b"rcpt to: <Postmaster>",
        "auth-plain": b"AUTH PLAIN AGFwcDEAc2VjcmV0",
        "http": b"GET / HTTP/1.1",
    }.items():
        write("command", name, line)

    for name, data in {
        "plain": b"\x00\x00Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
        "empty": b"\x04\x00.\r\n",
        "smuggle-lf": b"\x05\x02Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<e@v>\r\nx\r.\rQUIT\r\n.\r\n",
        "too-big": b"\x02\x01abcdefgh\r\n.\r\nNOOP\r\n",
        "dot-cr": b"\x06\x03a\r\n.\r\r\n.\r\n",
    }.items():
        write("data", name, data)

    for name, data in {
        "ehlo": b"\x00250-mx.example Hello\r\n250-SIZE 35882577\r\n250-PIPELINING\r\n"
        b"250-AUTH PLAIN LOGIN\r\n250-AUTH=LOGIN\r\n250 SMTPUTF8\r\n",
        "multiline-enhanced": b"\x00550-5.1.1 No such user\r\n550 5.1.1 here\r\n354 go\n",
        "greeting": b"\x00220 mx.example ESMTP\r\n",
        "ours-multiline": b"\x01\x03\x05first line\nsecond \r line\n",
        "ours-plain": b"\x01\x00\x00mx.fuzz ESMTP postern",
    }.items():
        write("reply_parser", name, data)

    for name, data in {
        "plain-ir": b"\x02AGFwcDEAc2VjcmV0",
        "plain-334": b"\x00AGFwcDEAc2VjcmV0\r\n",
        "login": b"\x01YXBwMQ==\r\nc2VjcmV0\r\n",
        "login-ir": b"\x03YXBwMQ==\nc2VjcmV0\n",
        "abort": b"\x01*\r\n",
    }.items():
        write("sasl", name, data)

    # headers: limit selector (7 = 64 KiB, 4 = 64, 5 = 256), split seed,
    # flags (bit 0 collapse, bit 1 empty reads), then the message.
    for name, (head, msg) in {
        "folded-from": (b"\x07\x00\x00", b"Received: from a by b;\r\n\tMon, 1 Jan 2026 00:00:00 +0000\r\n"
                        b"From: Scanner on the third floor\r\n <scanner@corp.example>\r\n"
                        b"Subject: scan\r\nTo: x@y.example\r\n\r\nbody\r\n"),
        "encoded-words": (b"\x07\x05\x01", b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <j@corp.example>\r\n"
                          b"Subject: =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXM=?=\r\n\r\nhi\r\n"),
        "group": (b"\x07\x01\x01", b"From: Team: a@corp.example, B <b@other.example>;\r\n"
                  b"To: undisclosed-recipients:;\r\n\r\n"),
        "quoted-name": (b"\x07\x22\x00", b"Date: Tue, 2 Jan 2026 10:00:00 +0100\r\n"
                        b"From: \"ceo@corp.example, boss\" <me@mine.example>\r\n"
                        b"Reply-To: r@corp.example\r\n\r\nx"),
        "two-from": (b"\x07\x03\x03", b"From: a@corp.example\r\nSubject: s\r\nFROM : Evil <ceo@corp.example>\r\n"
                     b" (second)\r\n\r\n"),
        "sender": (b"\x07\x09\x01", b"From: Alerts <alerts@corp.example>\r\nSender: relay@corp.example\r\n"
                   b"Message-ID: <1@corp.example>\r\n\r\n"),
        "no-blank-line": (b"\x05\x02\x00", b"From: a@x.example\r\nSubject: headers only\r\n"),
        "no-header": (b"\x07\x00\x00", b"\r\nFrom: in the body@x\r\n"),
        "huge-line": (b"\x07\x0b\x01", b"From: " + b"\"" + b"N" * 1200 + b"\" <n@corp.example>\r\n"
                      b"Subject: " + b"x" * 1500 + b"\r\n\r\n"),
        "too-large": (b"\x04\x04\x00", b"From: a@corp.example\r\nX-Pad: " + b"p" * 80 + b"\r\n\r\nbody"),
    }.items():
        write("headers", name, head + msg)

    tok = tokens()

    def t(*parts: bytes) -> bytes:
        return bytes(tok.index(p) for p in parts)

    crlf = b"\r\n"
    message = t(
        b"MAIL FROM:<a@b.example>\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n",
        crlf,
        b"..",
        b"x",
        b"\r\n.\r\n",
    )
    for name, data in {
        # implicit TLS, AUTH required: EHLO, AUTH PLAIN, a message, QUIT
        "auth-message": bytes([1, 0, 0, 7, 0])
        + t(b"EHLO client.example\r\n", b"AUTH PLAIN AGFwcDEAc2VjcmV0\r\n")
        + message
        + t(b"QUIT\r\n"),
        # no AUTH, pipelined in reads split by 0xFF, smuggling attempt
        "smuggle": bytes([6, 0, 0, 5, 0])
        + t(b"HELO h\r\n")
        + bytes([0xFF])
        + t(b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n", b"DATA\r\n")
        + t(b"x", b"\n.\n", b"MAIL FROM:<a@b.example>\r\n", b"\r.\r", b"\r\n.\r\n", b"NOOP\r\n"),
        # STARTTLS then AUTH LOGIN; a long line runs past the command cap
        "starttls-login": bytes([0, 0, 0, 9, 1])
        + t(b"EHLO client.example\r\n", b"STARTTLS\r\n", b"EHLO client.example\r\n")
        + t(b"AUTH LOGIN\r\n", b"YXBwMQ==", crlf, b"c2VjcmV0", crlf)
        + bytes([0xF0, 20])
        + t(crlf, b"NOOP\r\n"),
        # size cap 16, normalise bare LF, path and parameter tokens
        "params": bytes([2 + 6 + 18, 3, 4, 1, 2])
        + t(b"EHLO client.example\r\n", b"MAIL FROM:<", b"\"", b"a@b.example", b"\"")
        + t(b">", b" SIZE=", b"100", b" SMTPUTF8", crlf, b"RCPT TO:<", b"postmaster", b">", crlf)
        + t(b"DATA\r\n", b"x", b"\n", b"x", b"\r\n.\r\n"),
    }.items():
        write("session_alphabet", name, data)


if __name__ == "__main__":
    main()
