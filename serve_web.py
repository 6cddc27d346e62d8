"""Serve the browser page (web/) that animates with the TF.js exports.

    python serve_web.py [--port 8000] [--host 127.0.0.1] [--exportdir DIR] [--datadir DIR] [--results DIR]
                        [--quiet]

Serves, read-only, only what the page needs: web/ (the page is at /web/), the TF.js files it loads
from node_modules/ (`npm ci`), the bundled example's photo and video, and the graph models
`build.py --tfjs` wrote in js/<model>/<module>/ (or under --exportdir, like run.py's). --datadir DIR
is served at /data/, for inputs the page is given by URL (tests/test_web.py's frames). Everything
else answers 404: checkpoints, sources, .git.

With --results DIR the page's test mode (report=NAME in its URL) POSTs its outputs to /report/NAME,
stored as DIR/NAME.json; without it, nothing is ever written.
"""
import argparse
import http.server
import json
import os
import re
import sys
from functools import partial
from urllib.parse import unquote, urlsplit

import utils

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
REPORT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
MAX_REPORT_BYTES = 512 * 1024 * 1024  # a few hundred full-size float32 frames, base64
# Repository files the page loads outside web/: web/index.html's scripts, the wasm backend's binaries
# (source maps only for the browser's developer tools), and the default inputs in app.js.
PAGE_FILES = frozenset([
    *(f"node_modules/@tensorflow/{path}" for path in (
        "tfjs/dist/tf.min.js", "tfjs/dist/tf.min.js.map",
        "tfjs-backend-wasm/dist/tf-backend-wasm.min.js", "tfjs-backend-wasm/dist/tf-backend-wasm.min.js.map",
        "tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm", "tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm",
        "tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm")),
    "example/source.png", "example/driving.mp4",
])
NOT_SERVED = os.path.join(REPO_DIR, ".not-served")  # no such file: the handler answers 404


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve web/, the in-browser animation page, and its test reports.")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--exportdir", default=REPO_DIR,
                        help="build.py --outdir whose js/<model>/<module>/ the page loads (default: the repository)")
    parser.add_argument("--datadir", help="also serve this folder, read-only, at /data/")
    parser.add_argument("--results", help="accept the page's test-mode reports and store them in this folder")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser.parse_args(argv)


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of the page's files; POST /report/NAME only when a results folder is set."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
                      ".json": "application/json", ".f32": "application/octet-stream"}

    def __init__(self, *args, exportdir, datadir, results, quiet, **kwargs):
        self.exportdir = exportdir
        self.datadir = datadir
        self.results = results
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def end_headers(self):
        # Cross-origin isolation lets the wasm backend use its multi-threaded build (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")  # a rebuilt model must not be mixed with cached shards
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self):
        if urlsplit(self.path).path in ("", "/"):
            self.send_response(302)
            self.send_header("Location", "/web/")
            self.end_headers()
            return
        path = self.translate_path(self.path)
        requested = BYTE_RANGE.fullmatch(self.headers.get("Range", "").strip())
        if requested and os.path.isfile(path):
            self.send_byte_range(path, requested)
            return
        super().do_GET()  # also for ranges other than one `bytes=a-b`: the whole file is a valid answer

    def send_byte_range(self, path, requested):
        """206 with one byte range of a file: without ranges, browsers cannot seek in a video (the
        page reads driving frames by seeking)."""
        size = os.path.getsize(path)
        span = byte_span(requested, size)
        if span is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = span
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def translate_path(self, path):
        """/web/... from web/, /js/... from the export folder, /data/... from --datadir, PAGE_FILES from
        the repository; anything else, and any path with a hidden or dot segment (.git, ..), maps to
        NOT_SERVED."""
        parts = unquote(urlsplit(path).path).split("/")[1:]
        # basename differs where a segment holds a separator or a drive (Windows: "..\\", "C:"); a NUL
        # would make open() raise ValueError, not the OSError that answers 404
        if any(part.startswith(".") or os.path.basename(part) != part or "\0" in part for part in parts):
            return NOT_SERVED
        top, *rest = parts or [""]
        if top == "web":
            return os.path.join(REPO_DIR, "web", *rest)
        if top == "js":
            return os.path.join(self.exportdir, "js", *rest)
        if top == "data" and self.datadir is not None:
            return os.path.join(self.datadir, *rest)
        if "/".join(parts) in PAGE_FILES:
            return os.path.join(REPO_DIR, *parts)
        return NOT_SERVED

    def do_POST(self):
        name = self.report_name()
        if name is None:
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_REPORT_BYTES:
            self.send_error(413 if length else 411, "report body missing or too large")
            return
        body = self.rfile.read(length)
        try:
            json.loads(body)
        except ValueError:
            self.send_error(400, "report is not JSON")
            return
        utils.write_atomically(os.path.join(self.results, f"{name}.json"), body)
        self.send_response(204)
        self.end_headers()

    def report_name(self):
        """NAME of POST /report/NAME, or None after answering a request that cannot be stored."""
        if self.results is None:
            self.send_error(405, "read-only server: start it with --results DIR to accept reports")
            return None
        match = re.fullmatch(r"/report/(.*)", urlsplit(self.path).path)
        if not match or not REPORT_NAME.fullmatch(match.group(1)):
            self.send_error(404, "reports go to /report/NAME (letters, digits, _ and -)")
            return None
        return match.group(1)

    def do_PUT(self):
        self.send_error(405, "read-only server")

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def byte_span(requested, size):
    """(first, last) byte of a `bytes=a-b`, `bytes=a-` or `bytes=-n` match in a file of `size`
    bytes, or None when it asks for nothing inside the file."""
    start, end = requested.groups()
    if start:
        first = int(start)
        last = min(int(end), size - 1) if end else size - 1
    elif end and int(end) > 0:
        first, last = max(0, size - int(end)), size - 1
    else:
        return None
    return (first, last) if first <= last else None


class ServeError(Exception):
    """A folder or address the server cannot use; the message is one line."""


def check_folders(args):
    for option, folder in (("--exportdir", args.exportdir), ("--datadir", args.datadir)):
        if folder is not None and not os.path.isdir(folder):
            raise ServeError(f"{option} {folder}: no such folder")
    if args.results is not None:
        try:
            os.makedirs(args.results, exist_ok=True)
        except OSError as error:
            raise ServeError(f"--results {args.results}: {error.strerror}") from None
        if not os.access(args.results, os.W_OK):
            raise ServeError(f"--results {args.results}: not writable")


def absolute(folder):
    return None if folder is None else os.path.abspath(folder)


def make_server(args):
    """A ThreadingHTTPServer for parsed arguments, listening but not yet serving."""
    check_folders(args)
    handler = partial(PageHandler, directory=REPO_DIR, exportdir=absolute(args.exportdir),
                      datadir=absolute(args.datadir), results=absolute(args.results), quiet=args.quiet)
    try:
        return http.server.ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as error:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None


def missing_pieces(args):
    """Warnings for what the page will lack: TF.js itself, or any model to load."""
    if not os.path.isfile(os.path.join(REPO_DIR, "node_modules", "@tensorflow", "tfjs", "dist", "tf.min.js")):
        yield "node_modules has no TF.js: run `npm ci` first"
    models = os.path.join(args.exportdir, "js")
    if not os.path.isdir(models) or not os.listdir(models):
        yield (f"no TF.js models in {models}: build one, e.g. python build.py --config example/demo-256.yaml "
               "--checkpoint example/demo-cpk.pth.tar --tfjs --nolite")


def page_url(server):
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/web/"


def main(argv=None):
    args = parse_args(argv)
    try:
        server = make_server(args)
    except ServeError as error:
        utils.print_error(error)
        return 1
    print(f"Serving the page at {page_url(server)}  (Ctrl-C stops)", flush=True)
    for warning in missing_pieces(args):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
