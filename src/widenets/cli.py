"""The ``widenets`` command: ``study``, ``scale``, ``prune``, ``kernel`` and ``info``.

widenets study                                   # the embedded default
widenets study --config my_study.toml --out runs/fc-mnist
widenets study --arch fc --data digits --n-train 1000 --n-test 500 --seeds 4
widenets study --config my_study.toml --set n_times=10 --set 'zca_regularizers=[0.0, 1.0]'
widenets prune --out runs/prune --seeds 3
widenets kernel --arch fc --data digits --out k.pt
widenets scale --n 1000,2000,4000,8000 --out runs/scale
widenets info

Values of a study come, in increasing priority, from the defaults, ``--config``, ``--set`` and
the flags given on the command line. Errors a user can fix (a bad flag or value, a dataset
too small for the sizes asked, an architecture that does not fit the data, an output folder
in use) are one line on stderr with exit status 2; a failed stage exits with 1; Ctrl-C
says what was kept and how to resume, and exits with 130.
"""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from widenets.architectures import ACTIVATIONS
from widenets.prune.study.config import DEFAULTS as PRUNE
from widenets.scale.config import DEFAULTS as SCALE_DEFAULTS
from widenets.study.config import DEFAULTS, KEYS

_ACTIVATION_HELP = f"Activation (fc): {', '.join(ACTIVATIONS)}."


class _OneLineErrors(TyperGroup):
    """Click's own usage errors (unknown option, bad value) as one line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `widenets` alone: the help
                text = err.ctx.get_help()  # rich help prints itself and returns ""
                if text:
                    typer.echo(text)
                sys.exit(2)
            ctx = getattr(err, "ctx", None)
            where = ctx.command_path if ctx is not None else "widenets"
            message = " ".join(err.format_message().split())
            typer.echo(f"Error: {message} (`{where} --help` lists the options).", err=True)
            sys.exit(getattr(err, "exit_code", 2) or 2)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="widenets: neural networks at infinite and finite width.",
    no_args_is_help=True,
    add_completion=False,
)

#: the config key of each flag of ``study`` and ``kernel`` (flag name = key, dashed)
FLAGS = (
    "arch depth activation w_std b_std data n_train n_test data_seed diag_reg widths seeds "
    "steps learning_rate lr_factor sgd_batch_size dtype center linearize findings"
).split()


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _hint(message: str) -> str:
    """The message on one line, with the flags (or ``--set``) that set the keys it names."""
    message = " ".join(message.split())
    keys = [k for k in dict.fromkeys(re.findall(r"`(\w+)`", message)) if k in KEYS]
    if keys:
        how = [_flag(k) if k in FLAGS else f"--set {k}=..." for k in keys]
        message = message.rstrip(".") + f". Set with {', '.join(how)}."
    return message


def _bad(message: str) -> typer.Exit:
    typer.echo(f"Error: {_hint(message)}", err=True)
    return typer.Exit(code=2)


def _toml_value(text: str):
    """A ``--set`` value read as TOML (3, 1e-4, true, [8, 16], "auto"), else as text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict of config keys (values read as TOML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"`--set` takes KEY=VALUE (e.g. n_times=10), got {item!r}.")
        out[key] = _toml_value(value.strip())
    return out


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag ``name`` was given (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _flag_value(key: str, value):
    from widenets.study.config import parse_widths

    if key == "widths":
        return parse_widths(value)
    if key == "findings":
        return [f.strip() for f in value.split(",") if f.strip()]
    if key == "learning_rate":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _overrides(ctx: typer.Context, values: dict, settings: list[str]) -> dict:
    """``--set`` values, then the flags given on the command line (which win)."""
    given = parse_set(settings)
    for key, value in values.items():
        if _given(ctx, key):
            given[key] = _flag_value(key, value)
    return given


def _resume_command(out: Path) -> str:
    return " ".join(
        ["widenets study --config", shlex.quote(str(out / "config.toml")), "--out"]
        + [shlex.quote(str(out)), "--resume"]
    )


def _kept(out: Path) -> int:
    stages = out / "stages"
    return len(list(stages.glob("*.json"))) if stages.is_dir() else 0


M, D, INF, FIN, RUN = "Model", "Data", "Infinite width", "Finite width", "Run"


def _opt(key: str, help: str, panel: str, **kw):
    return typer.Option(_flag(key), help=help, rich_help_panel=panel, **kw)


@app.command()
def study(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of config keys, flat or grouped in tables.", rich_help_panel=RUN
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.", rich_help_panel=RUN)] = Path(
        "runs/study"
    ),
    arch: Annotated[str, _opt("arch", "Architecture (`widenets info` lists them).", M)] = DEFAULTS[
        "arch"
    ],
    depth: Annotated[int, _opt("depth", "Hidden layers.", M)] = DEFAULTS["depth"],
    activation: Annotated[str, _opt("activation", _ACTIVATION_HELP, M)] = DEFAULTS["activation"],
    w_std: Annotated[float, _opt("w_std", "Weight standard deviation.", M)] = DEFAULTS["w_std"],
    b_std: Annotated[float, _opt("b_std", "Bias standard deviation.", M)] = DEFAULTS["b_std"],
    data: Annotated[str, _opt("data", "Dataset (`widenets info` lists them).", D)] = DEFAULTS[
        "data"
    ],
    n_train: Annotated[int, _opt("n_train", "Training examples.", D)] = DEFAULTS["n_train"],
    n_test: Annotated[int, _opt("n_test", "Test examples.", D)] = DEFAULTS["n_test"],
    data_seed: Annotated[int, _opt("data_seed", "Seed of the train/test draw.", D)] = DEFAULTS[
        "data_seed"
    ],
    diag_reg: Annotated[
        float, _opt("diag_reg", "Ridge, relative to the mean kernel diagonal.", INF)
    ] = DEFAULTS["diag_reg"],
    widths: Annotated[
        str, _opt("widths", "Hidden widths of the networks, comma-separated.", FIN)
    ] = ",".join(map(str, DEFAULTS["widths"])),
    seeds: Annotated[int, _opt("seeds", "Networks per width.", FIN)] = DEFAULTS["seeds"],
    steps: Annotated[int, _opt("steps", "Training steps.", FIN)] = DEFAULTS["steps"],
    learning_rate: Annotated[
        str, _opt("learning_rate", 'A number, or "auto": lr-factor * n / lambda_max(NTK).', FIN)
    ] = DEFAULTS["learning_rate"],
    lr_factor: Annotated[
        float, _opt("lr_factor", "Factor of the automatic learning rate (< 2).", FIN)
    ] = DEFAULTS["lr_factor"],
    sgd_batch_size: Annotated[
        int, _opt("sgd_batch_size", "SGD batch size (0: no SGD), at most n-train.", FIN)
    ] = DEFAULTS["sgd_batch_size"],
    dtype: Annotated[str, _opt("dtype", "float32 or float64.", FIN)] = DEFAULTS["dtype"],
    center: Annotated[
        bool,
        typer.Option(
            "--center/--no-center", help="Train f(x) - f(x; theta_0).", rich_help_panel=FIN
        ),
    ] = DEFAULTS["center"],
    linearize: Annotated[
        bool,
        typer.Option(
            "--linearize/--no-linearize",
            help="Also train the linearised networks.",
            rich_help_panel=FIN,
        ),
    ] = DEFAULTS["linearize"],
    findings: Annotated[
        str,
        _opt(
            "findings",
            "Lee 2020 findings, comma-separated: zca, parameterization, large_lr_l2.",
            FIN,
            show_default="none",
        ),
    ] = ",".join(DEFAULTS["findings"]),
    settings: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config key, its value as TOML (n_times=10, 'diag_reg_sweep=[0, 1e-2]'); "
            "repeatable; flags win over it.",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the study in --out, reusing its finished stages.",
            rich_help_panel=RUN,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the results in a non-empty --out.", rich_help_panel=RUN
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or tables.", rich_help_panel=RUN)
    ] = False,
):
    """The finite-versus-infinite-width study of one architecture on one dataset.

    Values come, in increasing priority, from the defaults shown, --config, --set and the
    flags given. The report is written to OUT/index.html.
    """
    from widenets._malloc import tune_for_command
    from widenets.study import StudyError, resolve, run
    from widenets.study.store import OutputNotEmpty

    values = {k: v for k, v in locals().items() if k in FLAGS}
    try:
        cfg = resolve(config, **_overrides(ctx, values, settings))
    except (ValueError, TypeError) as err:
        raise _bad(str(err)) from None
    tune_for_command()
    try:
        run(cfg, out, resume=resume, overwrite=overwrite, quiet=quiet)
    except OutputNotEmpty:
        raise _bad(
            f"output folder {str(out)!r} is not empty; add --resume to continue the study "
            "there, --overwrite to replace its results, or choose another --out."
        ) from None
    except StudyError as err:
        typer.echo(
            f"Error: {_hint(str(err)).rstrip('.')}. The {_kept(out)} finished stages are kept "
            f"in {out / 'stages'}; once the cause is fixed, resume with: {_resume_command(out)}",
            err=True,
        )
        raise typer.Exit(code=1) from None
    except (ValueError, TypeError) as err:  # found before any work: nothing written
        raise _bad(str(err)) from None
    except KeyboardInterrupt:
        kept = _kept(out)
        if kept and (out / "config.toml").is_file():
            report = " and a partial report (index.html)" if (out / "index.html").exists() else ""
            typer.echo(
                f"Interrupted: {kept} finished stages kept in {out / 'stages'}{report}; "
                f"resume with: {_resume_command(out)}",
                err=True,
            )
        else:
            typer.echo("Interrupted before any stage finished: nothing kept to resume.", err=True)
        raise typer.Exit(code=130) from None
    if not quiet:
        typer.echo(f"Report: {out / 'index.html'}")


@app.command()
def kernel(
    ctx: typer.Context,
    arch: Annotated[str, _opt("arch", "Architecture (`widenets info` lists them).", M)] = "fc",
    depth: Annotated[int, _opt("depth", "Hidden layers.", M)] = 2,
    activation: Annotated[str, _opt("activation", _ACTIVATION_HELP, M)] = DEFAULTS["activation"],
    w_std: Annotated[float, _opt("w_std", "Weight standard deviation.", M)] = DEFAULTS["w_std"],
    b_std: Annotated[float, _opt("b_std", "Bias standard deviation.", M)] = DEFAULTS["b_std"],
    data: Annotated[str, _opt("data", "Dataset (`widenets info` lists them).", D)] = "digits",
    n_train: Annotated[int, _opt("n_train", "Training examples.", D)] = 500,
    n_test: Annotated[int, _opt("n_test", "Test examples.", D)] = 100,
    data_seed: Annotated[int, _opt("data_seed", "Seed of the train/test draw.", D)] = DEFAULTS[
        "data_seed"
    ],
    settings: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config key, its value as TOML (e.g. 'data_options={flatten=false}').",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    out: Annotated[Path, typer.Option(help="Output .pt file.", rich_help_panel=RUN)] = Path(
        "kernel.pt"
    ),
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN)
    ] = False,
):
    """Compute the NNGP and NTK (train-train and test-train) of a named architecture on a
    dataset and save them with torch.save (plus the resolved config as JSON beside it)."""
    import json

    import torch

    from widenets._malloc import tune_for_command
    from widenets.study import resolve
    from widenets.study.architectures import build_description
    from widenets.study.run import prepare
    from widenets.study.stages import out_dim
    from widenets.study.store import atomic_torch, atomic_write, check_writable

    values = dict(
        arch=arch, depth=depth, activation=activation, w_std=w_std, b_std=b_std, data=data,
        n_train=n_train, n_test=n_test, data_seed=data_seed,
    )  # fmt: skip
    try:
        cfg = resolve(
            **{"sgd_batch_size": 0, **values, **parse_set(settings), **_given_only(ctx, values)}
        )
        if out.is_dir():
            raise ValueError(
                f"`--out` {str(out)!r} is a directory; give the path of a file to write, "
                f"e.g. {str(out / 'kernel.pt')!r}."
            )
        check_writable(out.parent if str(out.parent) else Path("."))
        ds, _, _ = prepare(cfg)
    except (ValueError, TypeError) as err:
        raise _bad(str(err)) from None
    tune_for_command()
    try:
        net = build_description(cfg, cfg.widths[-1], out_dim(ds))
        k = net.kernel(ds.x_train, progress=not quiet)
        kt = net.kernel(ds.x_test, ds.x_train, progress=not quiet)
    except KeyboardInterrupt:
        typer.echo(f"Interrupted: nothing written to {out}.", err=True)
        raise typer.Exit(code=130) from None
    atomic_torch(
        out,
        {
            "nngp": k.nngp,
            "ntk": k.ntk,
            "nngp_test": kt.nngp,
            "ntk_test": kt.ntk,
            "y_train": ds.y_train,
            "y_test": ds.y_test,
        },
    )
    atomic_write(
        out.with_suffix(".json"),
        json.dumps(
            {"config": cfg.to_dict(), "description": repr(net), "dtype": str(k.nngp.dtype)},
            indent=1,
        ),
    )
    if not quiet:
        typer.echo(
            f"{repr(net)} on {ds.name}: NNGP/NTK {tuple(k.nngp.shape)} and "
            f"{tuple(kt.nngp.shape)} ({torch.float64}) saved to {out}"
        )


#: the config key of each flag of ``prune``
PRUNE_FLAGS = "archs methods densities seeds epochs".split()


def _prune_resume_command(out: Path) -> str:
    return " ".join(
        ["widenets prune --config", shlex.quote(str(out / "config.toml")), "--out"]
        + [shlex.quote(str(out)), "--resume"]
    )


def _prune_hint(message: str) -> str:
    from widenets.prune.study.config import KEYS as PRUNE_KEYS

    message = " ".join(message.split())
    keys = [k for k in dict.fromkeys(re.findall(r"`(\w+)`", message)) if k in PRUNE_KEYS]
    if keys:
        how = [_flag(k) if k in PRUNE_FLAGS else f"--set {k}=..." for k in keys]
        message = message.rstrip(".") + f". Set with {', '.join(how)}."
    return message


@app.command()
def prune(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file of config keys, flat or in tables.", rich_help_panel=RUN),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.", rich_help_panel=RUN)] = Path(
        "runs/prune"
    ),
    archs: Annotated[
        str, typer.Option(help="Networks, comma-separated: lenet_300_100, small_cnn.")
    ] = ",".join(PRUNE["archs"]),
    methods: Annotated[
        str,
        typer.Option(
            help="Methods, comma-separated: random, erk, magnitude, snip, grasp, synflow, "
            "imp, imp_reinit."
        ),
    ] = ",".join(PRUNE["methods"]),
    densities: Annotated[
        str, typer.Option(help="Fractions of weights kept, comma-separated (1 is added).")
    ] = ",".join(f"{d:g}" for d in PRUNE["densities"]),
    seeds: Annotated[int, typer.Option(help="Networks per method and density.")] = PRUNE["seeds"],
    epochs: Annotated[int, typer.Option(help="Training epochs (Adam).")] = PRUNE["epochs"],
    settings: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config key of widenets.prune.study.PruneConfig, its value as TOML "
            "(n_train=2000, kernel_points=8); repeatable; flags win over it.",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --out.", rich_help_panel=RUN),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the results in a non-empty --out.", rich_help_panel=RUN
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or tables.", rich_help_panel=RUN)
    ] = False,
):
    """Pruning at initialisation and lottery tickets on MNIST-5k: test accuracy against
    density for each method, the kernel distance at initialisation beside it, and three
    published findings checked. The report is written to OUT/index.html."""
    import widenets.prune.study as prune_study
    from widenets._malloc import tune_for_command
    from widenets.study import StudyError
    from widenets.study.store import OutputNotEmpty

    values = {k: v for k, v in locals().items() if k in PRUNE_FLAGS}
    given = parse_set(settings)
    given.update({k: v for k, v in values.items() if _given(ctx, k)})
    try:
        cfg = prune_study.resolve(config, **given)
    except (ValueError, TypeError) as err:
        typer.echo(f"Error: {_prune_hint(str(err))}", err=True)
        raise typer.Exit(code=2) from None
    tune_for_command()
    try:
        prune_study.run(cfg, out, resume=resume, overwrite=overwrite, quiet=quiet)
    except OutputNotEmpty:
        raise _bad(
            f"output folder {str(out)!r} is not empty; add --resume to continue the run "
            "there, --overwrite to replace its results, or choose another --out."
        ) from None
    except StudyError as err:
        typer.echo(
            f"Error: {_prune_hint(str(err)).rstrip('.')}. The {_kept(out)} finished stages "
            f"are kept in {out / 'stages'}; once the cause is fixed, resume with: "
            f"{_prune_resume_command(out)}",
            err=True,
        )
        raise typer.Exit(code=1) from None
    except (ValueError, TypeError) as err:
        typer.echo(f"Error: {_prune_hint(str(err))}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        kept = _kept(out)
        if kept and (out / "config.toml").is_file():
            typer.echo(
                f"Interrupted: {kept} finished stages kept in {out / 'stages'}; resume with: "
                f"{_prune_resume_command(out)}",
                err=True,
            )
        else:
            typer.echo("Interrupted before any stage finished: nothing kept to resume.", err=True)
        raise typer.Exit(code=130) from None
    if not quiet:
        typer.echo(f"Report: {out / 'index.html'}")


def _given_only(ctx: typer.Context, values: dict) -> dict:
    """The flags given on the command line: they win over ``--set``."""
    return {k: v for k, v in values.items() if _given(ctx, k)}


SC, SO = "Scaling", "Solver"


def _scale_opt(key: str, help: str, panel: str, **kw):
    return typer.Option("--" + key.replace("_", "-"), help=help, rich_help_panel=panel, **kw)


@app.command()
def scale(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file of config keys.", rich_help_panel=RUN),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.", rich_help_panel=RUN)] = Path(
        "runs/scale"
    ),
    n: Annotated[
        str, _scale_opt("n", "Training-set sizes, comma-separated (nested).", SC)
    ] = ",".join(map(str, SCALE_DEFAULTS["n"])),
    n_test: Annotated[int, _scale_opt("n_test", "Test examples (one fixed set).", SC)] = (
        SCALE_DEFAULTS["n_test"]
    ),
    data_seed: Annotated[
        int, _scale_opt("data_seed", "Seed of mnist1d.data.make_dataset.", SC)
    ] = SCALE_DEFAULTS["data_seed"],
    depth: Annotated[int, _scale_opt("depth", "Hidden layers.", M)] = SCALE_DEFAULTS["depth"],
    activation: Annotated[str, _scale_opt("activation", _ACTIVATION_HELP, M)] = SCALE_DEFAULTS[
        "activation"
    ],
    w_std: Annotated[float, _scale_opt("w_std", "Weight standard deviation.", M)] = (
        SCALE_DEFAULTS["w_std"]
    ),
    b_std: Annotated[float, _scale_opt("b_std", "Bias standard deviation.", M)] = (
        SCALE_DEFAULTS["b_std"]
    ),
    kernels: Annotated[str, _scale_opt("kernels", "nngp, ntk or both, comma-separated.", M)] = (
        ",".join(SCALE_DEFAULTS["kernels"])
    ),
    diag_reg: Annotated[
        float, _scale_opt("diag_reg", "Ridge, relative to the mean kernel diagonal.", SO)
    ] = SCALE_DEFAULTS["diag_reg"],
    dense_max: Annotated[
        int, _scale_opt("dense_max", "Largest N solved by dense Cholesky; PCG above.", SO)
    ] = SCALE_DEFAULTS["dense_max"],
    tol: Annotated[float, _scale_opt("tol", "PCG relative residual.", SO)] = SCALE_DEFAULTS["tol"],
    rank: Annotated[int, _scale_opt("rank", "PCG preconditioner rank.", SO)] = SCALE_DEFAULTS[
        "rank"
    ],
    max_iter: Annotated[int, _scale_opt("max_iter", "Most PCG iterations.", SO)] = (
        SCALE_DEFAULTS["max_iter"]
    ),
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786): tiles run on its workers.",
            rich_help_panel=RUN,
            show_default="this process",
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Folder for zarr kernel stores (resumable tile by tile; seen by every worker).",
            rich_help_panel=RUN,
            show_default="in memory",
        ),
    ] = None,
    settings: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config key, its value as TOML (seed=1); repeatable; flags win over it.",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --out.", rich_help_panel=RUN),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the results in a non-empty --out.", rich_help_panel=RUN
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress.", rich_help_panel=RUN)
    ] = False,
):
    """Kernel regression at growing N on MNIST-1D (NNGP and NTK of a fully-connected network):
    test error and MSE against N with fitted power laws, time and memory per N.

    Values come, in increasing priority, from the defaults shown, --config, --set and the
    flags given. The report is written to OUT/index.html.
    """
    from widenets._malloc import tune_for_command
    from widenets.scale import KEYS as SCALE_KEYS
    from widenets.scale import ScaleError, resolve
    from widenets.scale import run as run_scale
    from widenets.scale.report import resume_command
    from widenets.study.store import OutputNotEmpty

    flags = "n n_test data_seed depth activation w_std b_std kernels diag_reg dense_max tol "
    flags = (flags + "rank max_iter").split()
    values = {k: v for k, v in locals().items() if k in flags}

    def bad(message: str) -> typer.Exit:
        message = " ".join(message.split())
        keys = [k for k in dict.fromkeys(re.findall(r"`(\w+)`", message)) if k in SCALE_KEYS]
        if keys:
            how = [_flag(k) if k in flags else f"--set {k}=..." for k in keys]
            message = message.rstrip(".") + f". Set with {', '.join(how)}."
        typer.echo(f"Error: {message}", err=True)
        return typer.Exit(code=2)

    again = resume_command(out, store, scheduler)
    try:
        given = parse_set(settings)
        given.update({k: v for k, v in values.items() if _given(ctx, k)})
        cfg = resolve(config, **given)
    except (ValueError, TypeError) as err:
        raise bad(str(err)) from None
    tune_for_command()
    try:
        run_scale(
            cfg,
            out,
            scheduler=scheduler,
            store=store,
            resume=resume,
            overwrite=overwrite,
            quiet=quiet,
        )
    except OutputNotEmpty:
        raise bad(
            f"output folder {str(out)!r} is not empty; add --resume to continue the run "
            "there, --overwrite to replace its results, or choose another --out."
        ) from None
    except ScaleError as err:
        typer.echo(
            f"Error: {bad_text(str(err))}. The {_kept(out)} finished stages are kept in "
            f"{out / 'stages'}; once the cause is fixed, resume with: {again}",
            err=True,
        )
        raise typer.Exit(code=1) from None
    except (ValueError, TypeError) as err:  # found before any work
        raise bad(str(err)) from None
    except KeyboardInterrupt:
        kept = _kept(out)
        if kept and (out / "config.toml").is_file():
            typer.echo(
                f"Interrupted: {kept} finished stages kept in {out / 'stages'}"
                + (" (and the kernel tiles in the store)" if store else "")
                + f"; resume with: {again}",
                err=True,
            )
        else:
            typer.echo("Interrupted before any stage finished: nothing kept to resume.", err=True)
        raise typer.Exit(code=130) from None
    if not quiet:
        typer.echo(f"Report: {out / 'index.html'}")


def bad_text(message: str) -> str:
    return " ".join(message.split()).rstrip(".")


@app.command()
def info():
    """Versions, threads, device and what the study can run."""
    from rich.console import Console
    from rich.table import Table

    import widenets as wn
    from widenets.study.run import versions

    table = Table(title="widenets")
    table.add_column("item")
    table.add_column("value")
    for k, v in versions().items():
        table.add_row(k, str(v))
    import torch

    table.add_row("torch interop threads", str(torch.get_num_interop_threads()))
    table.add_row("cuda", str(torch.cuda.is_available()))
    table.add_row("device", "cuda" if torch.cuda.is_available() else "cpu")
    table.add_row("architectures", ", ".join(wn.study.available_architectures()))
    table.add_row("datasets", ", ".join(wn.data.available()))
    Console().print(table)


if __name__ == "__main__":
    app()
