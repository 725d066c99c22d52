"""``docs/migrating_from_neural_tangents.md`` covers every public name of Neural Tangents'
``neural_tangents``, ``stax`` and ``predict`` (stored in ``tests/data/nt_public_names.json`` by
``bench/nt_names.py``, so no Neural Tangents is needed here), and every widenets name it
gives exists."""

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "migrating_from_neural_tangents.md"
NT_NAMES = json.loads((ROOT / "tests" / "data" / "nt_public_names.json").read_text())["names"]
SECTIONS = (
    "## `neural_tangents` (top level)",
    "## `neural_tangents.stax`",
    "## `neural_tangents.predict`",
)


def rows() -> list[tuple[str, str]]:
    """(Neural Tangents cell, widenets cell) of every row of the three name tables."""
    text = DOC.read_text()
    out = []
    for section in text.split("\n## ")[1:]:
        if "## " + section.splitlines()[0] not in SECTIONS:
            continue
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| `") and len(cells) >= 2:
                out.append((cells[0], cells[1]))
    return out


def nt_name(cell: str) -> str:
    """``stax.Dense`` from "`stax.Dense(out_dim)`", ``linearize`` from "`nt.linearize(f)`"."""
    code = re.match(r"`([^`]+)`", cell).group(1)
    name = re.match(r"[A-Za-z_][\w.]*", code).group(0)
    return name.removeprefix("nt.")


def wn_names(cell: str) -> list[str]:
    """Every dotted ``wn.`` name at the start of a code span of the cell."""
    return [m.group(1) for m in re.finditer(r"`wn\.([A-Za-z_][\w.]*)", cell)]


def resolve(dotted: str):
    """The object ``widenets.<dotted>``: the longest importable module prefix, then getattrs."""
    parts = dotted.split(".")
    for i in range(len(parts), -1, -1):
        try:
            obj = importlib.import_module(".".join(["widenets", *parts[:i]]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(dotted)


def test_nt_name_list_is_complete():
    """The stored list has all of stax's and predict's names and the functions of the issue."""
    assert len(NT_NAMES) == len(set(NT_NAMES)) == 77
    for name in ("empirical_kernel_fn", "linearize", "taylor_expand", "monte_carlo_kernel_fn",
                 "batch", "stax.Dense", "predict.max_learning_rate"):  # fmt: skip
        assert name in NT_NAMES


def test_every_neural_tangents_name_has_exactly_one_row():
    names = [nt_name(nt) for nt, _ in rows()]
    assert sorted(set(NT_NAMES) - set(names)) == []  # missing rows
    assert sorted(set(names) - set(NT_NAMES)) == []  # rows of names Neural Tangents lacks
    assert len(names) == len(set(names))


@pytest.mark.parametrize("nt,ours", rows(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_widenets_name_exists(nt, ours):
    names = wn_names(ours)
    assert names or ours.startswith("not provided"), f"{nt}: neither a wn. name nor 'not provided'"
    for name in names:
        resolve(name)  # AttributeError / ImportError if the table names something absent
