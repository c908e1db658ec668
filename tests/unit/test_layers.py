"""The import graph points one way (issue 21): the data plane (proxy/) sits above the domain, the
domain above the store; leaf and pure modules stay free of the engine and the ORM."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "agent_vault"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the package of `path`
                parts = path.relative_to(PKG.parent).with_suffix("").parts[: -node.level]
                base = ".".join((*parts, node.module))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _modules(sub: str = "") -> dict[str, set[str]]:
    root = PKG / sub if sub else PKG
    return {str(p.relative_to(PKG)): _imports(p) for p in root.rglob("*.py")}


def test_only_the_server_and_the_cli_import_the_data_plane() -> None:
    offenders = {
        mod: sorted(i for i in imps if i.startswith("agent_vault.proxy"))
        for mod, imps in _modules().items()
        if not mod.startswith(("proxy/", "cli/")) and mod != "server.py"
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_domain_store_and_audit_do_not_import_the_api_or_the_cli() -> None:
    for sub in ("domain", "store", "audit"):
        for mod, imps in _modules(sub).items():
            bad = sorted(
                i for i in imps if i.startswith(("agent_vault.api", "agent_vault.cli", "agent_vault.server"))
            )
            assert not bad, (sub, mod, bad)


def test_hostpath_is_a_leaf() -> None:
    imps = _imports(PKG / "hostpath.py")
    assert not [i for i in imps if i.startswith("agent_vault")], imps


def test_decide_and_the_snapshot_load_without_the_engine_or_the_orm() -> None:
    code = (
        "import sys\n"
        "import agent_vault.proxy.decide, agent_vault.snapshot, agent_vault.matching, agent_vault.hostpath\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'mitmproxy', 'sqlmodel', 'sqlalchemy'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cli_loads_without_the_engine_or_the_orm() -> None:
    """Every command pays for what building the command tree imports (~0.3 s for the ORM alone):
    the server, `logs verify --offline` and `migrate-db` import theirs when they run."""
    code = (
        "import sys\n"
        "import agent_vault.cli as cli\n"
        "cli._register()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'mitmproxy', 'sqlmodel', 'sqlalchemy'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_server_process_imports_nothing_it_does_not_run() -> None:
    """SPEC §15's idle RSS (<= 120 MiB): the server process (the CLI's command tree, the server, the
    engine) imports no printer (rich, pygments: the CLI loads rich on first output), no YAML (the
    catalog loads it when asked), no XML (AWS AssumeRole answers only) and not httpx's command-line
    client. With uvicorn's `ws="none"` (the API has no WebSocket route, so no `websockets` either, which
    uvicorn imports at start, not at import): ~4.7 MiB of idle RSS together."""
    code = (
        "import sys\n"
        "import agent_vault.cli as cli\n"
        "cli._register()\n"
        "import agent_vault.server, agent_vault.proxy.runner\n"
        "heavy = {'rich', 'pygments', 'yaml', 'websockets', 'xml'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "bad += ['httpx._main'] if sys.modules.get('httpx._main') is not None else []\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_server_command_builds_only_its_own_tree() -> None:
    """`agent-vault server` runs for the life of its process: its command tree has the server's module
    only (the other ~25 command modules would stay in memory for nothing), every other command the
    whole tree."""
    code = (
        "import sys\n"
        "import agent_vault.cli as cli\n"
        "tree = cli.build_command(['server', '--port', '0'])\n"
        "assert 'server' in tree.commands and 'vault' not in tree.commands, sorted(tree.commands)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('agent_vault.cli.'))\n"
        "assert loaded == ['agent_vault.cli.client', 'agent_vault.cli.loginstore', 'agent_vault.cli.output',"
        " 'agent_vault.cli.serverctl'], loaded\n"
        "assert {'vault', 'run', 'logs', 'init'} <= set(cli.build_command(['vault']).commands)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
