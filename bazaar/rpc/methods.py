"""What runs a registered RPC method: its signature check, roles, deadline and caller.

Owns `Method` (a registered function with its argument names, roles and
per-caller limit), `execute` (one request to one encoded reply: the
deadline check, the metrics hook, errors turned into error replies without
leaking details), `Later` (an inline method's answer given after its batch), and the thread-locals a running handler reads:
`time_left` (its caller's deadline) and `caller` (its caller's role).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bazaar import wire
from bazaar.errors import BazaarError

log = logging.getLogger("bazaar.rpc")

_running = threading.local()  # the deadline of the method running on this thread


def time_left(default: float) -> float:
    """Seconds before the caller of the running method gives up; `default` if it set none.

    A handler that waits (on a peer, a commit) bounds its waits with this, so
    it answers before its caller times out: timeouts nest, and a slow
    dependency shows up as an error reply instead of a silent server.
    """
    deadline = getattr(_running, "deadline", None)
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


_caller = threading.local()


def caller() -> str | None:
    """The role (ZAP User-Id) of the request the current handler serves; None if insecure."""
    return getattr(_caller, "role", None)


@dataclass(frozen=True, slots=True)
class Method:
    func: Callable[..., Any]
    inline: bool
    arg_names: tuple[str, ...]
    required: frozenset[str]
    roles: frozenset[str] | None  # None: any caller the ZAP handler admitted
    per_caller: int | None  # calls one role may have running at once (None: no limit)

    @classmethod
    def of(cls, func: Callable[..., Any], inline: bool, roles=None, per_caller=None) -> Method:
        params = inspect.signature(func).parameters.values()
        names = tuple(p.name for p in params)
        required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
        roles = None if roles is None else frozenset(roles)
        return cls(func, inline, names, required, roles, per_caller)

    def check_args(self, method: str, args: dict[str, Any]) -> None:
        """Names only; a set check costs far less than inspect's bind()."""
        unknown = args.keys() - self.arg_names
        if unknown:
            raise BazaarError("INVALID_ARGUMENT", f"{method}: unknown arguments {sorted(unknown)}")
        missing = self.required - args.keys()
        if missing:
            raise BazaarError("INVALID_ARGUMENT", f"{method}: missing arguments {sorted(missing)}")


class Later:
    """An inline handler's answer that is ready only after its batch: `finish()` gives it.

    A method registered `inline=True` may return `Later(finish)` instead of a
    result: the server reads every request already waiting, then calls each
    `finish` on its I/O thread, in order, and sends the replies. A handler
    that queues work and returns a Later (the catalog's trades: decided in
    memory, then one group commit) thus serves a burst with one flush and no
    thread hand-off. `finish` raises BazaarError like any handler.
    """

    __slots__ = ("finish", "request", "started", "service", "observe")

    def __init__(self, finish: Callable[[], Any]):
        self.finish = finish

    def reply(self) -> bytes:
        """Run `finish` and encode its outcome (the metrics hook counts the whole call)."""
        reply, code = _outcome(self.request, self.finish, self.service)
        if isinstance(reply, Later):
            err = BazaarError("INTERNAL", f"{self.request.method}: a Later finished with a Later")
            reply, code = wire.encode_error(self.request.id, err), err.code
        self.observe(self.request.method, code, time.perf_counter() - self.started)
        return reply


def _outcome(request: wire.Request, produce: Callable[[], Any], service: str):
    """(encoded reply or a Later, code) of running `produce` for `request`."""
    try:
        result = produce()
        if isinstance(result, Later):
            return result, "OK"
        reply = wire.encode_result(request.id, result)
    except BazaarError as err:
        return wire.encode_error(request.id, err), err.code
    except Exception as exc:
        # The details (paths, exception text) stay in this log, under an id.
        error_id = os.urandom(6).hex()
        log.exception("%s.%s failed (error id %s)", service, request.method, error_id)
        what = type(exc).__name__
        err = BazaarError("INTERNAL", f"{request.method} failed: {what} (error id {error_id})")
        return wire.encode_error(request.id, err), err.code
    if len(reply) > wire.MAX_MESSAGE_BYTES:
        err = BazaarError(
            "RESOURCE_EXHAUSTED", f"{request.method}: reply over {wire.MAX_MESSAGE_BYTES} bytes"
        )
        return wire.encode_error(request.id, err), "OK"
    return reply, "OK"


def execute(
    method: Method,
    request: wire.Request,
    deadline: float | None,
    role: str | None,
    service: str,
    observe: Callable[[str, str, float], None],
) -> bytes | Later:
    """Run `request` with `method` on this thread: its encoded reply (result or error),
    or the `Later` an inline method returned (its reply comes from `Later.reply`)."""
    started = time.perf_counter()
    if deadline is not None and time.monotonic() >= deadline:
        err = BazaarError("DEADLINE_EXCEEDED", "deadline passed before the call ran")
        observe(request.method, err.code, time.perf_counter() - started)
        return wire.encode_error(request.id, err)
    _running.deadline = deadline
    _caller.role = role

    def produce():
        method.check_args(request.method, request.args)
        return method.func(**request.args)

    try:
        reply, code = _outcome(request, produce, service)
    finally:
        _running.deadline = None
        _caller.role = None
    if isinstance(reply, Later):
        reply.request, reply.started, reply.service, reply.observe = (
            request,
            started,
            service,
            observe,
        )
        return reply
    observe(request.method, code, time.perf_counter() - started)
    return reply
