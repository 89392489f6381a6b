"""Serve this page and one converted model directory as static files, on loopback.

    python3 serve.py MODEL_DIR [--port 8000]      # or: npm run serve -- MODEL_DIR
    then open http://127.0.0.1:8000/

Nothing runs on the server: it hands out index.html, the npm packages under
node_modules/ and MODEL_DIR's files under /model/; the browser does the rest.
Any static file server does the same (put the model directory at ./model/, or
pass ?model=URL); this one also sends the two headers that make the page
cross-origin isolated, which lets ONNX Runtime Web use several threads.
"""

from __future__ import annotations

import argparse
import functools
import mimetypes
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
MODEL_PREFIX = "/model/"


class PageHandler(SimpleHTTPRequestHandler):
    model_dir: Path = WEB_DIR / "model"
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json"}

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith(MODEL_PREFIX):
            relative = Path(os.path.normpath(clean[len(MODEL_PREFIX):])).as_posix().lstrip("/")
            if relative.startswith(".."):
                return str(self.model_dir / "missing")
            return str(self.model_dir / relative)
        return super().translate_path(path)

    def end_headers(self) -> None:
        # Cross-origin isolation: SharedArrayBuffer, hence WASM threads.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet unless something fails
        if not args or not str(args[1]).startswith(("2", "3")):
            super().log_message(format, *args)


def make_server(model_dir: Path, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server (not yet serving) for this folder with MODEL_DIR under /model/; port 0 picks a free one."""
    handler = type("ModelPageHandler", (PageHandler,), {"model_dir": Path(model_dir).resolve()})
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(WEB_DIR)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a directory written by latexport convert")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args()
    if not (arguments.model_dir / "model.onnx").is_file():
        parser.error(f"{arguments.model_dir / 'model.onnx'} does not exist; convert a checkpoint first")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
        parser.error(f"run `npm ci` in {WEB_DIR} first")
    server = make_server(arguments.model_dir, arguments.port)
    print(f"serving {WEB_DIR} with {arguments.model_dir} as /model/ on http://127.0.0.1:{server.server_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


mimetypes.add_type("text/javascript", ".mjs")

if __name__ == "__main__":
    main()
