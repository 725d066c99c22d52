"""The public names of Neural Tangents 0.6.5 that ``docs/migrating_from_neural_tangents.md``
must cover: ``dir()`` of ``neural_tangents`` (``empirical_kernel_fn``, ``linearize``,
``taylor_expand``, ``monte_carlo_kernel_fn``, ``batch``, ...), of ``neural_tangents.stax``
and of ``neural_tangents.predict``, without the underscored ones. Prints them, and with
``--write PATH`` stores them as JSON (``tests/data/nt_public_names.json``, which
``tests/test_migration_table.py`` reads, so the test needs no Neural Tangents).

Usage::

    PYTHONPATH=src python bench/nt_names.py [--write tests/data/nt_public_names.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _nt import NTUnavailable, run_nt  # noqa: E402

_SCRIPT = r"""
import neural_tangents as nt
from neural_tangents import predict, stax

def public(module):
    return sorted(n for n in dir(module) if not n.startswith("_"))

report(
    version=nt.__version__,
    top=public(nt),
    stax=["stax." + n for n in public(stax)],
    predict=["predict." + n for n in public(predict)],
)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", metavar="PATH", default=None)
    args = ap.parse_args(argv)
    try:
        _, report = run_nt(_SCRIPT)
    except NTUnavailable as e:
        print(e)
        return 0
    names = report["top"] + report["stax"] + report["predict"]
    print(f"Neural Tangents {report['version']}: {len(names)} public names")
    print("\n".join(names))
    if args.write:
        path = Path(args.write)
        tmp = path.with_name(path.name + ".tmp")
        record = {"source": f"Neural Tangents {report['version']} (bench/nt_names.py)"}
        tmp.write_text(json.dumps(dict(record, names=names), indent=1) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
