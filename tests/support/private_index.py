"""A private package index for the tests: PEP 503 "simple" pages over loopback HTTP behind
basic auth, holding one tiny pure-Python wheel made here.

    python3 private_index.py USER TOKEN VERSION LOG

prints its port on the first line of stdout, then serves until killed. Every request is
appended to LOG as `METHOD PATH STATUS` (never the credentials), so a test can tell whether
an installer came with them. Projects other than `yatai-private-probe` are 404 (an extra
index: the installer goes on to PyPI for them).
"""

import base64
import hashlib
import io
import sys
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER, TOKEN, VERSION, LOG = sys.argv[1:5]
DIST = "yatai_private_probe"
WHEEL = f"{DIST}-{VERSION}-py3-none-any.whl"


def make_wheel():
    files = {
        f"{DIST}/__init__.py": f'MESSAGE = "served by the private index, version {VERSION}"\n',
        f"{DIST}-{VERSION}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: yatai-private-probe\nVersion: {VERSION}\n",
        f"{DIST}-{VERSION}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: yatai-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{DIST}-{VERSION}.dist-info/RECORD,,")
    files[f"{DIST}-{VERSION}.dist-info/RECORD"] = "\n".join(record) + "\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


DATA = make_wheel()
SHA = hashlib.sha256(DATA).hexdigest()
EXPECTED = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()


class Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        self.head = head
        if self.headers.get("Authorization") != EXPECTED:
            return self.answer(401, b"authentication required", "text/plain", {"WWW-Authenticate": 'Basic realm="private"'})
        if self.path.rstrip("/") == "/simple/yatai-private-probe":
            page = f'<!DOCTYPE html><html><body><a href="/files/{WHEEL}#sha256={SHA}">{WHEEL}</a></body></html>'
            return self.answer(200, page.encode(), "text/html")
        if self.path == f"/files/{WHEEL}":
            return self.answer(200, DATA, "application/octet-stream")
        return self.answer(404, b"not here", "text/plain")

    def answer(self, status, body, kind, headers=None):
        with open(LOG, "a") as log:
            log.write(f"{'HEAD' if self.head else 'GET'} {self.path} {status}\n")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not self.head:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
