"""The socket protocol: one JSON object per line each way.

A request is {"op": ..., ...}; the response is {"ok": true, "result": ...} or
{"ok": false, "error": "one sentence", "kind": "refused" | "unknown_op" | "malformed" | "internal"}
("refused": the request was understood and said no, e.g. a job that does not exist or a spec that
does not validate; clients match on `kind`, never on the sentence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import traceback

from cosmos_tui.daemon.engines import STREAM_LIMIT
from cosmos_tui.daemon.handlers import HANDLERS, RequestError
from cosmos_tui.daemon.log import log
from cosmos_tui.queue.resolve import SubmitError
from cosmos_tui.queue.state import TransitionError

REFUSALS = (RequestError, SubmitError, TransitionError)


def parse_request(raw: bytes) -> dict:
    """The request object of one line; ValueError when it is not one."""
    req = json.loads(raw)
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ValueError("not an object with an op")
    return req


async def dispatch(daemon, req: dict) -> dict:
    """The response to one request: the handler's result, or its refusal, or an internal error
    (a bug must not take the queue down with it)."""
    op = req["op"]
    handler = HANDLERS.get(op)
    if handler is None:
        return {"ok": False, "kind": "unknown_op", "error": f"unknown op {op!r}; known: {', '.join(sorted(HANDLERS))}"}
    try:
        result = handler(daemon, req)
        if asyncio.iscoroutine(result):
            result = await result
        return {"ok": True, "result": result}
    except REFUSALS as err:
        return {"ok": False, "kind": "refused", "error": str(err)}
    except Exception as err:
        log(f"error in {op}:\n" + traceback.format_exc())
        return {"ok": False, "kind": "internal", "error": f"internal error in {op}: {type(err).__name__}: {err}"}


async def respond(writer: asyncio.StreamWriter, resp: dict) -> None:
    writer.write((json.dumps(resp, default=str) + "\n").encode())
    await writer.drain()


async def handle_client(daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                raw = await reader.readline()
            except ValueError:
                await respond(writer, {"ok": False, "kind": "malformed",
                                       "error": f"request line longer than {STREAM_LIMIT} bytes"})
                return
            if not raw:
                return
            if not raw.strip():
                continue
            try:
                req = parse_request(raw)
            except ValueError:
                await respond(writer, {
                    "ok": False, "kind": "malformed",
                    "error": f"malformed request {raw[:80].decode(errors='replace')!r}: send one JSON object "
                             f"per line with an \"op\" field",
                })
                continue
            await respond(writer, await dispatch(daemon, req))
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
