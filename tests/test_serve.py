"""The local search page: results, uploads, path traversal, and a real headless browser."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'longclip[search]')")
pytest.importorskip("fastapi", reason="the web page needs fastapi (pip install 'longclip[serve]')")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from search_helpers import make_photos, save_tiny_model  # noqa: E402

import longclip  # noqa: E402
from longclip.integrations.index import ImageIndex, build_index  # noqa: E402
from longclip.integrations.serve import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
QUERY = "a yellow square on a dark speckled background, with nothing else in the picture"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    model_dir = save_tiny_model(base / "model")
    model = longclip.load(model_dir)[0]
    root = base / "photos"
    make_photos(root)
    (root / "escape.png").symlink_to(root / "home/red.png")  # inside the root now; swapped outside below
    build_index(root, base / "index", model, str(model_dir), progress=False)
    secret = base / "secret.png"
    shutil.copy(root / "home/red.png", secret)
    return base, root, model, ImageIndex.open(base / "index"), secret


@pytest.fixture(scope="module")
def client(setup):
    _, _, model, index, _ = setup
    return TestClient(create_app(index, model))


def expected_order(model, root: Path, index: ImageIndex, text: str) -> list[str]:
    """Ranking computed directly: cosine of each image's embedding with the text's."""
    paths = [r.path for r in index.records]
    images = model.embed_images([root / p for p in paths], batch_size=8)
    query = model.embed_texts([text], long_texts="chunk")[0]
    scores = (images @ query).tolist()
    return [paths[i] for i in torch.tensor(scores).argsort(descending=True).tolist()]


def test_text_search_page_and_api(setup, client):
    _, root, model, index, _ = setup
    order = expected_order(model, root, index, QUERY)
    page = client.get("/", params={"q": QUERY, "k": 3})
    assert page.status_code == 200
    assert page.text.index(f"data-path='{order[0]}'") < page.text.index(f"data-path='{order[1]}'")
    assert page.text.count("class='hit'") == 3
    api = client.get("/api/search", params={"q": QUERY, "k": 4}).json()
    assert [h["path"] for h in api] == order[:4]
    assert api[0]["score"] >= api[1]["score"]
    thumb = client.get(api[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256


def test_the_page_escapes_the_query(client):
    page = client.get("/", params={"q": "<script>alert(1)</script>"})
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text


def test_image_upload_finds_the_same_picture_first(setup, client):
    _, root, *_ = setup
    data = (root / "trip/green.png").read_bytes()
    page = client.post("/image", files={"image": ("green.png", data, "image/png")}, data={"k": "2"})
    assert page.status_code == 200
    assert page.text.index("data-path='trip/green.png'") < page.text.index(
        "data-path='", page.text.index("green.png'")
    )
    api = client.post("/api/search/image", files={"image": ("g.png", data, "image/png")}).json()
    assert api[0]["path"] == "trip/green.png" and api[0]["score"] == pytest.approx(1.0, abs=1e-5)
    bad = client.post("/api/search/image", files={"image": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and "cannot read" in bad.text


@pytest.mark.parametrize(
    "url",
    [
        "/thumb/../secret.png",
        "/thumb/..%2Fsecret.png",
        "/thumb/%2E%2E/secret.png",
        "/thumb/home/..%2F..%2Fsecret.png",
        "/thumb/%2Fetc%2Fpasswd",
        "/thumb//etc/passwd",
        "/thumb/home%5C..%5C..%5Csecret.png",
        "/thumb/home/red.png%00.txt",
        "/thumb/notes.txt",
        "/thumb/",
    ],
)
def test_no_path_escapes_the_indexed_folder(setup, client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert response.headers["content-type"] != "image/jpeg"


def test_a_symlink_swapped_to_point_outside_is_refused(setup, client):
    _, root, _, _, secret = setup
    assert client.get("/thumb/escape.png").status_code == 200  # indexed while it pointed inside
    link = root / "escape.png"
    link.unlink()
    link.symlink_to(secret)
    try:
        assert client.get("/thumb/escape.png").status_code == 404
    finally:
        link.unlink()
        link.symlink_to(root / "home/red.png")


def test_absolute_path_of_an_indexed_file_is_refused(setup, client):
    _, root, *_ = setup
    assert client.get("/thumb/" + str(root / "home/red.png")).status_code == 404
    assert client.get("/thumb/home/red.png").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_in_a_headless_browser_the_expected_thumbnail_comes_first(setup):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package 'chromium') to drive a real browser")
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (python)")
    import uvicorn

    _, root, model, index, _ = setup
    order = expected_order(model, root, index, QUERY)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index, model), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start within 30 s"
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=args, timeout=60_000)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                # only this server is reachable: anything else the page asks for is refused
                page.route("**/*", lambda r: r.continue_() if f"127.0.0.1:{port}" in r.request.url else r.abort())
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#q", QUERY)
                page.click("#search")
                page.wait_for_selector("figure.hit img")
                first = page.locator("figure.hit").first
                assert first.get_attribute("data-path") == order[0]
                image = first.locator("img")
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
                assert page.locator("figure.hit").count() == min(12, len(index))

                page.goto(f"http://127.0.0.1:{port}/")
                page.set_input_files("#image", str(root / "trip/white.png"))
                page.click("#search-image")
                page.wait_for_selector("figure.hit")
                assert page.locator("figure.hit").first.get_attribute("data-path") == "trip/white.png"
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
