"""Ray Serve scale-out of the classification service: N replicas, each with its own model session.

    python examples/serve/ray_app.py OUT_DIR --replicas 2 --port 8000          # local Ray; Ctrl-C stops it
    curl -si localhost:8000/classify -H 'content-type: application/json' \\
         -d '{"texts": ["a gripping, funny film"], "keep_ratio": 0.5}'          # x-latexport-replica: who answered
    serve run --app-dir examples/serve --working-dir examples/serve \\
        ray_app:app_builder model_dir=$PWD/OUT_DIR replicas=2                     # the same through Ray's CLI

Every replica is a Ray actor running app.py's FastAPI app (``create_app``) over its
own ``ClassificationService``, so routes, JSON shapes and 422s are the uvicorn
server's.  Ray's HTTP proxy spreads requests over the replicas; each response
names the replica that answered in the ``x-latexport-replica`` header, and
``/metrics`` reports that replica's own counts.

Replicas run in other processes, possibly on other machines: ``RUNTIME_ENV``
ships this directory (``service.py``, ``app.py``, this file) to every replica
as the job's working directory, and each replica opens the model directory
itself, so it must be readable at that path on every node.  README.md in this
directory covers clusters, ``serve deploy`` and autoscaling.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

SERVE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SERVE_DIR))

from app import create_app  # noqa: E402
from service import ClassificationService  # noqa: E402

APP_NAME = "latexport"
REPLICA_HEADER = "x-latexport-replica"

#: Pass to ``ray.init(runtime_env=...)``: Ray uploads this directory once and
#: unpacks it as every replica's working directory (first on its sys.path), so
#: replicas import ``service``/``app``/``ray_app`` on any node.  The latexport
#: package itself must be installed in each node's Python environment.
RUNTIME_ENV = {"working_dir": str(SERVE_DIR), "excludes": ["__pycache__"]}


@serve.deployment
@serve.ingress()
class Classifier:
    """One replica: a ClassificationService behind app.py's routes, built inside the replica."""

    def __init__(self, model_dir: str, intra_op_threads: int = 0, max_concurrent_calls: int = 1):
        self.service = ClassificationService(model_dir, intra_op_threads=intra_op_threads,
                                             max_concurrent_calls=max_concurrent_calls)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        """Serve calls this after ``__init__``: the app needs the replica's service, so it cannot exist earlier."""
        app = create_app(self.service)
        replica_id = self.replica_id

        @app.middleware("http")
        async def name_the_replica(request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica_id
            return response

        return app


def build_app(model_dir: Union[str, Path], replicas: int = 2, num_cpus: float = 1.0,
              intra_op_threads: Optional[int] = None, max_concurrent_calls: int = 1) -> Application:
    """The bound Serve application: ``replicas`` copies of the service, each reserving ``num_cpus``.

    ``model_dir`` is opened by each replica, so it is an absolute path every
    node can read, or a path relative to the replicas' working directory (the
    runtime_env ``working_dir``, which can carry a small model).  Ray places
    replicas wherever ``num_cpus`` is free, so on a cluster they spread over
    the nodes.  ONNX Runtime ignores Ray's CPU reservation, so the intra-op
    threads default to the reservation (rounded up) rather than to every core
    of the machine, which replicas sharing a node would fight over.
    """
    if intra_op_threads is None:
        intra_op_threads = max(1, math.ceil(num_cpus))
    deployment = Classifier.options(num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus})
    return deployment.bind(str(model_dir), intra_op_threads, max_concurrent_calls)


class AppArgs(BaseModel):
    """``app_builder``'s arguments: ``serve run ... key=value`` pairs, or a config file's ``args``."""

    model_config = ConfigDict(extra="forbid")
    model_dir: str
    replicas: int = 2
    num_cpus: float = 1.0
    intra_op_threads: Optional[int] = None
    max_concurrent_calls: int = 1


def app_builder(args: dict) -> Application:
    """Entry point for ``serve run ray_app:app_builder model_dir=... replicas=2`` and config files' ``import_path``."""
    return build_app(**AppArgs.model_validate(args).model_dump())


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs Ray reserves for each replica.")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads per replica (default: --num-cpus, rounded up).")
    parser.add_argument("--max-concurrent-calls", type=int, default=1, help="Model calls run side by side in a replica.")
    parser.add_argument("--host", default="127.0.0.1", help="Where Ray's HTTP proxy listens (0.0.0.0: other machines too).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default="local",
                        help="Ray to use: 'local' starts a new instance (default), 'auto' joins the cluster `ray start` runs here.")
    args = parser.parse_args()
    if not (args.model_dir / "model.onnx").is_file():
        parser.error(f"{args.model_dir} has no model.onnx (make it with `latexport convert`)")

    ray.init(address=args.address, runtime_env=RUNTIME_ENV)
    try:
        # Ignored, with a warning, when Serve already runs on a joined cluster.
        serve.start(http_options={"host": args.host, "port": args.port})
        # Resolved here, against the caller's directory: replicas start in the working_dir.
        serve.run(build_app(args.model_dir.resolve(), replicas=args.replicas, num_cpus=args.num_cpus,
                            intra_op_threads=args.threads, max_concurrent_calls=args.max_concurrent_calls),
                  name=APP_NAME, route_prefix="/")
        print(f"serving {args.model_dir} with {args.replicas} replicas on http://{args.host}:{args.port}; Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if args.address == "local":
            serve.shutdown()
        else:
            serve.delete(APP_NAME)  # a shared cluster: leave its other applications running
        ray.shutdown()


if __name__ == "__main__":
    main()
