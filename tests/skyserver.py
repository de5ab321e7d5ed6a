"""A local, fault-injecting stand-in for SkyServer's SqlSearch and ImgCutout services.

A real HTTP server on 127.0.0.1 (a free port) in a background thread. SqlSearch answers
``#Table1`` plus CSV of deterministic fake objects of the class and ``TOP k`` in the SQL;
getjpeg answers a small real JPEG of one flat colour that depends on ra/dec
(``expected_color``), so a test can tell which object's image landed in a file.

Faults are deterministic: ``faults[key]`` lists what the 1st, 2nd, ... request for one
cutout gets (after the list, good answers); ``sql_faults`` does the same for SQL requests in
order; ``missing`` objects always get 404. A cutout's key is its fake object's objid, or
``position_key(ra, dec)`` for positions the server did not invent. Fault names:

    "500", "503", "404"  that status with a short text body
    "hang"               sleep ``hang_s`` (longer than the client timeout), then a good answer
    "slow"               sleep ``slow_s`` (shorter than the client timeout), then a good answer
    "short"              a good JPEG under a Content-Length 1000 bytes too large
    "half"               the first half of a good JPEG, with a matching Content-Length
    "html"               an HTML error page with status 200

Every request is logged (``log``) with what was served, so tests can count downloads.
"""
from __future__ import annotations

import io
import re
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

LABELS = ("GALAXY", "QSO", "STAR")
IMAGE_SIDE = 64
HTML_ERROR = b"<html><body><h1>Server Error</h1><p>Try again later.</p></body></html>"


def position_key(ra: float, dec: float) -> str:
    """The fault/log key of a position the server did not invent."""
    return f"{float(ra)!r},{float(dec)!r}"


def expected_color(ra: float, dec: float) -> tuple[int, int, int]:
    """The flat RGB colour of the cutout served for (ra, dec)."""
    digest = zlib.crc32(position_key(ra, dec).encode())
    # Kept away from 0 and 255 so JPEG rounding never clips.
    return tuple(30 + (digest >> shift) % 196 for shift in (0, 8, 16))


def jpeg_for(ra: float, dec: float, side: int = IMAGE_SIDE) -> bytes:
    """The JPEG served for (ra, dec)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), expected_color(ra, dec)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def fake_object(label: str, index: int) -> dict:
    """The ``index``-th fake object of a class: objid, specobjid, class, z, ra, dec."""
    c = LABELS.index(label)
    return {
        "specobjid": str(2990000000000000000 + c * 1_000_000 + index),
        "class": label,
        "z": f"{0.01 * (index % 50) + 0.5 * c:.4f}",
        "ra": round((c * 97.0 + index * 0.7311) % 360.0, 6),
        "dec": round(-60.0 + (c * 13.0 + index * 1.379) % 120.0, 6),
        "objid": str(1237650000000000000 + c * 1_000_000 + index),
    }


@dataclass
class Served:
    """One logged request: ``kind`` is ``sql`` or ``cutout``; ``what`` is the fault or ``ok``."""

    kind: str
    key: str
    what: str
    time: float


class SkyServer:
    """The fake service; use as ``with SkyServer(...) as server: server.base_url``."""

    def __init__(self, faults: dict[str, list[str]] | None = None, sql_faults: list[str] | None = None,
                 missing: set[str] | None = None, hang_s: float = 1.0, slow_s: float = 0.05,
                 delay_s: float = 0.0):
        """Configure the faults.

        Args:
            faults: per cutout key, the fault of each successive request.
            sql_faults: the fault of each successive SQL request.
            missing: cutout keys that always get 404.
            hang_s: how long a "hang" sleeps.
            slow_s: how long a "slow" sleeps.
            delay_s: sleep before every good cutout (to make a fetch take a while).
        """
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.sql_faults = list(sql_faults or [])
        self.missing = set(missing or ())
        self.hang_s, self.slow_s, self.delay_s = hang_s, slow_s, delay_s
        self.log: list[Served] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._positions: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "SkyServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server._handle(self)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # Closing must not wait for a handler that is deliberately hanging.
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def objects(self, label: str, k: int) -> list[dict]:
        """The first ``k`` fake objects of a class, as SqlSearch returns them."""
        return [fake_object(label, i) for i in range(k)]

    def requests(self, kind: str, key: str | None = None, what: str | None = None) -> list[Served]:
        """Logged requests of one kind, optionally for one key and one outcome."""
        with self._lock:
            return [s for s in self.log if s.kind == kind and key in (None, s.key) and what in (None, s.what)]

    def _next_fault(self, kind: str, key: str, plan: list[str]) -> str:
        with self._lock:
            count = self._counts.get((kind, key), 0)
            self._counts[(kind, key)] = count + 1
        return plan[count] if count < len(plan) else "ok"

    def _record(self, kind: str, key: str, what: str) -> None:
        with self._lock:
            self.log.append(Served(kind, key, what, time.monotonic()))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path.endswith("/SkyServerWS/SearchTools/SqlSearch"):
                self._sql(handler, query)
            elif url.path.endswith("/SkyServerWS/ImgCutout/getjpeg"):
                self._cutout(handler, query)
            else:
                self._send(handler, 404, b"no such service", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): expected with "hang"

    def _sql(self, handler, query: dict) -> None:
        sql = query.get("cmd", "")
        fault = self._next_fault("sql", "sql", self.sql_faults)
        self._record("sql", sql, fault)
        if self._apply_fault(handler, fault, body=None):
            return
        top = re.search(r"\bTOP\s+(\d+)", sql, re.IGNORECASE)
        label = re.search(r"class\s*=\s*'(\w+)'", sql, re.IGNORECASE)
        if query.get("format") != "csv" or not top or not label or label.group(1).upper() not in LABELS:
            self._send(handler, 400, b"bad query", "text/plain")
            return
        rows = self.objects(label.group(1).upper(), int(top.group(1)))
        lines = ["#Table1", "specobjid,class,z,ra,dec,objid"]
        lines += [f"{r['specobjid']},{r['class']},{r['z']},{r['ra']!r},{r['dec']!r},{r['objid']}" for r in rows]
        self._send(handler, 200, ("\n".join(lines) + "\n").encode(), "text/plain")

    def _cutout(self, handler, query: dict) -> None:
        try:
            ra, dec = float(query["ra"]), float(query["dec"])
            side = int(query.get("width", IMAGE_SIDE))
        except (KeyError, ValueError):
            self._send(handler, 400, b"ra, dec and width required", "text/plain")
            return
        key = self.key(ra, dec)
        fault = "404" if key in self.missing else self._next_fault("cutout", key, self.faults.get(key, []))
        body = jpeg_for(ra, dec, side=min(side, IMAGE_SIDE))
        self._record("cutout", key, fault)
        if self._apply_fault(handler, fault, body):
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        self._send(handler, 200, body, "image/jpeg")

    def key(self, ra: float, dec: float) -> str:
        """The key of a cutout request: the fake objid at (ra, dec), else ``position_key``."""
        with self._lock:
            if not self._positions:
                for label in LABELS:
                    for i in range(2000):
                        o = fake_object(label, i)
                        self._positions[position_key(o["ra"], o["dec"])] = o["objid"]
        pos = position_key(ra, dec)
        return self._positions.get(pos, pos)

    def _apply_fault(self, handler, fault: str, body: bytes | None) -> bool:
        """Serve ``fault``; True when the request is answered (False: serve normally)."""
        if fault in ("500", "503", "404"):
            self._send(handler, int(fault), f"error {fault}".encode(), "text/plain")
        elif fault == "html":
            self._send(handler, 200, HTML_ERROR, "text/html")
        elif fault in ("hang", "slow"):
            time.sleep(self.hang_s if fault == "hang" else self.slow_s)
            return False
        elif fault == "short" and body is not None:
            self._send(handler, 200, body, "image/jpeg", length=len(body) + 1000)
        elif fault == "half" and body is not None:
            self._send(handler, 200, body[: len(body) // 2], "image/jpeg")
        elif fault != "ok":
            raise ValueError(f"unknown fault {fault!r}")
        return fault != "ok"

    @staticmethod
    def _send(handler, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
