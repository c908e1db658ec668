"""Import mitmproxy lean: register `mitmproxy.addons` as a bare package (its `__init__` is not run),
so only the addons of the lean chain are ever imported.

mitmproxy's `addons/__init__.py` imports all ~40 default addons -- the web UI and onboarding app
(flask), LDAP proxy auth, HAR export -- which cost ~11 MiB of RSS and half a second of start, and none
of which may run here (SPEC §14.13). `runner` (the one module that imports `mitmproxy.master` and
`mitmproxy.addons`) imports this first; code that wants `mitmproxy.addons.default_addons` must import
it before.
"""

import importlib.util
import sys


def _bare_addons_package() -> None:
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy.addons")
    if spec is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)  # not executed: submodules import on demand
    sys.modules["mitmproxy.addons"] = module
    setattr(sys.modules["mitmproxy"], "addons", module)  # noqa: B010 - what an import would do


_bare_addons_package()
