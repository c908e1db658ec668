"""A lean replacement for mitmproxy's per-flow hook dispatch (PERF-NOTES: hook dispatch is the largest
single cost of the engine).

mitmproxy's `AddonManager.handle_lifecycle` walks every addon (and its children) for every hook of
every flow, looks the hook up by `getattr` each time, wraps each call in a context manager, and then
triggers a second `update` hook walk for flow hooks. The proxy's addon chain is fixed once it
runs, so `LeanDispatch` resolves each hook name to its list of bound callables once and calls only
those; `update` hooks cost nothing when no addon implements them (none in the lean chain).

Contract kept from mitmproxy: addons run in chain order; `AddonHalt` stops the chain; any other
exception is logged (type and place only) and the next addon runs -- exactly mitmproxy's
`safecall`. Fail-closed is the product addon's own job (every hook has one boundary try).
Call `install()` after the chain is final; `uninstall()` restores mitmproxy's dispatch.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

log = logging.getLogger("agent_vault.proxy")


class LeanDispatch:
    """Per-hook tables of bound callables for one AddonManager."""

    def __init__(self, manager: AddonManager) -> None:
        self.manager = manager
        self._table: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._fields: dict[type[hooks.Hook], tuple[str, ...]] = {}

    def _funcs(self, name: str) -> tuple[Callable[..., Any], ...]:
        funcs = self._table.get(name)
        if funcs is None:
            found = []
            for addon in traverse(self.manager.chain):  # type: ignore[no-untyped-call]
                func = getattr(addon, name, None)
                if callable(func) and not isinstance(func, types.ModuleType):
                    found.append(func)
            funcs = self._table[name] = tuple(found)
        return funcs

    def _args(self, event: hooks.Hook) -> list[Any]:
        names = self._fields.get(type(event))
        if names is None:
            names = self._fields[type(event)] = tuple(f.name for f in dataclasses.fields(event))  # type: ignore[arg-type]
        return [getattr(event, n) for n in names]

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        funcs = self._funcs(event.name)
        if not funcs:
            return
        args = self._args(event)
        for func in funcs:
            try:
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
            except exceptions.AddonHalt:
                return
            except Exception as e:  # mitmproxy's safecall: log, carry on with the next addon
                log.error("addon error in %s: %s", event.name, type(e).__name__)
        # No `update` hook walk: handle_lifecycle's follow-up is only for addons that implement it.
        if self._funcs("update") and isinstance(args[0], flow.Flow):
            await self.manager.trigger_event(hooks.UpdateHook([args[0]]))


def install(manager: AddonManager) -> LeanDispatch:
    """Route `manager.handle_lifecycle` through a LeanDispatch built for its current chain."""
    lean = LeanDispatch(manager)
    manager.handle_lifecycle = lean.handle_lifecycle  # type: ignore[method-assign]
    return lean


def uninstall(manager: AddonManager) -> None:
    manager.__dict__.pop("handle_lifecycle", None)
