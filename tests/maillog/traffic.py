#!/usr/bin/env python3
# tests/maillog/traffic.py: drives the issue-24 traffic against the throwaway Postfix and
# Dovecot of daemons.sh with Python's own smtplib, imaplib and poplib, and reports it as JSON.
#
# Usage: traffic.py [--extras] [--with STEP]... KEY=VALUE...
# The KEY=VALUE arguments are daemons.sh's start output (SMTP_PORT, IMAP_PORT, USER, PASSWORD,
# LOCAL_DOMAIN, DEFERRED_DOMAIN; with --extras also POSTSCREEN_PORT, POP3_PORT,
# POSTFIX_CONFIG, BOUNCED_ADDRESS and TLS); HOST defaults to 127.0.0.1.
#
# The base traffic. Each step runs in a session of its own, from a loopback source address of
# its own (127.0.0.11 and up: Linux routes all of 127.0.0.0/8 to lo), so `remote-ip=` selects
# exactly one step, and one step's failed authentication never earns the next step Dovecot's
# per-IP auth penalty:
#   delivered          a message to the Dovecot user, delivered over LMTP
#   rejected           RCPT to an unknown local user, rejected with 550 at RCPT time
#   deferred           a message to DEFERRED_DOMAIN, whose transport is a closed loopback port
#   sasl_failed        AUTH PLAIN with a wrong password (535)
#   imap_login         IMAP LOGIN with the right password, SELECT INBOX, LOGOUT
#   imap_login_failed  IMAP LOGIN with a wrong password
# --extras adds the corpus's rarer cases: relay denied, STARTTLS, an authenticated submission,
# a lost connection, an immediate bounce, a non-SMTP command, postscreen's pregreet rejection and a clean
# postscreen pass, a sendmail pickup, POP3 logins. --with STEP adds one of those extras by name
# (after the base traffic), for a test that wants one rare case without all the others.
#
# Output (stdout): one JSON object, a key per step with what was sent and what the server
# answered: from, to, message_id, the client's local port, the reply code and text, and the
# queue id from "250 2.0.0 Ok: queued as ID". A step that does not get the expected answer
# fails the script (exit status 1, the error on stderr), so a test never asserts on a
# half-run traffic.
import imaplib
import json
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time

TIMEOUT = 15
QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


class TrafficError(Exception):
    """A step got an answer other than the expected one."""


def parse_args(argv):
    extras = False
    chosen = []
    env = {"HOST": "127.0.0.1"}
    args = iter(argv)
    for arg in args:
        if arg == "--extras":
            extras = True
        elif arg == "--with":
            chosen.append(next(args, ""))
        elif "=" in arg:
            key, value = arg.split("=", 1)
            env[key] = value
        else:
            raise SystemExit("traffic.py: not KEY=VALUE: %r" % arg)
    for key in ("SMTP_PORT", "IMAP_PORT", "USER", "PASSWORD", "LOCAL_DOMAIN", "DEFERRED_DOMAIN"):
        if key not in env:
            raise SystemExit("traffic.py: missing %s=..." % key)
    return extras, chosen, env


def text(resp):
    return resp.decode("utf-8", errors="replace") if isinstance(resp, bytes) else str(resp)


def expect(what, got, want):
    code, resp = got
    if code != want:
        raise TrafficError("%s: expected %d, got %d %s" % (what, want, code, text(resp)))
    return text(resp)


# The client address of each step.
SOURCES = {
    "delivered": "127.0.0.11",
    "rejected": "127.0.0.12",
    "deferred": "127.0.0.13",
    "sasl_failed": "127.0.0.14",
    "imap_login": "127.0.0.15",
    "imap_login_failed": "127.0.0.16",
    "relay_denied": "127.0.0.21",
    "authenticated": "127.0.0.22",
    "lost_connection": "127.0.0.23",
    "bounced": "127.0.0.24",
    "postscreen_pregreet": "127.0.0.25",
    "postscreen_pass": "127.0.0.26",
    "pop3_login": "127.0.0.27",
    "pop3_login_failed": "127.0.0.28",
    "starttls": "127.0.0.29",
    "non_smtp_command": "127.0.0.30",
}


def smtp(env, step, port_key="SMTP_PORT"):
    s = smtplib.SMTP(
        env["HOST"],
        int(env[port_key]),
        local_hostname="client.livetap.test",
        timeout=TIMEOUT,
        source_address=(SOURCES[step], 0),
    )
    return s, s.sock.getsockname()[1]


class IMAP(imaplib.IMAP4):
    """imaplib's client, connecting from a given source address."""

    def __init__(self, host, port, source):
        self._source = source
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


class POP3(poplib.POP3):
    """poplib's client, connecting from a given source address."""

    def __init__(self, host, port, source):
        self._source = source
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


def message(sender, rcpt, subject, message_id):
    return (
        "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
        "Date: %s\r\n\r\nlivetap issue 24 test traffic: %s\r\n"
        % (sender, rcpt, subject, message_id, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()), subject)
    )


def send(s, sender, rcpt, subject, tag):
    """MAIL, RCPT and DATA on an open session; returns the step's record."""
    message_id = "%s.%d@client.livetap.test" % (tag, int(time.time() * 1000))
    expect("MAIL FROM", s.mail(sender), 250)
    expect("RCPT TO <%s>" % rcpt, s.rcpt(rcpt), 250)
    reply = expect("DATA", s.data(message(sender, rcpt, subject, message_id)), 250)
    m = QUEUED.search(reply)
    if not m:
        raise TrafficError("DATA reply without a queue id: %s" % reply)
    return {"from": sender, "to": rcpt, "message_id": message_id, "code": 250, "reply": reply, "queue_id": m.group(1)}


def delivered(env):
    s, port = smtp(env, "delivered")
    s.ehlo()
    rec = send(s, "sender@client.livetap.test", env["USER"], "delivered", "delivered")
    s.quit()
    rec["client_port"] = port
    return rec


def rejected(env):
    s, port = smtp(env, "rejected")
    s.ehlo()
    sender = "sender@client.livetap.test"
    rcpt = "nobody@" + env["LOCAL_DOMAIN"]
    expect("MAIL FROM", s.mail(sender), 250)
    code, resp = s.rcpt(rcpt)
    if code != 550:
        raise TrafficError("RCPT to an unknown user: expected 550, got %d %s" % (code, text(resp)))
    s.rset()
    s.quit()
    return {"from": sender, "to": rcpt, "code": code, "reply": text(resp), "client_port": port}


def deferred(env):
    s, port = smtp(env, "deferred")
    s.ehlo()
    # The local user is the sender, so the eventual bounce (when the queue lifetime is short)
    # is delivered locally instead of being deferred in turn.
    rec = send(s, env["USER"], "someone@" + env["DEFERRED_DOMAIN"], "deferred", "deferred")
    s.quit()
    rec["client_port"] = port
    return rec


def sasl_failed(env):
    s, port = smtp(env, "sasl_failed")
    s.ehlo()
    # One AUTH PLAIN only: smtplib's login() would retry with every advertised mechanism.
    s.user, s.password = env["USER"], env["PASSWORD"] + "-wrong"
    try:
        code, resp = s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        code, resp = e.smtp_code, e.smtp_error
    if code != 535:
        raise TrafficError("AUTH with a wrong password: expected 535, got %s %s" % (code, text(resp)))
    s.quit()
    return {"user": env["USER"], "mechanism": "PLAIN", "code": code, "reply": text(resp), "client_port": port}


def imap_login(env):
    m = IMAP(env["HOST"], int(env["IMAP_PORT"]), SOURCES["imap_login"])
    port = m.sock.getsockname()[1]
    typ, data = m.login(env["USER"], env["PASSWORD"])
    if typ != "OK":
        raise TrafficError("IMAP LOGIN: %s %s" % (typ, data))
    typ, data = m.select("INBOX")
    if typ != "OK":
        raise TrafficError("IMAP SELECT: %s %s" % (typ, data))
    exists = int(data[0])
    m.logout()
    return {"user": env["USER"], "ok": True, "messages": exists, "client_port": port}


def imap_login_failed(env):
    m = IMAP(env["HOST"], int(env["IMAP_PORT"]), SOURCES["imap_login_failed"])
    port = m.sock.getsockname()[1]
    try:
        m.login(env["USER"], env["PASSWORD"] + "-wrong")
    except imaplib.IMAP4.error as e:
        reply = text(e.args[0]) if e.args else str(e)
    else:
        raise TrafficError("IMAP LOGIN with a wrong password succeeded")
    m.logout()
    return {"user": env["USER"], "ok": False, "reply": reply, "client_port": port}


# ---- extras, for the corpus ----


def relay_denied(env):
    s, port = smtp(env, "relay_denied")
    s.ehlo()
    sender, rcpt = "sender@client.livetap.test", "someone@example.com"
    expect("MAIL FROM", s.mail(sender), 250)
    code, resp = s.rcpt(rcpt)
    if code != 554:
        raise TrafficError("RCPT for relaying: expected 554, got %d %s" % (code, text(resp)))
    s.quit()
    return {"from": sender, "to": rcpt, "code": code, "reply": text(resp), "client_port": port}


def starttls(env):
    s, port = smtp(env, "starttls")
    s.ehlo()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo()
    rec = send(s, "sender@client.livetap.test", env["USER"], "over STARTTLS", "starttls")
    rec["tls"] = s.sock.version()
    s.quit()
    rec["client_port"] = port
    return rec


def authenticated(env):
    s, port = smtp(env, "authenticated")
    s.ehlo()
    s.user, s.password = env["USER"], env["PASSWORD"]
    expect("AUTH PLAIN", s.auth("PLAIN", s.auth_plain), 235)
    rec = send(s, env["USER"], env["USER"], "authenticated submission", "authenticated")
    s.quit()
    rec["client_port"] = port
    rec["sasl_username"] = env["USER"]
    return rec


def lost_connection(env):
    s, port = smtp(env, "lost_connection")
    s.ehlo()
    # Close without QUIT: smtpd logs "lost connection after EHLO".
    s.sock.close()
    s.sock = None
    s.file = None
    return {"after": "EHLO", "client_port": port}


def non_smtp_command(env):
    # An HTTP request line sent to smtpd: logged as a warning, then the connection is dropped.
    sock = socket.create_connection(
        (env["HOST"], int(env["SMTP_PORT"])), timeout=TIMEOUT, source_address=(SOURCES["non_smtp_command"], 0)
    )
    port = sock.getsockname()[1]
    f = sock.makefile("rb")
    recv_reply(f)  # the greeting
    sock.sendall(b"GET / HTTP/1.0\r\n")
    code, reply = recv_reply(f)
    sock.close()
    return {"sent": "GET / HTTP/1.0", "code": code, "reply": reply, "client_port": port}


def bounced(env):
    s, port = smtp(env, "bounced")
    s.ehlo()
    # BOUNCED_ADDRESS is a local alias that cleanup rewrites to a domain of the error
    # transport: smtpd accepts it, the queue manager bounces it at once.
    rec = send(s, env["USER"], env["BOUNCED_ADDRESS"], "bounced", "bounced")
    s.quit()
    rec["client_port"] = port
    return rec


def recv_reply(f):
    """One SMTP reply, possibly multi-line, from a socket file; returns (code, text)."""
    lines = []
    while True:
        line = f.readline().decode("utf-8", errors="replace")
        if not line:
            raise TrafficError("connection closed while reading a reply")
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), "\n".join(lines)


def postscreen_pregreet(env):
    # Talk before the greeting: postscreen logs PREGREET and, with greet_action = enforce, its
    # dummy SMTP engine rejects the recipient.
    sock = socket.create_connection(
        (env["HOST"], int(env["POSTSCREEN_PORT"])), timeout=TIMEOUT, source_address=(SOURCES["postscreen_pregreet"], 0)
    )
    port = sock.getsockname()[1]
    sock.sendall(b"EHLO pregreet.livetap.test\r\n")
    f = sock.makefile("rb")
    # postscreen takes the early text as the pregreeting and answers nothing to it; its dummy
    # SMTP engine then speaks after the greeting.
    replies = [recv_reply(f)]  # the greeting
    sock.sendall(b"EHLO pregreet.livetap.test\r\n")
    replies.append(recv_reply(f))
    sock.sendall(b"MAIL FROM:<sender@client.livetap.test>\r\n")
    replies.append(recv_reply(f))
    sock.sendall(("RCPT TO:<%s>\r\n" % env["USER"]).encode())
    code, reply = recv_reply(f)
    replies.append((code, reply))
    sock.sendall(b"QUIT\r\n")
    try:
        replies.append(recv_reply(f))
    except (TrafficError, OSError):
        pass
    sock.close()
    if code // 100 not in (4, 5):
        raise TrafficError("postscreen accepted a pregreeting client: %d %s" % (code, reply))
    return {"to": env["USER"], "code": code, "reply": reply, "client_port": port}


def postscreen_pass(env):
    s, port = smtp(env, "postscreen_pass", "POSTSCREEN_PORT")
    s.ehlo()
    rec = send(s, "sender@client.livetap.test", env["USER"], "through postscreen", "postscreen")
    s.quit()
    rec["client_port"] = port
    return rec


def pickup(env):
    message_id = "pickup.%d@client.livetap.test" % int(time.time() * 1000)
    body = message(env["USER"], env["USER"], "sendmail pickup", message_id)
    subprocess.run(
        ["sendmail", "-C", env["POSTFIX_CONFIG"], "-f", env["USER"], env["USER"]],
        input=body.replace("\r\n", "\n").encode(),
        check=True,
        timeout=TIMEOUT,
    )
    return {"from": env["USER"], "to": env["USER"], "message_id": message_id, "uid": 0}


def pop3(env, step, password, ok):
    p = POP3(env["HOST"], int(env["POP3_PORT"]), SOURCES[step])
    port = p.sock.getsockname()[1]
    p.user(env["USER"])
    try:
        p.pass_(password)
    except poplib.error_proto as e:
        if ok:
            raise TrafficError("POP3 PASS: %s" % e)
        reply = text(e.args[0])
        p.quit()
        return {"user": env["USER"], "ok": False, "reply": reply, "client_port": port}
    if not ok:
        raise TrafficError("POP3 PASS with a wrong password succeeded")
    count, _size = p.stat()
    p.quit()
    return {"user": env["USER"], "ok": True, "messages": count, "client_port": port}


def main():
    extras, chosen, env = parse_args(sys.argv[1:])
    out = {}
    steps = [
        ("delivered", delivered),
        ("rejected", rejected),
        ("deferred", deferred),
        ("sasl_failed", sasl_failed),
        ("imap_login", imap_login),
        ("imap_login_failed", imap_login_failed),
    ]
    extra_steps = [
        ("relay_denied", relay_denied),
        ("authenticated", authenticated),
        ("lost_connection", lost_connection),
        ("bounced", bounced),
        ("non_smtp_command", non_smtp_command),
        ("postscreen_pregreet", postscreen_pregreet),
        ("postscreen_pass", postscreen_pass),
        ("pickup", pickup),
        ("pop3_login", lambda e: pop3(e, "pop3_login", e["PASSWORD"], True)),
        ("pop3_login_failed", lambda e: pop3(e, "pop3_login_failed", e["PASSWORD"] + "-wrong", False)),
        ("starttls", starttls),
    ]
    if extras:
        # STARTTLS only when daemons.sh could make a certificate.
        steps += [s for s in extra_steps if s[0] != "starttls" or env.get("TLS") == "yes"]
    known = dict(extra_steps)
    for name in chosen:
        if name not in known:
            raise SystemExit("traffic.py: --with %r: not one of %s" % (name, ", ".join(known)))
        if not extras:
            steps.append((name, known[name]))
    for name, step in steps:
        try:
            out[name] = step(env)
            if name in SOURCES:
                out[name]["client_ip"] = SOURCES[name]
        except (TrafficError, OSError, smtplib.SMTPException, imaplib.IMAP4.error, subprocess.SubprocessError) as e:
            sys.stderr.write("traffic.py: step %s failed: %s: %s\n" % (name, type(e).__name__, e))
            json.dump(out, sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
            return 1
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
