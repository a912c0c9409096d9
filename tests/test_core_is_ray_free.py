"""The core never imports Ray: only lungdr.scale may (and the CLI/benchmarks only lazily)."""

import json
import subprocess
import sys

SCRIPT = r"""
import importlib, json, pkgutil, sys
import lungdr
offenders = []
for mod in pkgutil.walk_packages(lungdr.__path__, "lungdr."):
    if mod.name.startswith("lungdr.scale") or mod.name.endswith("make_sample"):
        continue
    importlib.import_module(mod.name)
    if "ray" in sys.modules:
        offenders.append(mod.name)
        break
print(json.dumps({"offenders": offenders, "checked": len(list(pkgutil.walk_packages(lungdr.__path__, "lungdr.")))}))
"""


def test_core_modules_do_not_import_ray():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["checked"] > 10
    assert result["offenders"] == [], f"imports ray at import time: {result['offenders']}"
