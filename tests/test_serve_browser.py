"""`codanet serve` in a real browser: Debian's Chromium driven by Playwright.

Starts the server on a free local port, uploads a PNG, waits for the prediction, chooses two
classes and checks that their maps differ, uploads a file that is not an image and checks the
message and that the server still answers.  Saves a screenshot to runs/screenshots/serve.png.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: `apt-get install chromium` "
                                "(make setup does this as root), then `pip install -e '.[browser]'`")
playwright = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install -e '.[browser]'")
pytest.importorskip("gradio", reason="needs Gradio: pip install -e '.[app]'")

MODEL = os.environ.get("CODANET_SERVE_TEST_MODEL", "coda_cpu:fashion_mnist")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "codanet", "serve", "--model", MODEL, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(1200):
            if answers(url):
                break
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"codanet serve exited: {log.read()[-2000:]}")
            time.sleep(0.1)
        else:
            pytest.fail("codanet serve did not answer within 120 s")
        print(f"codanet serve: first page after {time.time() - t0:.1f} s")
        yield url, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def image_src(page, selector: str, not_equal: str | None = None) -> str:
    """The src of the picture in `selector`, waiting until it differs from `not_equal`."""
    for _ in range(600):
        src = page.locator(f"{selector} img").first.get_attribute("src")
        if src and src != not_equal:
            return src
        time.sleep(0.1)
    raise AssertionError(f"{selector} did not change")


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on `port` (Linux /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:        # 0A: LISTEN
                    found.add(address)
    return found


def test_listens_on_loopback_only(server):
    _, port = server
    addresses = listening_addresses(port)
    if not addresses:
        pytest.skip("/proc/net/tcp is not available here")
    # 0100007F is 127.0.0.1 in /proc's byte order; a wildcard bind would show 00000000 (or :: in tcp6)
    assert addresses == {"0100007F"}, addresses


def test_upload_predict_two_classes_and_a_bad_file(server, tmp_path):
    import torch
    from PIL import Image

    from codanet import load_model
    from codanet.data import load_dataset
    url, _ = server
    model, state = load_model(MODEL)
    test = load_dataset(state["config"]["dataset"], "test", None)
    png = tmp_path / "item.png"
    Image.fromarray(test.images[2, 0].numpy()).save(png)
    with torch.no_grad():
        logits = model(test.images[2:3].float() / 255)[0]
    predicted, other = [model.class_names[int(k)] for k in logits.topk(2).indices]
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.locator("#upload input[type=file]").set_input_files(str(png))
        page.locator("#prediction", has_text=predicted).wait_for(timeout=60_000)
        page.locator("#check", has_text=predicted).wait_for(timeout=60_000)
        first_src = image_src(page, "#map")
        first = page.request.get(first_src).body()
        page.locator("#target input").click()
        page.get_by_role("option", name=other, exact=True).click()
        page.locator("#check", has_text=other).wait_for(timeout=60_000)
        second = page.request.get(image_src(page, "#map", not_equal=first_src)).body()
        assert first and second and first != second
        os.makedirs(os.path.join(ROOT, "runs", "screenshots"), exist_ok=True)
        page.screenshot(path=os.path.join(ROOT, "runs", "screenshots", "serve.png"), full_page=True)
        page.locator("#upload input[type=file]").set_input_files(str(notes))
        page.get_by_text("Cannot use this file").first.wait_for(timeout=60_000)
        assert "not a readable image" in page.content()
        page.screenshot(path=os.path.join(ROOT, "runs", "screenshots", "serve_error.png"))
        browser.close()
    assert answers(url)
