"""The ASGI application of ``lepton serve`` (Starlette; uvicorn runs it, one app per worker
process). Settings come from the environment (``ServeSettings``), so every worker that uvicorn
spawns builds the same app.

Access: with ``LEPTON_SERVE_TOKEN`` set, every endpoint but the two health probes needs
``Authorization: Bearer <token>`` (compared in constant time); without it the CLI listens on
127.0.0.1 only. Limits: the body's size (413), its arrival time (408: a slow client holds a
connection, never a model worker), rows per request (413), rows waiting (503), and the time
a request may wait for its answer (504).
"""

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lepton_core.rows import json_frame
from lepton_core.serving import metrics
from lepton_core.serving.batcher import Batcher, BatchStats, Overloaded
from lepton_core.serving.follower import ChampionFollower
from lepton_core.serving.model import RowsRefused, ServedModel
from lepton_core.serving.protocol import (
    BadRequest,
    model_metadata,
    parse_json,
    predict_columns,
    predict_response,
    v2_columns,
    v2_response,
)
from lepton_core.serving.sampler import Sampler
from lepton_core.serving.settings import ServeSettings
from lepton_core.store import ArtifactStore

log = logging.getLogger("lepton.serve")
Handler = Callable[[Request], Awaitable[tuple[Response, str]]]


class Server:
    """One worker process's state: the followed champion, the batcher, the sampler."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.store = ArtifactStore(settings.artifacts_uri)
        self.token = os.environ.get("LEPTON_SERVE_TOKEN") or None
        self.pii_key = os.environ.get("LEPTON_PII_KEY")
        self.follower = ChampionFollower(
            self.store, self.load, settings.poll_s, on_swap=self.swapped, on_failure=self.failed
        )
        self.batcher = Batcher(
            settings.max_batch, settings.max_delay_ms / 1000, settings.max_queue_rows, self.batched
        )
        self.serving_version: str | None = None
        self.sampler = Sampler(self.store, settings.sample_rate, settings.replica)

    # -- model versions -------------------------------------------------------------------
    def load(self, prefix: str, files: dict[str, str] | None) -> ServedModel:
        return ServedModel.load(self.store, prefix, self.pii_key, self.settings.runtime, files)

    def swapped(self, served: ServedModel) -> None:
        metrics.LOADS.labels("ok").inc()
        if self.serving_version is not None:
            metrics.SERVING.labels(self.serving_version).set(0)
        metrics.SERVING.labels(served.version).set(1)
        self.serving_version = served.version
        self.store.write_json(
            f"serving/replicas/{self.settings.replica}.json",
            {
                "replica": self.settings.replica,
                "version": served.version,
                "model": served.prefix,
                "since": datetime.now(UTC).isoformat(),
            },
        )

    def failed(self, prefix: str, exc: Exception) -> None:
        metrics.LOADS.labels("failed").inc()

    def batched(self, stats: BatchStats) -> None:
        metrics.BATCH_ROWS.observe(stats.rows)
        metrics.COMPUTE.labels(stats.version).observe(stats.compute_s)
        for waited in stats.queue_s:
            metrics.QUEUE.observe(waited)

    def serving(self) -> ServedModel:
        served = self.follower.current
        if served is None:
            detail = self.follower.last_error or {"error": "no champion promoted yet"}
            raise BadRequest(f"no model is loaded: {detail['error']}", 503, "not_ready")
        return served

    # -- requests -------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise BadRequest(
                "missing or wrong bearer token (Authorization: Bearer <token>)", 401, "unauthorized"
            )

    async def body(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                f"body of {declared} bytes is over the limit of {limit}", 413, "too_large"
            )

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"body is over the limit of {limit} bytes", 413, "too_large")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = await asyncio.wait_for(collect(), self.settings.body_timeout_s)
        except ClientDisconnect as exc:
            raise BadRequest(
                "the client went away before its body was read", 400, "disconnected"
            ) from exc
        except TimeoutError as exc:
            raise BadRequest(
                f"body not received within {self.settings.body_timeout_s} s", 408, "slow_client"
            ) from exc
        return parse_json(raw)

    async def score(
        self, columns: dict[str, list[Any]], served: ServedModel | None = None
    ) -> tuple[ServedModel, Any]:
        """Rows typed and scored by ``served``, else by the version serving when they arrived."""
        served = served or self.serving()
        count = len(next(iter(columns.values()), []))
        if count > self.settings.max_request_rows:
            raise BadRequest(
                f"{count} rows in one request; the limit is {self.settings.max_request_rows}",
                413,
                "too_many_rows",
            )
        try:
            rows = json_frame(columns, served.spec)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        try:
            scored = await asyncio.wait_for(
                self.batcher.score(served, rows), self.settings.timeout_s
            )
        except RowsRefused as exc:
            raise BadRequest(str(exc)) from exc
        except Overloaded as exc:
            raise BadRequest(f"overloaded: {exc}; retry later", 503, "overloaded") from exc
        except TimeoutError as exc:
            raise BadRequest(
                f"no answer within {self.settings.timeout_s} s", 504, "timeout"
            ) from exc
        self.sampler.add(served, scored)
        return served, scored

    def model_for(self, request: Request) -> ServedModel:
        served = self.serving()
        name, version = request.path_params["name"], request.path_params.get("version")
        if name != served.spec.name:
            raise BadRequest(
                f"no model named {name!r}; this server serves {served.spec.name!r}",
                404,
                "not_found",
            )
        if version is not None and version != served.version:
            raise BadRequest(
                f"version {version!r} of {name!r} is not served; serving {served.version!r}",
                404,
                "not_found",
            )
        return served

    # -- endpoints --------------------------------------------------------------------------
    async def live(self, request: Request) -> tuple[Response, str]:
        return JSONResponse({"live": True}), ""

    async def ready(self, request: Request) -> tuple[Response, str]:
        served = self.follower.current
        detail = {
            "ready": served is not None,
            "model": served.prefix if served else None,
            "version": served.version if served else None,
            "last_load_error": self.follower.last_error,
        }
        return JSONResponse(detail, 200 if served else 503), served.version if served else ""

    async def metadata(self, request: Request) -> tuple[Response, str]:
        served = self.model_for(request)
        return JSONResponse(model_metadata(served)), served.version

    async def model_ready(self, request: Request) -> tuple[Response, str]:
        served = self.model_for(request)
        return JSONResponse({"name": served.spec.name, "ready": True}), served.version

    async def infer(self, request: Request) -> tuple[Response, str]:
        served = self.model_for(request)  # the version named, or serving, as it arrived
        body = await self.body(request)
        served, scored = await self.score(v2_columns(body), served)
        request_id = body.get("id") if isinstance(body, dict) else None
        return JSONResponse(v2_response(served, scored, request_id)), served.version

    async def predict(self, request: Request) -> tuple[Response, str]:
        served, scored = await self.score(predict_columns(await self.body(request)))
        return JSONResponse(predict_response(served, scored)), served.version

    async def server_metadata(self, request: Request) -> tuple[Response, str]:
        return JSONResponse({"name": "lepton", "version": "0.1.0", "extensions": []}), ""

    async def prometheus(self, request: Request) -> tuple[Response, str]:
        text, content_type = metrics.exposition()
        return Response(text, media_type=content_type), ""

    def endpoint(self, name: str, handler: Handler, open_: bool = False) -> Callable:
        """Access control, errors in the protocol's form ``{"error": ...}``, and metrics."""

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            version = ""
            try:
                if not open_:
                    self.authorize(request)
                response, version = await handler(request)
            except BadRequest as exc:
                metrics.ERRORS.labels(exc.kind).inc()
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                response = JSONResponse({"error": str(exc)}, exc.status, headers=headers)
            except Exception as exc:  # answered as a 500 naming the error; logged with its trace
                log.exception("%s failed", name)
                metrics.ERRORS.labels("internal").inc()
                response = JSONResponse(
                    {"error": f"internal error: {type(exc).__name__}: {exc}"}, 500
                )
            metrics.REQUESTS.labels(name, version, str(response.status_code)).inc()
            metrics.LATENCY.labels(version).observe(time.perf_counter() - started)
            return response

        return run

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2/health/live", self.endpoint("live", self.live, open_=True)),
            Route("/v2/health/ready", self.endpoint("ready", self.ready, open_=True)),
            Route("/v2", self.endpoint("server_metadata", self.server_metadata)),
            Route("/predict", self.endpoint("predict", self.predict), methods=["POST"]),
            Route("/metrics", self.endpoint("metrics", self.prometheus)),
        ]
        for path in (model, versioned):
            routes += [
                Route(path, self.endpoint("metadata", self.metadata)),
                Route(f"{path}/ready", self.endpoint("model_ready", self.model_ready)),
                Route(f"{path}/infer", self.endpoint("infer", self.infer), methods=["POST"]),
            ]
        return routes

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        torch.set_num_threads(self.settings.threads)
        await asyncio.get_running_loop().run_in_executor(None, self.follower.start)
        self.batcher.start()
        try:
            yield
        finally:
            self.follower.stop()
            await self.batcher.stop()
            self.sampler.flush()


def create_app(settings: ServeSettings | None = None) -> Starlette:
    server = Server(settings or ServeSettings.from_env())
    return Starlette(routes=server.routes(), lifespan=server.lifespan)
