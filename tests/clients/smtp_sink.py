"""A local SMTP server for the tests (aiosmtpd): every message it accepts is parsed with
Python's own e-mail parser and written to OUT_DIR as one JSON file, with what the session was
(TLS, authenticated user). Prints "ready" once listening; runs until killed.

usage: smtp_sink.py PORT OUT_DIR [--starttls CERT KEY] [--auth USER PASSWORD]
"""

import asyncio
import email
import email.policy
import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

args = sys.argv[1:]
port, out_dir = int(args[0]), args[1]
tls_context = None
credentials = None
rest = args[2:]
while rest:
    if rest[0] == "--starttls":
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(rest[1], rest[2])
        rest = rest[3:]
    elif rest[0] == "--auth":
        credentials = (rest[1].encode(), rest[2].encode())
        rest = rest[3:]
    else:
        sys.exit(f"unknown argument {rest[0]}")


class Sink:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in message.walk():
            if part.get_content_maintype() == "text":
                parts[part.get_content_subtype()] = part.get_content()
        Sink.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "auth": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
            "headers": {k: str(v) for k, v in message.items()},
            "content_type": message.get_content_type(),
            "text": parts.get("plain"),
            "html": parts.get("html"),
        }
        path = os.path.join(out_dir, f"{time.time_ns()}-{Sink.count}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == credentials
    return AuthResult(success=ok, auth_data=auth_data if ok else None)


kwargs = {}
if tls_context is not None:
    kwargs.update(tls_context=tls_context, require_starttls=True)
if credentials is not None:
    kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=tls_context is not None)
controller = Controller(Sink(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("ready", flush=True)
try:
    asyncio.get_event_loop().run_forever()
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
