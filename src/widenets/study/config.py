"""The study's configuration: defaults, TOML input and output, and validation.

A configuration is a flat set of keys (see :data:`DEFAULTS`); a TOML file may group them in
tables (:func:`flatten`). Values come, in increasing priority, from the defaults, a TOML
file and explicit overrides (the command line). Every
check runs in :func:`resolve`, before any work starts, and every error names the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w

from widenets.study.architectures import ACTIVATIONS, available_architectures


@dataclass(frozen=True)
class StudyConfig:
    """Every setting of a study; ``widenets study`` writes it as ``config.toml``.

    Model: ``arch`` (see :func:`available_architectures`), ``depth`` hidden layers,
    ``activation`` (fc only), ``w_std``, ``b_std`` (NTK parameterisation).
    Data: ``data`` (a :func:`widenets.data.available` name), ``n_train``, ``n_test``,
    ``data_seed``, ``data_options`` (passed on to :func:`widenets.data.load`).
    Infinite width: ``diag_reg`` (relative to the mean kernel diagonal) and the values
    ``diag_reg_sweep`` tried; ``n_times`` points of the gradient-flow curve.
    Finite width: ``widths``, ``seeds`` (networks 0..seeds-1 per width), ``steps`` of
    full-batch gradient descent at ``learning_rate`` ("auto": ``lr_factor`` * n / lambda_max
    of the infinite-width NTK, n = y_train.numel(); stable for lr_factor < 2), SGD with
    ``sgd_batch_size`` for the same number of steps and the same learning rate (0: none),
    ``center`` (train f(x) - f(x; theta_0), Lee et al. 2020), ``dtype`` of the networks,
    ``n_checkpoints`` along training, ``linearize`` (train the linearisation of the first
    ``linearize_seeds`` networks alongside), ``regime_points`` training inputs for the
    empirical-NTK kernel distance.
    Findings of Lee et al. 2020 (:mod:`widenets.study.findings`): ``findings``, a list of
    names from ``"zca"``, ``"parameterization"``, ``"large_lr_l2"`` (none by default);
    ``finding_width``, the width of the networks of "zca" and "large_lr_l2" (0: the largest
    of ``widths``); ``zca_regularizers``, the ZCA regularisers eps (Sigma + eps tr(Sigma)/d I)
    compared with no whitening; ``lr_factors``, the factors f of the learning rates
    f * n / lambda_max (infinite-width NTK) tried by "large_lr_l2" (gradient descent of the
    kernel model diverges for f > 2); ``l2_values``, the L2 coefficients lambda (loss +
    lambda/2 ||theta||^2, i.e. weight decay lambda on every trainable parameter) tried by
    "large_lr_l2" at the study's learning rate, besides lambda = 0.
    """

    arch: str = "fc"
    depth: int = 2
    activation: str = "relu"
    w_std: float = 1.5
    b_std: float = 0.05
    data: str = "mnist5k"
    n_train: int = 1000
    n_test: int = 1000
    data_seed: int = 0
    data_options: dict = field(default_factory=dict)
    diag_reg: float = 1e-4
    diag_reg_sweep: list = field(default_factory=lambda: [0.0, 1e-6, 1e-4, 1e-2, 1e-1, 1.0])
    n_times: int = 25
    widths: list = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    seeds: int = 4
    steps: int = 200
    learning_rate: float | str = "auto"
    lr_factor: float = 1.0
    sgd_batch_size: int = 100
    center: bool = True
    dtype: str = "float32"
    n_checkpoints: int = 12
    linearize: bool = True
    linearize_seeds: int = 2
    regime_points: int = 100
    findings: list = field(default_factory=list)
    finding_width: int = 0
    zca_regularizers: list = field(default_factory=lambda: [0.0, 0.1, 1.0, 10.0, 100.0])
    lr_factors: list = field(default_factory=lambda: [0.5, 1.0, 1.9, 3.0, 6.0])
    l2_values: list = field(default_factory=lambda: [1e-5, 1e-4, 1e-3])

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """A short hash of the configuration: finished stages are reused only if it matches."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


KEYS = tuple(f.name for f in fields(StudyConfig))
DEFAULTS = StudyConfig().to_dict()
DTYPES = ("float32", "float64")


def _fail(key, what, value):
    raise ValueError(f"config key `{key}` must be {what}, got {value!r}.")


def _int(key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        _fail(key, what, value)
    return value


def _real(key, value, *, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, "a finite number", value)
    if value < 0 or (positive and value == 0):
        _fail(key, "a positive number" if positive else "a non-negative number", value)
    return float(value)


def parse_widths(value) -> list[int]:
    """Widths as a list of positive integers, from a list or a text like ``"64,256,1024"``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        out = []
        for p in parts:
            try:
                out.append(int(p))
            except ValueError:
                _fail("widths", "positive integers (e.g. 64,256,1024)", value)
        value = out
    if not isinstance(value, (list, tuple)) or not value:
        _fail("widths", "a non-empty list of positive integers", value)
    for w in value:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            _fail("widths", "positive integers (e.g. 64,256,1024)", value)
    return sorted(set(int(w) for w in value))


def _check(cfg: dict) -> dict:
    from widenets import data as wn_data

    c = dict(cfg)
    archs = available_architectures()
    if c["arch"] not in archs:
        raise ValueError(f"unknown architecture `arch`={c['arch']!r}; known: {sorted(archs)}.")
    known_data = wn_data.available()
    if c["data"] not in known_data:
        raise ValueError(f"unknown dataset `data`={c['data']!r}; known: {known_data}.")
    if c["activation"] not in ACTIVATIONS:
        _fail("activation", f"one of {sorted(ACTIVATIONS)}", c["activation"])
    c["depth"] = _int("depth", c["depth"], 1)
    c["w_std"] = _real("w_std", c["w_std"], positive=True)
    c["b_std"] = _real("b_std", c["b_std"])
    c["n_train"] = _int("n_train", c["n_train"], 1)
    c["n_test"] = _int("n_test", c["n_test"], 1)
    c["data_seed"] = _int("data_seed", c["data_seed"], 0)
    if not isinstance(c["data_options"], dict):
        _fail("data_options", "a table (dict) of wn.data.load options", c["data_options"])
    c["diag_reg"] = _real("diag_reg", c["diag_reg"])
    sweep = c["diag_reg_sweep"]
    if not isinstance(sweep, (list, tuple)):
        _fail("diag_reg_sweep", "a list of non-negative numbers", sweep)
    c["diag_reg_sweep"] = sorted({_real("diag_reg_sweep", r) for r in sweep} | {c["diag_reg"]})
    c["n_times"] = _int("n_times", c["n_times"], 2)
    c["widths"] = parse_widths(c["widths"])
    c["seeds"] = _int("seeds", c["seeds"], 1)
    c["steps"] = _int("steps", c["steps"], 1)
    lr = c["learning_rate"]
    if lr != "auto":
        c["learning_rate"] = _real("learning_rate", lr, positive=True)
    c["lr_factor"] = _real("lr_factor", c["lr_factor"], positive=True)
    c["sgd_batch_size"] = _int("sgd_batch_size", c["sgd_batch_size"], 0)
    if c["sgd_batch_size"] > c["n_train"]:
        _fail("sgd_batch_size", f"at most n_train={c['n_train']} (0: no SGD)", c["sgd_batch_size"])
    for key in ("center", "linearize"):
        if not isinstance(c[key], bool):
            _fail(key, "true or false", c[key])
    if c["dtype"] not in DTYPES:
        _fail("dtype", f"one of {DTYPES}", c["dtype"])
    c["n_checkpoints"] = _int("n_checkpoints", c["n_checkpoints"], 2)
    c["linearize_seeds"] = _int("linearize_seeds", c["linearize_seeds"], 0)
    c["regime_points"] = _int("regime_points", c["regime_points"], 2)
    c["regime_points"] = min(c["regime_points"], c["n_train"])
    c["findings"] = _findings(c["findings"])
    c["finding_width"] = _int("finding_width", c["finding_width"], 0)
    c["zca_regularizers"] = _real_list("zca_regularizers", c["zca_regularizers"])
    c["lr_factors"] = _real_list("lr_factors", c["lr_factors"], positive=True)
    c["l2_values"] = _real_list("l2_values", c["l2_values"])
    return c


def _findings(value) -> list[str]:
    from widenets.study.findings import FINDINGS

    if not isinstance(value, (list, tuple)) or any(v not in FINDINGS for v in value):
        _fail("findings", f"a list of names from {list(FINDINGS)}", value)
    return [f for f in FINDINGS if f in value]


def _real_list(key, value, *, positive=False) -> list[float]:
    """A non-empty list of finite numbers >= 0 (> 0 if ``positive``), sorted, no repeats."""
    what = "a non-empty list of " + ("positive" if positive else "non-negative") + " numbers"
    if not isinstance(value, (list, tuple)) or not value:
        _fail(key, what, value)
    return sorted({_real(key, v, positive=positive) for v in value})


def load_toml(path) -> dict:
    """The keys of a TOML file, flat (see :func:`flatten` for sections)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    return flatten(raw, str(path))


#: keys whose value is itself a table: a TOML table of that name is the value, not a section
TABLE_KEYS = ("data_options",)


def flatten(raw: dict, where: str = "config") -> dict:
    """Config keys from a dict that may group them in sections (TOML tables).

    A table is a section whose entries are config keys (its name is free: ``[model]``,
    ``[data]``, ``[finite]``, ...), except a table named after a key that holds a table
    (``data_options``), which is that key's value. In a section named after a key, ``name``
    stands for that key: ``[data]`` with ``name = "digits"`` sets ``data``. A key given twice
    (in two sections, or in a section and at the top) is an error.
    """
    flat: dict = {}

    def put(key, value, section):
        if key in flat:
            place = f"section [{section}]" if section else "the top level"
            raise ValueError(f"config key `{key}` is given twice in {where} (again in {place}).")
        flat[key] = value

    for key, value in raw.items():
        if isinstance(value, dict) and key not in TABLE_KEYS:
            for sub, v in value.items():
                if sub == "name" and key in KEYS:
                    sub = key
                if isinstance(v, dict) and sub not in TABLE_KEYS:
                    raise ValueError(
                        f"section [{key}.{sub}] of {where}: sections do not nest; write the "
                        f"keys of [{key}.{sub}] in [{key}]."
                    )
                put(sub, v, key)
        else:
            put(key, value, None)
    return flat


def given_keys(config, cls, keys, overrides: dict, flat=None) -> dict:
    """The keys a user gave: ``config`` (None, a ``cls`` instance, a dict, flattened by
    ``flat`` (default: :func:`flatten`), or the path of a TOML file) updated by ``overrides``
    whose value is not None; a ValueError naming an unknown key (and the closest known one).
    Shared by the study's, the scale job's and the prune study's configurations."""
    if config is None:
        given = {}
    elif isinstance(config, cls):
        given = config.to_dict()
    elif isinstance(config, dict):
        given = (flat or flatten)(config)
    elif isinstance(config, (str, Path)):
        given = load_toml(config)
    else:
        raise TypeError(
            f"`config` must be a {cls.__name__}, a dict or a TOML path, got "
            f"{type(config).__name__}."
        )
    given.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(given) - set(keys))
    if unknown:
        close = {k: difflib.get_close_matches(k, keys, n=1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise ValueError(
            f"unknown config key(s) {unknown}{' (' + hint + ')' if hint else ''}; known keys: "
            f"{list(keys)}."
        )
    return given


def resolve(config=None, **overrides) -> StudyConfig:
    """A checked :class:`StudyConfig` from defaults, ``config`` and ``overrides``.

    ``config`` is None, a :class:`StudyConfig`, a dict of keys, or the path of a TOML file;
    ``overrides`` whose value is None are ignored. Unknown keys, unknown names and bad
    values raise a ValueError naming the key, before any work starts.
    """
    given = given_keys(config, StudyConfig, KEYS, overrides)
    merged = {**StudyConfig().to_dict(), **given}
    return StudyConfig(**_check(merged))


TOML_HEADER = "# widenets study: the fully resolved configuration (rerun with --config)\n"


def dump_toml(d: dict) -> str:
    """The configuration as TOML text (tomli-w), with a header line saying what it is."""
    return TOML_HEADER + tomli_w.dumps(d)
