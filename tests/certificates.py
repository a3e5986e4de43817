"""A private certificate authority and a server certificate for 127.0.0.1, made with the
openssl command at test time (no key or certificate is committed)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import require_component


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate, which clients trust
    cert: Path  # the server's certificate, signed by the CA, for IP 127.0.0.1 and localhost
    key: Path  # the server's private key, unencrypted


def make_certificates(directory: Path) -> Certificates:
    require_component("openssl", shutil.which("openssl") is not None, "install it (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, request, cert = (directory / name for name in
                                      ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    for command in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
             "-subj", "/CN=limaml test CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "1", "-extfile", extensions]):
        done = subprocess.run(["openssl", *map(str, command)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return Certificates(ca=ca, cert=cert, key=key)
