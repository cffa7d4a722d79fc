"""A small local web page for an image index: search by paragraph or by uploaded image, results as thumbnails.

Built on FastAPI (optional extra ``serve``). The page is rendered on the server (no JavaScript needed); the same
searches are available as JSON under ``/api``. The only files it ever reads from disk are those the index lists, and
only where their real path (symbolic links resolved) lies inside the indexed folder; they are sent as re-encoded
JPEG thumbnails, never as raw files.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime, and they name
classes imported inside ``create_app``.)
"""

import html
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..images import ImageLoadError, open_image
from .index import ImageIndex, SearchHit

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 20_000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
THUMBNAIL_SIZE = 256
THUMBNAIL_CACHE = 512
DEFAULT_RESULTS = 12


def _fastapi():
    try:
        import fastapi
    except ImportError as e:
        raise ImportError("the web page needs fastapi and uvicorn: pip install 'longclip[serve]'") from e
    return fastapi


class _Thumbnails:
    """JPEG thumbnails of indexed files, refusing anything the index does not list or that resolves outside it."""

    def __init__(self, index: ImageIndex, size: int = THUMBNAIL_SIZE):
        self.root = index.root.resolve()
        self.paths = {r.path for r in index.records}
        self.size = size
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def file(self, relative: str) -> Path | None:
        """The file to read for ``relative``, or ``None`` when it must not be served."""
        if relative not in self.paths:  # only indexed paths: no '..', no absolute paths, nothing unlisted
            return None
        real = (self.root / relative).resolve()
        if not real.is_relative_to(self.root) or not real.is_file():  # a symlink swapped in after indexing
            return None
        return real

    def get(self, relative: str) -> bytes | None:
        path = self.file(relative)
        if path is None:
            return None
        with self.lock:
            if relative in self.cache:
                self.cache.move_to_end(relative)
                return self.cache[relative]
        try:
            image = open_image(path)
        except ImageLoadError as e:
            logger.warning("cannot make a thumbnail of %s: %s", relative, e)
            return None
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self.lock:
            self.cache[relative] = data
            while len(self.cache) > THUMBNAIL_CACHE:
                self.cache.popitem(last=False)
        return data


def create_app(index: ImageIndex, model: Any, results: int = DEFAULT_RESULTS, check_model: bool = True):
    """The FastAPI application serving ``index``, embedding queries with ``model``.

    Args:
        index: An opened index.
        model: The model that built it (checked against the index's fingerprint unless ``check_model`` is off).
        results: How many results a search shows by default.
    """
    fastapi = _fastapi()
    from fastapi import Form, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    if check_model:
        index.check_model(model)
    thumbnails = _Thumbnails(index)
    model_lock = threading.Lock()  # one forward pass at a time: requests run in a thread pool
    app = fastapi.FastAPI(title="longclip search", docs_url=None, redoc_url=None, openapi_url=None)

    def text_hits(query: str, k: int) -> list[SearchHit]:
        query = query.strip()
        if not query:
            return []
        if len(query) > MAX_QUERY_CHARS:
            raise fastapi.HTTPException(413, f"the query is longer than {MAX_QUERY_CHARS} characters")
        with model_lock:
            return index.search_text(model, query, k=_clamp(k), check=False)

    async def image_hits(upload: Any, k: int) -> list[SearchHit]:
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise fastapi.HTTPException(413, f"the image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")

        def run() -> list[SearchHit]:
            with model_lock:
                return index.search_image(model, data, k=_clamp(k), check=False)

        try:
            return await run_in_threadpool(run)  # the forward pass must not block the event loop
        except (ImageLoadError, ValueError) as e:
            raise fastapi.HTTPException(400, f"cannot read the uploaded image: {e}") from e

    @app.get("/", response_class=HTMLResponse)
    def page(q: str = "", k: int = results) -> str:
        return _page(index, q, text_hits(q, k) if q.strip() else None, k)

    @app.post("/image", response_class=HTMLResponse)
    async def image_page(image: UploadFile, k: int = Form(results)) -> str:
        return _page(index, "", await image_hits(image, k), k, uploaded=image.filename or "upload")

    @app.get("/api/search")
    def api_text(q: str, k: int = results) -> JSONResponse:
        return JSONResponse([_hit_json(h) for h in text_hits(q, k)])

    @app.post("/api/search/image")
    async def api_image(image: UploadFile, k: int = Form(results)) -> JSONResponse:
        return JSONResponse([_hit_json(h) for h in await image_hits(image, k)])

    @app.get("/thumb/{path:path}")
    def thumb(path: str) -> Response:
        data = thumbnails.get(path)
        if data is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def _clamp(k: int) -> int:
    return max(1, min(int(k), 200))


def _hit_json(hit: SearchHit) -> dict[str, Any]:
    return {"rank": hit.rank, "path": hit.path, "score": round(hit.score, 6), "thumbnail": _thumb_url(hit.path)}


def _thumb_url(path: str) -> str:
    return "/thumb/" + quote(path)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
textarea { width: 100%; max-width: 60rem; height: 5rem; font-size: 1rem; }
.results { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: 1.5rem; }
figure { margin: 0; width: 200px; }
figure img { width: 200px; height: 200px; object-fit: contain; background: #eee; }
figcaption { font-size: 0.8rem; word-break: break-all; }
.note { color: #666; font-size: 0.9rem; }
"""


def _page(index: ImageIndex, query: str, hits: list[SearchHit] | None, k: int, uploaded: str | None = None) -> str:
    """The whole page: both search forms and, after a search, the results."""
    escape = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>longclip search</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>longclip search</h1>",
        f"<p class='note'>{len(index)} images in {escape(str(index.root))}, model {escape(index.model_id)}</p>",
        "<form method='get' action='/'>",
        "<label for='q'>Describe the picture (a paragraph is fine):</label><br>",
        f"<textarea id='q' name='q'>{escape(query)}</textarea><br>",
        f"<input type='hidden' name='k' value='{int(k)}'>",
        "<button id='search' type='submit'>Search</button></form>",
        "<form method='post' action='/image' enctype='multipart/form-data'>",
        "<label for='image'>Or find similar pictures to an image:</label> ",
        "<input id='image' type='file' name='image' accept='image/*'>",
        f"<input type='hidden' name='k' value='{int(k)}'>",
        "<button id='search-image' type='submit'>Search by image</button></form>",
    ]
    if hits is not None:
        about = f"images like {escape(uploaded)}" if uploaded else "results"
        parts.append(f"<p class='note'>{len(hits)} {about}</p><div class='results'>")
        for hit in hits:
            path = escape(hit.path)
            parts.append(
                f"<figure class='hit' data-path='{path}' data-score='{hit.score:.6f}'>"
                f"<img src='{escape(_thumb_url(hit.path))}' alt='{path}'>"
                f"<figcaption>{hit.rank}. {path}<br>score {hit.score:.4f}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def serve(
    index: str | Path | ImageIndex,
    model: Any = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    results: int = DEFAULT_RESULTS,
) -> None:
    """Serve the page until interrupted (uvicorn). Loads the index's own model unless one is given.

    Binds to localhost by default; another ``host`` exposes the indexed pictures to the network.
    """
    import uvicorn

    if not isinstance(index, ImageIndex):
        index = ImageIndex.open(index)
    if model is None:
        from .onnx_export import load_with_runtime

        model = load_with_runtime(index.model_id)  # a PyTorch checkpoint or an ONNX export
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can search and see the pictures", host)
    uvicorn.run(create_app(index, model, results), host=host, port=port, log_level="warning")
