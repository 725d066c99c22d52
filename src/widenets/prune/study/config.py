"""The pruning study's configuration: defaults, TOML in and out, validation.

Values come, in increasing priority, from the defaults, a TOML file (flat, or grouped in
tables) and explicit overrides; every check runs in :func:`resolve`, before any work, and
every error names the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

import tomli_w

from widenets.study.config import given_keys

ARCHS = ("lenet_300_100", "small_cnn")
#: methods in the order of the report; "imp_reinit" is trained alongside "imp"
METHODS = ("random", "erk", "magnitude", "snip", "grasp", "synflow", "imp", "imp_reinit")


@dataclass(frozen=True)
class PruneConfig:
    """Every setting of ``widenets prune`` (written as ``config.toml``).

    ``archs`` (:data:`ARCHS`) trained on MNIST-5k (``n_train``, ``n_test``, ``data_seed``);
    ``methods`` (:data:`METHODS`), each at every density of ``densities`` (fractions of the
    prunable weights kept; 1.0, the dense network, is always included); ``seeds`` networks
    per (architecture, method, density), seed s drawing the initial weights and the order
    of the minibatches (the same for every method: paired comparisons). Training: Adam at
    ``learning_rate`` with minibatches of ``batch_size`` for ``epochs`` passes, cross-
    entropy. SNIP and GraSP score on the first ``score_examples`` training examples; SynFlow
    iterates ``synflow_iterations`` times; IMP prunes through the densities in order (one
    round per density, global magnitude), rewinding to the weights after ``rewind_step``
    steps; "imp_reinit" trains IMP's masks from a fresh draw (seed 1000 + s). The kernel
    distance uses the first ``kernel_points`` test inputs. ``threads``: torch threads
    during the run (restored after; 0 leaves torch's setting).
    """

    archs: list = field(default_factory=lambda: list(ARCHS))
    methods: list = field(default_factory=lambda: list(METHODS))
    densities: list = field(default_factory=lambda: [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005])
    seeds: int = 3
    n_train: int = 4000
    n_test: int = 1000
    data_seed: int = 0
    epochs: int = 3
    batch_size: int = 100
    learning_rate: float = 1e-3
    score_examples: int = 1000
    synflow_iterations: int = 100
    rewind_step: int = 0
    kernel_points: int = 16
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """A short hash of the configuration (``threads`` left out: it changes no result
        beyond floating-point order); stages are reused only when it matches."""
        d = {k: v for k, v in self.to_dict().items() if k != "threads"}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return "# widenets prune: the fully resolved configuration (rerun with --config)\n" + (
            tomli_w.dumps(self.to_dict())
        )

    @property
    def sparse_densities(self) -> list[float]:
        return [d for d in self.densities if d < 1.0]


KEYS = tuple(f.name for f in fields(PruneConfig))
DEFAULTS = PruneConfig().to_dict()


def _fail(key, what, value):
    raise ValueError(f"config key `{key}` must be {what}, got {value!r}.")


def _int(key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, "a positive integer" if minimum == 1 else f"an integer >= {minimum}", value)
    return value


def _names(key, value, known) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or any(v not in known for v in value):
        _fail(key, f"a non-empty list of names from {list(known)}", value)
    return [k for k in known if k in value]


def parse_densities(value) -> list[float]:
    """Densities in (0, 1], from a list or a text like ``"1,0.1,0.01"``: sorted from dense
    to sparse, no repeats, 1.0 added (the dense network every curve starts from)."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            _fail("densities", "numbers in (0, 1] (e.g. 1,0.1,0.01)", value)
    if not isinstance(value, (list, tuple)) or not value:
        _fail("densities", "a non-empty list of numbers in (0, 1]", value)
    for d in value:
        bad = isinstance(d, bool) or not isinstance(d, (int, float))
        if bad or not math.isfinite(d) or not 0 < d <= 1:
            _fail("densities", "numbers in (0, 1] (fractions of the weights kept)", value)
    return sorted({float(d) for d in value} | {1.0}, reverse=True)


def _check(c: dict) -> dict:
    c = dict(c)
    c["archs"] = _names("archs", c["archs"], ARCHS)
    c["methods"] = _names("methods", c["methods"], METHODS)
    if "imp_reinit" in c["methods"] and "imp" not in c["methods"]:
        _fail("methods", 'a list that has "imp" when it has "imp_reinit"', c["methods"])
    c["densities"] = parse_densities(c["densities"])
    for key, low in (
        ("seeds", 1), ("n_train", 1), ("n_test", 1), ("data_seed", 0), ("epochs", 1),
        ("batch_size", 1), ("score_examples", 1), ("synflow_iterations", 1),
        ("rewind_step", 0), ("kernel_points", 2), ("threads", 0),
    ):  # fmt: skip
        c[key] = _int(key, c[key], low)
    lr = c["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        _fail("learning_rate", "a positive number", lr)
    c["learning_rate"] = float(lr)
    if c["n_train"] + c["n_test"] > 5000:
        raise ValueError(
            f"`n_train` + `n_test` = {c['n_train']} + {c['n_test']} exceeds the 5000 images "
            "of MNIST-5k."
        )
    for key in ("batch_size", "score_examples"):
        if c[key] > c["n_train"]:
            _fail(key, f"at most n_train={c['n_train']}", c[key])
    if c["kernel_points"] > c["n_test"]:
        _fail("kernel_points", f"at most n_test={c['n_test']}", c["kernel_points"])
    steps = c["epochs"] * math.ceil(c["n_train"] / c["batch_size"])
    if c["rewind_step"] > steps:
        _fail("rewind_step", f"at most the {steps} training steps", c["rewind_step"])
    return c


def resolve(config=None, **overrides) -> PruneConfig:
    """A checked :class:`PruneConfig` from defaults, ``config`` (None, a PruneConfig, a dict
    or a TOML path) and ``overrides`` (None values ignored)."""
    given = given_keys(config, PruneConfig, KEYS, overrides)
    return PruneConfig(**_check({**DEFAULTS, **given}))
