"""Resolve dynamic credential sources (issue #16) for the proxy, off its event loop's critical path.

A command runs as an asyncio subprocess (no shell unless the spec asks; stdin closed, stderr
discarded, its own session so a timeout kills the whole group; the server's environment without the
server's own secrets, `SCRUBBED_ENV`) with a timeout and at most `MAX_OUTPUT` bytes read; a file is
read in a worker thread (regular files only, same bound). The value (one trailing newline stripped) is
cached in memory until the TTL; a file is re-read when its stat changes (checked at most once a
second). Concurrent requests share one run. A failure is held for `FAILURE_HOLD` seconds so a broken
source is not re-run for every request.

Dangers: the values are live credentials: never logged, stored, or put in messages. Errors say
why in general terms (`CredentialUnavailable`) and never carry the output, stderr or the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import stat
import time
from dataclasses import dataclass, field, replace

from agent_vault.credsource import MAX_OUTPUT, SourceSpec
from agent_vault.errors import CredentialUnavailable
from agent_vault.hostpath import normalize_path
from agent_vault.matching import Match
from agent_vault.proxy.tokencache import limited
from agent_vault.snapshot import VaultView

FAILURE_HOLD = 1.0  # seconds a failure is answered from memory before the source is tried again
FILE_CHECK = 1.0  # seconds between stat() checks of a file source
MAX_ENTRIES = 4096  # cache bound (one entry per dynamic key; cleared past it)
REAP_SECONDS = 2.0  # a killed command whose stdout stays open (an escaped child) is cut off after this
# Secrets the server itself reads from its environment: a credential command never inherits them (the
# master password is already popped from os.environ once read; listed in case it was not).
SCRUBBED_ENV = frozenset(
    {
        "DATABASE_URL",  # may hold the database password
        "PGPASSWORD",  # libpq's password for that database
        "AGENT_VAULT_MASTER_PASSWORD",
        "AGENT_VAULT_NOTIFY_URL",  # webhook URLs often embed a secret
        "AGENT_VAULT_METRICS_TOKEN",
    }
)


@dataclass(slots=True)
class _Entry:
    spec: SourceSpec
    value: str | None = field(default=None, repr=False)
    error: str | None = None
    expires: float = 0.0  # monotonic; the value (or error) is served until then
    checked: float = 0.0  # file: when its stat was last compared
    stamp: tuple[int, int, int, int] | None = None  # file: (dev, ino, size, mtime_ns)


def _clean(data: bytes) -> str:
    """The printed bytes as the value: UTF-8, trailing newline(s) stripped, not empty."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceFailed("the output is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise SourceFailed("the output is empty")
    return text


class SourceFailed(Exception):
    """Why a source failed, in general terms only (mapped to CredentialUnavailable)."""


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed command. asyncio's `wait()` also waits for its stdout to close, which never
    happens if reading was paused on a full buffer, or if a process that left the group holds the
    pipe: so drain what is left (bounded: the writers are dead) for at most REAP_SECONDS, then cut
    the pipe."""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(REAP_SECONDS):
            while await proc.stdout.read(65536):
                pass
            await proc.wait()
    except (TimeoutError, ProcessLookupError):
        transport = getattr(proc, "_transport", None)  # asyncio's subprocess transport: closes the pipe
        if transport is not None:
            transport.close()


def command_env() -> dict[str, str]:
    """The server's environment minus its own secrets (SCRUBBED_ENV): what a credential command gets."""
    return {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}


async def run_command(spec: SourceSpec, limit: int = MAX_OUTPUT) -> str:
    """Run the command, return its cleaned output. Raises SourceFailed (timeout, exit status, size...)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=command_env(),
            start_new_session=True,
        )
    except (OSError, ValueError):
        raise SourceFailed("the command could not be started") from None
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(spec.timeout):
            while size <= limit:
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > limit:
                raise SourceFailed(f"the output is larger than {limit // 1024} KiB")
            code = await proc.wait()
    except TimeoutError:
        raise SourceFailed(f"the command timed out after {spec.timeout:g}s") from None
    finally:
        if proc.returncode is None:
            _kill(proc)
            await _reap(proc)
    if code != 0:
        raise SourceFailed(f"the command exited with status {code}")
    return _clean(b"".join(chunks))


def _stat(path: str) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        raise SourceFailed("the file cannot be read") from None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_file(path: str, limit: int = MAX_OUTPUT) -> tuple[str, tuple[int, int, int, int]]:
    """Blocking (run it in a thread): a regular file's cleaned content and its stat stamp."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise SourceFailed("the file cannot be read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceFailed("the path is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError:
        raise SourceFailed("the file cannot be read") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise SourceFailed(f"the file is larger than {limit // 1024} KiB")
    return _clean(data), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class SourceResolver:
    """Per-process cache of dynamic values, keyed by (vault id, key); one run at a time per key."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self._cache: dict[tuple[int, str], _Entry] = {}
        self._inflight: dict[tuple[int, str], asyncio.Task[_Entry]] = {}
        self._inflight_spec: dict[tuple[int, str], SourceSpec] = {}

    def __repr__(self) -> str:
        return f"SourceResolver(entries={len(self._cache)})"

    async def resolve(self, vault_id: int, key: str, spec: SourceSpec) -> str:
        """The value for `key`, from memory if fresh, else from its source. Raises CredentialUnavailable."""
        slot = (vault_id, key)
        entry = self._cache.get(slot)
        now = time.monotonic()
        if entry is None or entry.spec != spec or not self._fresh(entry, now):
            task = self._inflight.get(slot)
            if task is None or self._inflight_spec.get(slot) != spec:  # none, or for an older spec
                task = asyncio.ensure_future(self._refresh(slot, spec, entry))
                self._inflight[slot], self._inflight_spec[slot] = task, spec
                task.add_done_callback(functools.partial(self._done, slot))
            entry = await asyncio.shield(task)
        if entry.value is None:
            raise CredentialUnavailable.from_source(key, entry.error or "the source failed")
        return entry.value

    def _fresh(self, e: _Entry, now: float) -> bool:
        if now >= e.expires:
            return False
        return e.spec.kind != "file" or e.value is None or now < e.checked + FILE_CHECK

    def _done(self, slot: tuple[int, str], task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(slot) is task:
            del self._inflight[slot], self._inflight_spec[slot]
        if not task.cancelled() and task.exception() is None:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[slot] = task.result()

    async def _refresh(self, slot: tuple[int, str], spec: SourceSpec, old: _Entry | None) -> _Entry:
        now = time.monotonic()
        try:
            if spec.kind == "command":
                value = await run_command(spec, self.limit)
                assert spec.ttl is not None
                return _Entry(spec, value, expires=time.monotonic() + spec.ttl)
            assert spec.path is not None
            ttl = spec.ttl if spec.ttl is not None else float("inf")
            if old is not None and old.spec == spec and old.value is not None and now < old.expires:
                stamp = await asyncio.to_thread(_stat, spec.path)
                if stamp == old.stamp:
                    return _Entry(spec, old.value, expires=old.expires, checked=now, stamp=stamp)
            value, stamp = await asyncio.to_thread(read_file, spec.path, self.limit)
            return _Entry(spec, value, expires=now + ttl, checked=now, stamp=stamp)
        except SourceFailed as e:
            return _Entry(spec, None, error=str(e), expires=time.monotonic() + FAILURE_HOLD)

    async def overlay(
        self, view: VaultView, host: str, port: int, method: str, path: str, scheme: str
    ) -> tuple[VaultView, dict[str, str]]:
        """`view` with the dynamic values the matched service needs, and {key: source kind} used.

        Keys the service injects must resolve (else CredentialUnavailable: the request is never
        sent unauthenticated); keys only offered for `{{KEY}}` substitution are best effort (a
        failed one stays a literal placeholder, which sends no secret).
        """
        if not view.sources:
            return view, {}
        result = view.index.match_path(host, port, method, normalize_path(path).canonical, scheme)
        if not isinstance(result, Match):
            return view, {}
        svc = result.service
        needed = [k for k in svc.auth.referenced_keys() if k in view.sources and k not in view.corrupt]
        optional = [k for k in svc.substitution_keys if k in view.sources and k not in needed]
        if not needed and not optional:
            return view, {}
        got = await asyncio.gather(
            *(self.resolve(view.id, k, view.sources[k]) for k in [*needed, *optional]),
            return_exceptions=True,
        )
        values = dict(view.values)
        used: dict[str, str] = {}
        for k, v in zip([*needed, *optional], got, strict=True):
            if isinstance(v, str):
                values[k] = v
                used[k] = view.sources[k].kind
                continue
            if isinstance(v, CredentialUnavailable):  # why in general terms; never output or command
                kind = view.sources[k].kind
                why = v.message
                limited.warning(
                    ("source", view.name, k, why), "%s source failed: vault %s: %s", kind, view.name, why
                )
            if k in needed or not isinstance(v, CredentialUnavailable):
                raise v  # a surprise goes to the addon's fail-closed boundary
        return replace(view, values=values), used
