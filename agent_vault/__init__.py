"""agent-vault: a credential broker for AI agents."""

import sys as _sys

__version__ = "0.1.0"

# httpx's package import also imports its command-line client (`httpx._main`: rich, pygments, click;
# ~3 MiB of RSS in every agent-vault process) unless that import fails, in which case httpx defines a
# stub `main`. agent-vault never runs httpx's CLI. A None entry makes the import fail the documented
# way; setdefault leaves an httpx that was imported before agent-vault as it is.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
