"""Every third-party module agent_vault/ imports is a declared base dependency (issue 14): a module
that only arrives with some other package's version installs on one machine and breaks on the next."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> dict[str, str]:
    found: dict[str, str] = {}
    for f in sorted((ROOT / "agent_vault").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                found.setdefault(n.split(".")[0], str(f.relative_to(ROOT)))
    return {
        m: where
        for m, where in found.items()
        if m not in sys.stdlib_module_names and m not in ("agent_vault", "__future__", "compression")
    }


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[\s<>=!~;\[(]", d, maxsplit=1)[0]) for d in deps}


def test_every_imported_module_is_a_declared_dependency() -> None:
    dists = md.packages_distributions()
    declared = _declared()
    undeclared = {
        m: where
        for m, where in _imported_top_level_modules().items()
        if not {_norm(d) for d in dists.get(m, [])} & declared
    }
    assert undeclared == {}, f"imported but not in [project].dependencies: {undeclared}"


def test_the_check_sees_the_modules_it_must() -> None:
    """The walk is real: it finds the engine, the ORM and the zstd backport (else it proves nothing)."""
    mods = _imported_top_level_modules()
    assert {"mitmproxy", "sqlalchemy", "sqlmodel", "brotli", "idna", "backports"} <= set(mods)


def test_mitmproxy_is_pinned_to_the_range_the_engine_check_tests() -> None:
    from agent_vault.proxy import engine_compat

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if _norm(d).startswith("mitmproxy")]
    assert pin.replace(" ", "") == "mitmproxy" + engine_compat.TESTED_TEXT


def test_lock_files_pin_every_package_with_hashes() -> None:
    for name in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / name).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", text, flags=re.M)
        assert pins, name
        assert text.count("--hash=sha256:") >= len(pins), name
        assert ("mitmproxy", md.version("mitmproxy")) in pins, f"{name} does not pin the installed engine"
