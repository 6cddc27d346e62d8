"""The browser page (web/, served by serve_web.py) in headless Chromium, on every TF.js backend.

The page's test mode (report=NAME in its URL) animates the vox fixture's frames with its TF.js export
and POSTs the predictions; they must equal the SavedModel's run through animate.py's pipeline
(relative motion, adapted scale, the same batches). The frames go in as raw float32 files, so no image
or video decoder stands between the two; PNG inputs and the downloads are checked on the same run.
The README's "Run in the browser" commands run on the example with the page's defaults (the backend it
picks, the bundled photo and MP4 at the fps read from it), and leave a screenshot. Before any run, the
page picks its backend from the WebGL renderer, previews the inputs and reads the video's fps.
serve_web.py's own rules (what it serves, MIME types, read-only, where reports go) are checked
in-process without a browser.

Chromium is driven through its DevTools pipe for screenshots, the downloads and what the page shows
before a run; runs go through the page's own report.
"""
import base64
import contextlib
import http.client
import io
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlencode

import imageio.v2 as imageio
import numpy as np
import pytest

from conftest import (FIXTURE_NAMES, MODEL, REPO, VARIANT_FIXTURE, Builds, load_fixture, max_abs, nchw_to_nhwc,
                      readme_commands, tfjs_available)

import animate
import build
import serve_web
import export_files

CHROMIUM = shutil.which("chromium")
WASM_BACKEND = REPO / "node_modules" / "@tensorflow" / "tfjs-backend-wasm"
FRAMES = 3
BATCH = 2  # three frames: a full batch, then a short one
# The TF.js bound of tests/test_exports.py for every backend. Measured on the vox fixture (3 frames):
# cpu 9.2e-6, wasm 9.0e-6 and webgl 9.2e-6 max abs from the SavedModel; webgl runs on SwiftShader
# here (no GPU), which renders to float32 textures. A GPU limited to float16 textures would not fit.
BACKEND_TOL = {"cpu": 1e-3, "wasm": 1e-3, "webgl": 1e-3}
PAGE_TIMEOUT_S = 240
# No sandbox: CI runs as root in a container. No GPU here: WebGL runs on SwiftShader, which Chromium
# only enables for WebGL when asked to.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--no-first-run", "--mute-audio", "--window-size=1000,760")


def browser_unavailable():
    """None when the page can be run here, else why not (for the skip message)."""
    if CHROMIUM is None:
        return "chromium is not installed: apt-get install -y chromium"
    if not WASM_BACKEND.is_dir():
        return "node_modules lacks @tensorflow/tfjs-backend-wasm: run `npm ci`"
    return tfjs_available()


# --------------------------------------------------------------------------------------------------
# serve_web.py in-process: what it serves and what it accepts
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def local_server(tmp_path):
    """(base URL, export folder, results folder) of a serve_web server running in a thread; it also
    serves tmp_path/data at /data/."""
    exports, results, data = tmp_path / "exports", tmp_path / "results", tmp_path / "data"
    (exports / "js").mkdir(parents=True)
    data.mkdir()
    server = serve_web.make_server(serve_web.parse_args(
        ["--port", "0", "--quiet", "--exportdir", str(exports), "--results", str(results), "--datadir", str(data)]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", exports, results
    server.shutdown()
    server.server_close()


def request(url, method="GET", body=None):
    """(status, headers, body) of one request, error statuses included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method)) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def raw_status(base, path):
    """The status of GET `path` sent as it is (a URL library could resolve its dot segments first)."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()  # closing before the body would reset the server's connection mid-write
        return response.status
    finally:
        connection.close()


def test_only_what_the_page_needs_is_served(local_server):
    base, _, _ = local_server
    refused = ["/README.md", "/run.py", "/tests/test_web.py", "/example/demo-cpk.pth.tar", "/example/demo-256.yaml",
               "/example/", "/checkpoint/anything", "/.git/config", "/web/../README.md", "/web/%2e%2e/README.md",
               "/web/..%2fREADME.md", "/%2e%2e/%2e%2e/etc/passwd", "/data/../../README.md", "/js/../run.py",
               "/web/index.html%00", "*",
               "/node_modules/@tensorflow/tfjs/package.json", "/node_modules/@tensorflow/tfjs/dist/tf.js"]
    assert {path: raw_status(base, path) for path in refused} == {path: 404 for path in refused}


def test_the_page_s_own_files_are_served(local_server):
    """web/, the example inputs, the export, --datadir and every TF.js file the page loads (once
    `npm ci` has put them there); index.html's scripts are all among them."""
    base, exports, _ = local_server
    (exports / "js" / "model.json").write_text("{}")
    (exports.parent / "data" / "clip.mp4").write_bytes(b"\0")
    npm_installed = (REPO / "node_modules" / "@tensorflow").is_dir()
    paths = ["/web/", "/web/index.html", "/web/app.js", "/web/style.css", "/js/", "/js/model.json", "/data/clip.mp4",
             *(f"/{path}" for path in serve_web.PAGE_FILES if npm_installed or not path.startswith("node_modules/"))]
    assert {path: raw_status(base, path) for path in paths} == {path: 200 for path in paths}
    scripts = re.findall(r'<script src="([^"]+)"', (REPO / "web" / "index.html").read_text())
    for script in scripts:
        path = os.path.normpath(f"web/{script}")
        assert path in serve_web.PAGE_FILES or path.startswith("web/"), script


def test_wasm_is_served_as_application_wasm(local_server):
    base, exports, _ = local_server
    (exports / "js" / "module.wasm").write_bytes(b"\0asm")
    status, headers, _ = request(f"{base}/js/module.wasm")
    assert status == 200
    assert headers["Content-Type"] == "application/wasm"


def test_js_comes_from_the_export_folder_and_the_page_from_the_repository(local_server):
    base, exports, _ = local_server
    (exports / "js" / "model.json").write_text("{}")
    assert request(f"{base}/js/model.json")[2] == b"{}"
    assert request(f"{base}/web/index.html")[2] == (REPO / "web" / "index.html").read_bytes()


def test_byte_ranges_are_served_for_video_seeking(local_server):
    base, exports, _ = local_server
    (exports / "js" / "clip.mp4").write_bytes(bytes(range(10)))
    ranged = urllib.request.Request(f"{base}/js/clip.mp4", headers={"Range": "bytes=2-5"})
    with urllib.request.urlopen(ranged) as response:
        assert (response.status, response.headers["Content-Range"], response.read()) == (206, "bytes 2-5/10", b"\2\3\4\5")
    beyond = urllib.request.Request(f"{base}/js/clip.mp4", headers={"Range": "bytes=10-"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(beyond)
    assert error.value.code == 416


def test_hidden_files_are_not_served_and_nothing_can_be_written(local_server):
    base, _, _ = local_server
    assert request(f"{base}/.git/config")[0] == 404
    assert request(f"{base}/web/index.html", "PUT", b"x")[0] == 405
    assert request(f"{base}/web/index.html", "DELETE")[0] == 405


def test_report_is_stored_under_its_name(local_server):
    base, _, results = local_server
    status, _, _ = request(f"{base}/report/run-1", "POST", b'{"frames": 3}')
    assert status == 204
    assert json.loads((results / "run-1.json").read_text()) == {"frames": 3}


def test_reports_outside_the_folder_or_not_json_are_refused(local_server):
    base, _, results = local_server
    assert request(f"{base}/report/..%2Fescape", "POST", b"{}")[0] == 404
    assert request(f"{base}/report/bad", "POST", b"not json")[0] == 400
    assert list(results.iterdir()) == []


def test_reports_are_refused_without_a_results_folder(tmp_path):
    server = serve_web.make_server(serve_web.parse_args(["--port", "0", "--quiet", "--exportdir", str(tmp_path)]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        status, _, _ = request(f"http://127.0.0.1:{server.server_address[1]}/report/x", "POST", b"{}")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 405
    assert list(tmp_path.iterdir()) == []


def test_missing_export_folder_is_a_one_line_error(tmp_path, capsys):
    assert serve_web.main(["--port", "0", "--exportdir", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--exportdir" in err and "no such folder" in err


# --------------------------------------------------------------------------------------------------
# The page in headless Chromium
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Skips the test unless Chromium, TF.js and its converter are all here."""
    reason = browser_unavailable()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")


@pytest.fixture(scope="module")
def web_exports(browser, tmp_path_factory):
    """Export root holding the TF.js (and SavedModel) build of the vox fixture."""
    if VARIANT_FIXTURE not in FIXTURE_NAMES:
        pytest.skip(f"tests/fixtures/{VARIANT_FIXTURE} is missing")
    return Builds(tmp_path_factory).root(VARIANT_FIXTURE, ("--tfjs", "--nolite"))


@pytest.fixture(scope="module")
def inputs():
    """The fixture's source and first driving frames, [1,H,W,3] and [FRAMES,H,W,3] float32."""
    ref = load_fixture(VARIANT_FIXTURE).ref
    return nchw_to_nhwc(ref["source"]).astype(np.float32), nchw_to_nhwc(ref["driving"])[:FRAMES].astype(np.float32)


def quantised(frames):
    """uint8 frames as PNG stores them."""
    return np.round(np.clip(np.asarray(frames, np.float64), 0, 1) * 255).astype(np.uint8)


def write_page_inputs(folder, source, driving):
    """The inputs in both forms the page reads exactly: raw float32 files, and PNG (source.png, frames/)."""
    source.tofile(folder / "source.f32")
    driving.tofile(folder / "driving.f32")
    imageio.imwrite(folder / "source.png", quantised(source[0]))
    (folder / "frames").mkdir()
    for index, frame in enumerate(quantised(driving)):
        imageio.imwrite(folder / "frames" / f"frame_{index:05d}.png", frame)


@contextlib.contextmanager
def serving(*options):
    """serve_web.py run as users run it, in a subprocess on a free port; yields the page's URL."""
    server = subprocess.Popen([sys.executable, str(REPO / "serve_web.py"), *options, "--port", "0", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        words = server.stdout.readline().split()
        urls = [word for word in words if word.startswith("http://")]
        assert urls, f"serve_web.py printed {' '.join(words)!r}, no URL"
        yield urls[0]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def page_server(web_exports, inputs, tmp_path_factory):
    """The page's URL and results folder, serving the fixture export and its frames at /data/."""
    data, results = tmp_path_factory.mktemp("web-data"), tmp_path_factory.mktemp("web-results")
    write_page_inputs(data, *inputs)
    with serving("--exportdir", str(web_exports), "--datadir", str(data), "--results", str(results)) as url:
        yield {"url": url, "results": results}


class DevToolsError(Exception):
    """An error reply to a DevTools command."""


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ending in NUL, which
    the browser reads on its fd 3 and writes on its fd 4 (no websocket client needed)."""

    def __init__(self, to_browser, from_browser, timeout=60):
        self.to_browser, self.from_browser, self.timeout = to_browser, from_browser, timeout
        self.pending = b""
        self.last_id = 0
        self.session = None

    def call(self, method, session=None, **params):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply["result"]

    def read(self):
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.pending:
            ready, _, _ = select.select([self.from_browser], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.from_browser, 1 << 20) if ready else b""
            assert chunk, "chromium's DevTools pipe closed or timed out"
            self.pending += chunk
        message, self.pending = self.pending.split(b"\0", 1)
        return json.loads(message)

    def page_session(self):
        """The session attached to the page's tab (the one Chromium opened on the URL)."""
        if self.session is None:
            page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        return self.session

    def screenshot(self, path):
        """A PNG of the page as it is now."""
        data = self.call("Page.captureScreenshot", self.page_session(), format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def wait_until_loaded(self, timeout=30):
        """Until the page's scripts have run (its tab shows about:blank right after launch)."""
        self.wait_until("document.readyState === 'complete' && typeof openClip === 'function'", timeout)

    def wait_until_ready(self, timeout=30):
        """Until the page has set up its form, picked a backend and started its previews."""
        self.wait_until("document.readyState === 'complete' && typeof openClip === 'function' && "
                        "$('backend-choice').textContent !== ''", timeout)

    def wait_until(self, expression, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(expression):
                    return
            except DevToolsError:  # the page is still navigating
                pass
            assert time.monotonic() < deadline, f"the page never got to {expression}"
            time.sleep(0.1)

    def evaluate(self, expression):
        """The JSON value of a JavaScript expression in the page (a promise is awaited)."""
        reply = self.call("Runtime.evaluate", self.page_session(), expression=expression, awaitPromise=True,
                          returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")


# Runs argv[3:] with the fds argv[1] and argv[2] as its fds 3 and 4, where --remote-debugging-pipe
# expects them (a shell could not: dash's redirections take single-digit fds only).
ON_FDS_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                  "os.execv(sys.argv[3], sys.argv[3:])")


@contextlib.contextmanager
def chromium(url, profile):
    """Headless Chromium showing `url`; yields its (process, DevTools, log path)."""
    to_read, to_write = os.pipe()
    from_read, from_write = os.pipe()
    log_path = Path(profile) / "chromium.log"
    flags = [*CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", url]
    command = [sys.executable, "-c", ON_FDS_3_AND_4, str(to_read), str(from_write), CHROMIUM, *flags]
    with open(log_path, "w") as log:
        browser = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(to_read, from_write))
    os.close(to_read)
    os.close(from_write)
    try:
        yield browser, DevTools(to_write, from_read), log_path
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        os.close(to_write)
        os.close(from_read)


@contextlib.contextmanager
def open_page(server, name, query, timeout=PAGE_TIMEOUT_S):
    """Headless Chromium on the page in test mode with `query`; yields (the JSON the page POSTed,
    DevTools on the page) once it has reported, and closes Chromium after."""
    report = server["results"] / f"{name}.json"
    url = f"{server['url']}?{urlencode({**query, 'report': name})}"
    # Chromium's helper processes may still be writing to the profile as the browser exits.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        with chromium(url, profile) as (browser, devtools, log_path):
            wait_for(report, browser, timeout, log_path)
            yield json.loads(report.read_text()), devtools


def run_page(server, name, query):
    with open_page(server, name, query) as (result, _):
        return result


def wait_for(report, browser, timeout, log_path):
    deadline = time.monotonic() + timeout
    while not report.exists():
        if browser.poll() is not None:
            pytest.fail(f"chromium exited ({browser.returncode}) before the page reported: {tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no report from the page after {timeout} s: {tail(log_path)}")
        time.sleep(0.2)


def tail(path, lines=15):
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def page_query(backend, source="/data/source.f32", driving="/data/driving.f32", **extra):
    return {"model": MODEL, "backend": backend, "source": source, "driving": driving, "batch": BATCH,
            "frames": FRAMES, **extra}


def decode(entry):
    return np.frombuffer(base64.b64decode(entry["data"]), np.float32).reshape(entry["shape"])


def page_prediction(result):
    assert "error" not in result, result["error"]
    assert result["frames"] == FRAMES and result["batch_size"] == BATCH
    return decode(result["prediction"])


@pytest.fixture(scope="module")
def savedmodels(web_exports):
    """animate.Models over the fixture's SavedModel exports."""
    calls = {module: export_files.savedmodel_function(export_files.savedmodel_path(web_exports, MODEL, module))
             for module in export_files.EXPORT_MODULES}
    return animate.Models(**calls, estimate_jacobian=True)


def savedmodel_prediction(models, source, driving):
    """animate.py's pipeline with the page's defaults (relative, adapt) and batches: what the page must give."""
    frames = animate.animate(models, source[0], driving, relative=True, adapt=True, batch_size=BATCH)
    return np.stack(list(frames))


@pytest.mark.parametrize("backend", sorted(BACKEND_TOL))
def test_page_prediction_matches_savedmodel(page_server, savedmodels, inputs, backend):
    result = run_page(page_server, f"match-{backend}", page_query(backend))
    assert result["backend"] == backend
    difference = max_abs(page_prediction(result), savedmodel_prediction(savedmodels, *inputs))
    print(f"{backend}: max abs {difference:.2e} from the SavedModel, {result['timings']['fps']:.2f} frames/s")
    assert difference <= BACKEND_TOL[backend]


def test_png_inputs_reach_the_model_unchanged(page_server, savedmodels, inputs):
    """PNG source and a folder of PNG frames: decoded without colour management, so the page's
    prediction is the SavedModel's on the same 8-bit frames."""
    result = run_page(page_server, "png", page_query("cpu", source="/data/source.png", driving="/data/frames/"))
    source, driving = ((quantised(frames) / 255).astype(np.float32) for frames in inputs)
    assert max_abs(page_prediction(result), savedmodel_prediction(savedmodels, source, driving)) <= BACKEND_TOL["cpu"]


def test_downloads_hold_the_animated_frames(page_server):
    """The zip holds run.py's frame names with the 8-bit frames shown; the WebM is a WebM file."""
    with open_page(page_server, "downloads", page_query("cpu")) as (result, devtools):
        downloads = devtools.evaluate("""(async () => {
            const bytes = async (blob) => base64(new Uint8Array(await blob.arrayBuffer()));
            return { zip: await bytes(await framesZip(lastRun)),
                     webm: await bytes(await recordWebm($('result-canvas'), lastRun.pngFrames, 25)) };
        })()""")
    frames = zipfile.ZipFile(io.BytesIO(base64.b64decode(downloads["zip"])))
    assert frames.namelist() == [f"frame_{index:05d}.png" for index in range(FRAMES)]
    shown = np.stack([imageio.imread(frames.read(name)) for name in frames.namelist()])
    assert np.array_equal(shown[..., :3], quantised(page_prediction(result)))
    assert base64.b64decode(downloads["webm"])[:4] == b"\x1a\x45\xdf\xa3"  # EBML, WebM's container


def test_video_frames_are_read_in_order(page_server):
    """Frame i of the bundled MP4, read by seeking the page's video element, is the frame imageio
    decodes as i (up to the two decoders' colour conversion), not a neighbour."""
    indices = (0, 1, 10, 39)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        with chromium(page_server["url"], profile) as (_, devtools, _log):
            devtools.wait_until_loaded()
            frames = devtools.evaluate(f"""(async () => {{
                const clip = await openClip('../example/driving.mp4', 25, 256, 256);
                const frames = [];
                for (const i of {list(indices)}) frames.push(base64(await clip.read(i)));
                return frames;
            }})()""")
    decoded = np.stack(imageio.mimread(REPO / "example" / "driving.mp4", memtest=False)).astype(np.float32) / 255
    for index, frame in zip(indices, frames):
        pixels = np.frombuffer(base64.b64decode(frame), np.float32).reshape(decoded.shape[1:])
        distances = np.abs(decoded - pixels).mean(axis=(1, 2, 3))
        assert np.argmin(distances) == index and distances[index] < 0.02, (index, distances[index])


def test_missing_model_names_the_build_command(page_server):
    result = run_page(page_server, "missing-model", page_query("cpu", model="no-such-model"))
    assert "python build.py --model no-such-model --tfjs --nolite" in result["error"]


# --------------------------------------------------------------------------------------------------
# The page before a run: its backend choice, input previews and the video's own fps
# --------------------------------------------------------------------------------------------------

CLIP_FPS = 10
# A GPU as Chromium names it, for WEBGL_debug_renderer_info's UNMASKED_RENDERER_WEBGL (0x9246) and RENDERER (0x1F01).
STUB_GPU_RENDERER = """
for (const api of [WebGLRenderingContext, WebGL2RenderingContext]) {
  const getParameter = api.prototype.getParameter;
  api.prototype.getParameter = function (name) {
    return name === 0x9246 || name === 0x1F01 ? 'ANGLE (NVIDIA, NVIDIA GeForce RTX 3080, OpenGL 4.5)'
                                              : getParameter.call(this, name);
  };
}"""


@pytest.fixture(scope="module")
def page_browser():
    """Skips unless Chromium and the TF.js files the page loads are here; no model is needed."""
    if CHROMIUM is None:
        pytest.skip("browser check skipped: chromium is not installed: apt-get install -y chromium")
    if not (REPO / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js").is_file() or not WASM_BACKEND.is_dir():
        pytest.skip("browser check skipped: node_modules lacks TF.js: run `npm ci`")


@pytest.fixture(scope="module")
def preview_data(tmp_path_factory):
    """A folder with portrait.png (the fixture's photo, cropped to half its width) and clip.mp4 (its
    driving frames, twice over, at CLIP_FPS)."""
    if VARIANT_FIXTURE not in FIXTURE_NAMES:
        pytest.skip(f"tests/fixtures/{VARIANT_FIXTURE} is missing")
    ref = load_fixture(VARIANT_FIXTURE).ref
    source, driving = quantised(nchw_to_nhwc(ref["source"])[0]), quantised(nchw_to_nhwc(ref["driving"]))
    data = tmp_path_factory.mktemp("preview-data")
    width = source.shape[1]
    imageio.imwrite(data / "portrait.png", source[:, width // 4:width - width // 4])
    imageio.mimwrite(data / "clip.mp4", [*driving, *driving], fps=CLIP_FPS, macro_block_size=16)
    return data, driving[0]


@pytest.fixture(scope="module")
def preview_server(page_browser, preview_data):
    """The page's URL, with the preview inputs at /data/."""
    with serving("--datadir", str(preview_data[0])) as url:
        yield url


def canvas_pixels(entry):
    return np.frombuffer(base64.b64decode(entry["data"]), np.uint8).reshape(entry["height"], entry["width"], 4)


@pytest.fixture(scope="module")
def preview(preview_server):
    """What the page shows, on SwiftShader, once it has previewed the portrait photo and the clip."""
    url = f"{preview_server}?{urlencode({'source': '/data/portrait.png', 'driving': '/data/clip.mp4'})}"
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        with chromium(url, profile) as (_, devtools, _log):
            devtools.wait_until_ready()
            shown = devtools.evaluate("""(async () => {
                await previewed;
                const pixels = (canvas) => ({ width: canvas.width, height: canvas.height,
                    data: base64(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data) });
                return { backend: $('backend').value, choice: $('backend-choice').textContent, fps: $('fps').value,
                         message: $('message').textContent,
                         source: pixels($('source-canvas')), driving: pixels($('driving-canvas')) };
            })()""")
    assert shown["message"] == "", shown["message"]
    return {**shown, "source": canvas_pixels(shown["source"]), "driving": canvas_pixels(shown["driving"])}


def test_software_webgl_picks_wasm(preview):
    print(preview["choice"])
    assert preview["backend"] == "wasm"
    assert preview["choice"].startswith("Backend wasm: WebGL renders in software") and "SwiftShader" in preview["choice"]


def test_a_gpu_picks_webgl(preview_server):
    """The same page where WebGL names a GPU (getParameter stubbed before the page's scripts run)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        with chromium("about:blank", profile) as (_, devtools, _log):
            session = devtools.page_session()
            devtools.call("Page.enable", session)
            devtools.call("Page.addScriptToEvaluateOnNewDocument", session, source=STUB_GPU_RENDERER)
            devtools.call("Page.navigate", session, url=preview_server)
            devtools.wait_until_ready()
            backend, choice = devtools.evaluate("[$('backend').value, $('backend-choice').textContent]")
    print(choice)
    assert backend == "webgl" and "NVIDIA GeForce RTX 3080" in choice, choice


def test_the_video_s_own_fps_fills_the_fps_field(preview):
    assert float(preview["fps"]) == CLIP_FPS


def test_first_driving_frame_is_shown_before_a_run(preview, preview_data):
    """The clip's first frame, enlarged from the fixture's size to the canvas's: sampled where the
    fixture's pixel centres fall, it is that frame up to the video codec."""
    shown = preview["driving"]
    assert shown.shape == (256, 256, 4) and (shown[..., 3] == 255).all()
    first = preview_data[1].astype(np.float32)
    rows, columns = (((np.arange(size) + 0.5) * shown.shape[axis] / size).astype(int)
                     for axis, size in enumerate(first.shape[:2]))
    sampled = shown[rows][:, columns, :3].astype(np.float32)
    print(f"first driving frame: {np.abs(sampled - first).mean() / 255:.3f} mean abs from the fixture's")
    assert np.abs(sampled - first).mean() / 255 < 0.05


def test_portrait_source_is_previewed_letterboxed(preview):
    """Half as wide as high: the photo fills the middle half of the canvas, black bars either side."""
    shown = preview["source"]
    side = shown.shape[1]
    bars = np.concatenate([shown[:, :side // 4 - 2], shown[:, side - side // 4 + 2:]], axis=1)
    assert (bars[..., :3] == 0).all() and (bars[..., 3] == 255).all()
    photo = shown[:, side // 4 + 2:side - side // 4 - 2, :3]
    assert photo.mean() > 20 and (photo.max(axis=2) > 0).mean() > 0.9


# --------------------------------------------------------------------------------------------------
# The README's "Run in the browser" commands, on the example
# --------------------------------------------------------------------------------------------------

def test_readme_browser_commands_animate_the_example(browser, tmp_path):
    """The README's commands, with the export and the page's report in tmp_path: the page's defaults
    (the backend it picks: wasm on SwiftShader; the bundled photo and MP4 through the browser's video
    decoder, at the 25 fps read from it) animate two frames, and a screenshot shows them. The loading
    indicator's total is the size of the shards."""
    commands = readme_commands("Run in the browser")
    builds = [shlex.split(c) for c in commands if c.startswith("python build.py")]
    serves = [shlex.split(c) for c in commands if c.startswith("python serve_web.py")]
    assert len(builds) == 1 and len(serves) == 1, commands
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for setup in (c for c in commands if not c.startswith(("python build.py", "python serve_web.py"))):
        assert setup in ci, f"README command not run by .ci/run: {setup}"
    assert build.main([*builds[0][2:], "--outdir", str(tmp_path)]) == 0
    results, screenshot = tmp_path / "results", tmp_path / "page.png"
    with serving(*serves[0][2:], "--exportdir", str(tmp_path), "--results", str(results)) as url:
        with open_page({"url": url, "results": results}, "example", {"frames": 2}) as (result, devtools):
            devtools.screenshot(screenshot)
    assert "error" not in result, result["error"]
    assert (result["model"], result["backend"], result["frames"], result["fps"]) == ("demo", "wasm", 2, 25)
    shards = [path for module in export_files.EXPORT_MODULES
              for path in (tmp_path / "js" / "demo" / module).glob("group*.bin")]
    assert result["model_bytes"] == sum(path.stat().st_size for path in shards)
    print(f"screenshot of the page: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
