"""The ``widenets`` command: ``study``, ``kernel`` and ``info``.

widenets study                                   # the embedded default
widenets study --config my_study.toml --out runs/fc-mnist
widenets study --arch fc --data digits --n-train 1000 --n-test 500 --seeds 4
widenets kernel --arch fc --data digits --out k.pt
widenets info
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="widenets: neural networks at infinite and finite width.",
    no_args_is_help=True,
    add_completion=False,
)


def _bad(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code=2)


@app.command()
def study(
    config: Annotated[
        Path | None, typer.Option(help="TOML file of config keys (command-line options win).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/study"),
    arch: Annotated[str | None, typer.Option(help="Architecture name.")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name (wn.data.available()).")] = None,
    widths: Annotated[str | None, typer.Option(help="Hidden widths, e.g. 64,256,1024.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Networks per width.")] = None,
    depth: Annotated[int | None, typer.Option(help="Hidden layers.")] = None,
    n_train: Annotated[int | None, typer.Option(help="Training examples.")] = None,
    n_test: Annotated[int | None, typer.Option(help="Test examples.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip the stages already finished in --out.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables.")] = False,
):
    """The finite-versus-infinite-width study of one architecture on one dataset."""
    from widenets.study import StudyError, resolve, run
    from widenets.study.config import parse_widths
    from widenets.study.store import check_writable

    try:
        overrides = dict(
            arch=arch,
            data=data,
            seeds=seeds,
            depth=depth,
            n_train=n_train,
            n_test=n_test,
            steps=steps,
            widths=None if widths is None else parse_widths(widths),
        )
        cfg = resolve(config, **overrides)
        check_writable(out)
    except (ValueError, TypeError) as err:
        raise _bad(str(err)) from None
    try:
        run(cfg, out, resume=resume, quiet=quiet)
    except StudyError as err:
        typer.echo(
            f"Error: {err}. Finished stages are in {out}/stages; rerun with --resume.", err=True
        )
        raise typer.Exit(code=1) from None
    except ValueError as err:
        raise _bad(str(err)) from None
    if not quiet:
        typer.echo(f"Report: {out / 'index.html'}")


@app.command()
def kernel(
    arch: Annotated[str, typer.Option(help="Architecture name.")] = "fc",
    data: Annotated[str, typer.Option(help="Dataset name.")] = "digits",
    n_train: Annotated[int, typer.Option(help="Training examples.")] = 500,
    n_test: Annotated[int, typer.Option(help="Test examples.")] = 100,
    depth: Annotated[int, typer.Option(help="Hidden layers.")] = 2,
    out: Annotated[Path, typer.Option(help="Output .pt file.")] = Path("kernel.pt"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
):
    """Compute the NNGP and NTK (train-train and test-train) of a named architecture on a
    dataset and save them with torch.save (plus the resolved config as JSON beside it)."""
    import json

    import torch

    from widenets.study import resolve
    from widenets.study.architectures import build_description
    from widenets.study.stages import data_and_targets, out_dim
    from widenets.study.store import atomic_torch, atomic_write, check_writable

    try:
        cfg = resolve(
            arch=arch, data=data, n_train=n_train, n_test=n_test, depth=depth, sgd_batch_size=0
        )
        if out.is_dir():
            raise ValueError(
                f"`--out` {str(out)!r} is a directory; give the path of a file to write, "
                f"e.g. {str(out / 'kernel.pt')!r}."
            )
        check_writable(out.parent if str(out.parent) else Path("."))
    except (ValueError, TypeError) as err:
        raise _bad(str(err)) from None
    ds, _, _ = data_and_targets(cfg)
    net = build_description(cfg, cfg.widths[-1], out_dim(ds))
    k = net.kernel(ds.x_train, progress=not quiet)
    kt = net.kernel(ds.x_test, ds.x_train, progress=not quiet)
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
