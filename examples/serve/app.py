"""FastAPI + uvicorn service for a latexport classifier: POST /classify, GET /health, GET /metrics.

    python examples/serve/app.py OUT_DIR --port 8000 --threads 2
    curl -s localhost:8000/classify -H 'content-type: application/json' \
         -d '{"texts": ["a gripping, funny film"], "keep_ratio": 0.5}'
    curl -s localhost:8000/classify -H 'content-type: application/json' \
         -d '{"texts": ["a gripping, funny film"], "target_ms": 15}'      # needs `latexport calibrate OUT_DIR`

The endpoints are plain ``def`` functions: FastAPI runs them in its thread
pool, and the service admits model calls one at a time (``service.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Union

from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

sys.path.insert(0, str(Path(__file__).parent))

from service import ClassificationService  # noqa: E402

from latexport.runtime.errors import InvalidInputError  # noqa: E402


class ClassifyRequest(BaseModel):
    texts: Union[str, list[str]] = Field(description="One text or a batch of texts.")
    text_pairs: Optional[list[str]] = Field(default=None, description="Second segments, for sentence-pair models.")
    keep_ratio: Optional[Union[float, list[float]]] = Field(
        default=None, description="Fraction of word-vectors kept, for all texts or one per text; default: the model's.")
    target_ms: Optional[float] = Field(default=None, description="Latency budget; the service picks the keep ratio.")


def create_app(service: ClassificationService) -> FastAPI:
    app = FastAPI(title="latexport classifier", description="Latency Adjustable Transformer: keep_ratio or a budget per request.")

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.get("/metrics")
    def metrics() -> dict:
        return service.metrics.snapshot()

    @app.get("/metrics/prometheus")
    def prometheus_metrics() -> Response:
        return Response(service.metrics.prometheus(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    def malformed_request(request, error: RequestValidationError) -> JSONResponse:
        service.metrics.record_error("invalid")  # counted like every other refused request
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(error.errors())})

    @app.post("/classify")
    def classify(request: ClassifyRequest) -> dict:
        try:
            return service.classify(request.texts, keep_ratio=request.keep_ratio, target_ms=request.target_ms,
                                    text_pairs=request.text_pairs)
        except InvalidInputError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores).")
    parser.add_argument("--max-concurrent-calls", type=int, default=1, help="Model calls run side by side.")
    args = parser.parse_args()
    service = ClassificationService(args.model_dir, intra_op_threads=args.threads, max_concurrent_calls=args.max_concurrent_calls)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
