"""The ``xrecon`` command line: ``fill``, ``evaluate``, ``train``, ``demo``.

Examples
--------
::

    xrecon fill IN.zarr OUT.zarr --method whittaker --query-times 2019-01-01/2019-12-31/5D
    xrecon fill IN.zarr OUT.zarr --method harmonic --option order=3 --option trend=true
    xrecon fill IN.zarr OUT/ --format cog --query-times 2019-01-01/2019-12-31/10D
    xrecon evaluate IN.zarr --methods linear,whittaker --holdout 0.2 --by-gap
    xrecon evaluate IN.zarr --methods linear,neighbors --gaps clouds --by-gap-size --mask clear
    xrecon evaluate IN.zarr --methods linear,neighbors,anytimeformer --gaps clouds --holdout 0.1 --train-budget 5min
    xrecon ensemble IN.zarr ens.xrecon --methods linear,neighbors,anytimeformer --train-budget 5min
    xrecon fill IN.zarr OUT.zarr --method ensemble --checkpoint ens.xrecon --option interval=0.9
    xrecon train IN.zarr model.xrecon --preset small --time-budget 10min --mask clear
    xrecon demo --out xrecon-demo
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

from xrecon._version import __version__
from xrecon.errors import XreconError

__all__ = ["main"]


def _parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with value read as a Python literal when it is one (3, 0.5, true, [1, 2])."""
    if "=" not in text:
        raise XreconError(f"--option {text!r}: expected KEY=VALUE, e.g. --option order=3")
    key, raw = text.split("=", 1)
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return key.strip(), raw.strip()


def _parse_chunks(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    chunks = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size.strip().lstrip("-").isdigit():
            raise XreconError(f"--chunks {text!r}: expected DIM=SIZE pairs, e.g. y=512,x=512")
        chunks[name.strip()] = int(size)
    return chunks


def _mask(args: argparse.Namespace) -> Any:
    """``--mask NAME``, ``--no-mask`` (False) or neither ("auto": the cube's own mask)."""
    return False if args.no_mask else ("auto" if args.mask is None else args.mask)


def _check_path(flag: str, value: str) -> None:
    if not value or not value.strip():
        raise XreconError(f"{flag} is empty; expected a path")


_SCHEDULERS = ("threads", "threading", "processes", "multiprocessing", "synchronous", "sync", "single-threaded")


def _cmd_fill(args: argparse.Namespace) -> int:
    import dask

    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.io import open_cube, write_cog, write_zarr

    _check_path("INPUT", args.input)
    _check_path("OUTPUT", args.output)
    if args.scheduler is not None and args.scheduler not in _SCHEDULERS:
        raise XreconError(f"--scheduler {args.scheduler!r}: expected one of threads, processes, synchronous")
    if args.workers is not None and args.workers < 1:
        raise XreconError(f"--workers {args.workers}: expected a positive number of dask workers")
    if args.batch_size is not None and args.batch_size < 1:
        raise XreconError(f"--batch-size {args.batch_size}: expected a positive number of pixels")
    ds = open_cube(args.input, chunks=_parse_chunks(args.chunks))
    options = dict(_parse_option(o) for o in args.option)
    out = ds.recon.fill(
        args.query_times,
        method=args.method,
        checkpoint=args.checkpoint,
        optical=args.optical,
        sar=args.sar,
        mask=_mask(args),
        keep_observed=not args.no_keep_observed,
        edges=args.edges,
        batch_size=args.batch_size,
        device=args.device,
        gap_days=args.gap_days,
        max_query_times=args.max_query_times,
        **options,
    )
    scheduler = {"scheduler": args.scheduler} if args.scheduler else {}
    if args.workers:
        scheduler["num_workers"] = args.workers
    with dask.config.set(**scheduler):
        if args.format == "cog":
            target = write_cog(out, args.output, overwrite=args.overwrite, resume=args.resume,
                               progress=not args.quiet, source=args.input)
        else:
            target = write_zarr(out, args.output, overwrite=args.overwrite, resume=args.resume,
                                progress=not args.quiet, source=args.input)
    what = "Cloud-Optimized GeoTIFFs in " if args.format == "cog" else ""
    print(f"wrote {what}{target}: {dict(out.sizes)} with method={args.method}")
    return 0


def _checkpoints(values: Sequence[str]) -> Any:
    """``--checkpoint PATH`` (every network) or ``--checkpoint METHOD=PATH`` (repeatable) -> evaluate's checkpoint=."""
    if not values:
        return None
    named = [v for v in values if "=" in v]
    if not named and len(values) == 1:
        return values[0]
    if len(named) != len(values):
        raise XreconError(f"--checkpoint {values!r}: give one PATH for every network, or METHOD=PATH for each")
    return dict(v.split("=", 1) for v in values)


def _train_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--train-budget`` and ``--train-option KEY=VALUE``: the train() keywords of evaluate/ensemble's networks."""
    options = dict(_parse_option(o) for o in args.train_option)
    if args.train_budget is not None:
        options["time_budget"] = args.train_budget
    return options or None


def _interval(text: str | None) -> Any:
    if text is None:
        return None
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise XreconError(f"--interval {text!r}: expected levels such as 0.9 or 0.5,0.9,0.95") from None
    return levels[0] if len(levels) == 1 else levels


def _member_options(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--member-option METHOD:KEY=VALUE`` (repeatable) -> {method: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for v in values:
        method, sep, rest = v.partition(":")
        if not sep:
            raise XreconError(f"--member-option {v!r}: expected METHOD:KEY=VALUE, e.g. restore-dit:n_samples=8")
        key, value = _parse_option(rest)
        out.setdefault(method.strip(), {})[key] = value
    return out


def _cmd_ensemble(args: argparse.Namespace) -> int:
    import pandas as pd

    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.ensemble import load_ensemble
    from xrecon.io import open_cube

    _check_path("INPUT", args.input)
    _check_path("OUTPUT", args.output)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ds = open_cube(args.input, chunks=_parse_chunks(args.chunks))
    checkpoints = _checkpoints(args.checkpoint)
    if isinstance(checkpoints, str):
        raise XreconError("--checkpoint: name the member, METHOD=PATH")
    path = ds.recon.fit_ensemble(
        methods, out=args.output, gaps=args.gaps, holdout=args.holdout, seed=args.seed, train=_train_options(args),
        checkpoints=checkpoints, options=_member_options(args.member_option), optical=args.optical, sar=args.sar,
        mask=_mask(args), strict=args.strict, overwrite=args.overwrite, progress=not args.quiet,
        batch_size=args.batch_size, device=args.device, gate=not args.no_gate,
    )
    ens = load_ensemble(path)
    scores = ens.scores()
    band = "all" if (scores["band"] == "all").any() else scores["band"].iloc[0]
    overall = scores[(scores["band"] == band) & (scores["gap_class"] == "all")]
    coverage = ens.coverage()
    coverage = coverage[(coverage["band"] == band) & coverage["level"].isin([0.5, 0.9, 0.95])]
    with pd.option_context("display.width", 160):
        print(overall[["method", "n", "rmse", "mae"]].round(5).to_string(index=False))
        print(coverage[["level", "coverage", "width"]].round(4).to_string(index=False))
    dates = ens.scores(split="dates")
    if not dates.empty:  # the same fit with halves of the dates: what carries over to dates it never saw
        rmse = dates.set_index("method")["rmse"]
        best = rmse.drop("ensemble").idxmin()
        print(f"dates check (fitted on every other hidden date, scored on the rest and back): ensemble "
              f"{rmse['ensemble']:.4f}, best member {best} {rmse[best]:.4f}")
    print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.io import open_cube

    _check_path("INPUT", args.input)
    if not 0 < args.holdout < 1:
        raise XreconError(f"--holdout {args.holdout}: expected a fraction strictly between 0 and 1, e.g. 0.2")
    if not [m for m in args.methods.split(",") if m.strip()]:
        raise XreconError(f"--methods {args.methods!r}: expected comma-separated method names, e.g. linear,whittaker")
    for flag, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path is not None:
            _check_path(flag, path)
    ds = open_cube(args.input, chunks=_parse_chunks(args.chunks))
    table = ds.recon.evaluate(
        [m.strip() for m in args.methods.split(",") if m.strip()],
        holdout=args.holdout,
        seed=args.seed,
        checkpoint=_checkpoints(args.checkpoint),
        train=_train_options(args),
        train_dir=args.train_dir,
        strict=args.strict,
        interval=_interval(args.interval),
        optical=args.optical,
        sar=args.sar,
        mask=_mask(args),
        by_gap=args.by_gap,
        gaps=args.gaps,
        by_gap_size=args.by_gap_size,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(table.round(5).to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.plot:
        from xrecon.evaluate import plot_evaluation

        plot_evaluation(table, path=args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.io import open_cube
    from xrecon.training.trainer import training_files

    _check_path("INPUT", args.input)
    _check_path("OUTPUT", args.output)
    if args.threads is not None and args.threads < 1:
        raise XreconError(f"--threads {args.threads}: expected a positive number of torch threads, e.g. --threads 1")
    ds = open_cube(args.input, chunks=_parse_chunks(args.chunks))
    options = dict(_parse_option(o) for o in args.option)
    best = ds.recon.train(
        method=args.method,
        out=args.output,
        preset=args.preset,
        steps=args.steps,
        time_budget=args.time_budget,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        validation_fraction=args.validation_fraction,
        init=args.init,
        optical=args.optical,
        sar=None if args.no_sar else args.sar,
        mask=_mask(args),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **options,
    )
    _, last, log = training_files(best)
    print(f"wrote {best} (best), {last} (last, resumable) and {log}")
    return 0


def _preset_help() -> str:
    """``--preset``'s help: the presets of every trainable method's task (``TrainingTask.presets()``)."""
    import xrecon.methods

    parts = []
    for name in xrecon.methods.trainable_methods():
        task = xrecon.methods.get(name).training_task()()
        listed = "; ".join(f"{p} ({d})" for p, d in task.presets().items())
        if listed:
            parts.append(f"{name}: {listed}; default {task.default_preset}")
    return "architecture preset, the same name as train(preset=...) in Python. " + ". ".join(parts)


class _Help(argparse.HelpFormatter):
    """``--help`` shows each option's default, where it has one worth saying (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" not in text and action.option_strings and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS and not isinstance(action.default, list)):
            text += " (default: %(default)s)"
        return text


class _TrainHelp(_Help):
    """``xrecon train --help``: the presets are listed only when the help is shown (they import torch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return _preset_help() if action.dest == "preset" else super()._get_help_string(action)


def _cmd_check(args: argparse.Namespace) -> int:
    import xrecon  # noqa: F401  (registers the accessor)
    from xrecon.io import open_cube

    _check_path("INPUT", args.input)
    ds = open_cube(args.input, chunks=_parse_chunks(args.chunks))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    report = ds.recon.check(args.query_times, methods=methods, optical=args.optical, sar=args.sar, mask=_mask(args),
                            strict=args.strict)
    print(report)
    return 0 if report.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from xrecon.demo import run_demo

    run_demo(args.out, size=args.size, progress=not args.quiet)
    return 0


def _add_cube_arguments(p: argparse.ArgumentParser, *, chunks_example: str = "y=512,x=512") -> None:
    """Input cube and variable names: the same for every command that reads a cube."""
    p.add_argument("--optical", default="optical", help="optical variable name")
    p.add_argument("--sar", default="sar", help="SAR variable name (may be absent)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mask", default=None,
                       help="bool clear-mask variable name (True = clear); default: the cube's own mask (recorded "
                            "by from_bands, or a variable named clear), if it has one")
    group.add_argument("--no-mask", action="store_true",
                       help="use no clear mask even if the cube has one (clear = all bands finite)")
    p.add_argument("--chunks", default=None, help=f"spatial chunks for reading, e.g. {chunks_example}")


def _add_training_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """--train-budget, --train-option and --strict: training on the held cube, and the leak check."""
    p.add_argument("--train-budget", default=None, metavar="DURATION",
                   help=f"train the {what} on the cube without the hidden observations, for about this long "
                        "each (e.g. 5min); nothing is trained without it or --train-option")
    p.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a train() keyword for those networks, e.g. preset=small, threads=1 (repeatable)")
    p.add_argument("--strict", action="store_true",
                   help="a checkpoint that trained on hidden observations is an error, not a warning")


def build_parser() -> argparse.ArgumentParser:
    from xrecon.methods import list_methods, trainable_methods

    parser = argparse.ArgumentParser(prog="xrecon", description="Gap-free satellite image time series.")
    parser.add_argument("--version", action="version", version=f"xrecon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fill", help="reconstruct a cube at query times and write Zarr or COGs", formatter_class=_Help)
    f.add_argument("input", help="input cube: Zarr store or netCDF file")
    f.add_argument("output", help="output Zarr store (refused if it exists, unless --overwrite), or with --format "
                   "cog a folder for the GeoTIFFs")
    f.add_argument("--format", default="zarr", choices=["zarr", "cog"],
                   help="zarr: one store; cog: one Cloud-Optimized GeoTIFF per variable and query time, "
                        "VARIABLE_YYYY-MM-DD.tif")
    f.add_argument("--method", default="linear", help=f"one of: {', '.join(list_methods())}")
    f.add_argument(
        "--query-times",
        default=None,
        help="START/END/FREQ (e.g. 2019-01-01/2019-12-31/5D), a frequency spanning the optical times "
        "(e.g. 5D), or omitted for the optical times",
    )
    f.add_argument("--max-query-times", type=int, default=100_000,
                   help="refuse query times that give more dates than this (default 100000)")
    f.add_argument("--checkpoint", default=None, help="model checkpoint, for the neural methods")
    _add_cube_arguments(f)
    f.add_argument("--edges", default="hold", choices=["hold", "nan"], help="before first / after last clear obs")
    f.add_argument("--no-keep-observed", action="store_true", help="do not pass clear observations through")
    f.add_argument("--gap-days", action="store_true", help="also write gap_days: days to the nearest clear obs")
    f.add_argument("--option", action="append", default=[], help="method option KEY=VALUE (repeatable)")
    f.add_argument("--batch-size", type=int, default=None, help="pixels per batch (networks)")
    f.add_argument("--device", default=None, help="torch device (networks); default cuda if available")
    f.add_argument("--scheduler", default=None, help="dask scheduler: threads | processes | synchronous")
    f.add_argument("--workers", type=int, default=None, help="dask workers")
    f.add_argument("--overwrite", action="store_true", help="replace OUTPUT once the new one is complete")
    f.add_argument("--resume", action="store_true",
                   help="continue an interrupted write of the same computation, writing only missing chunks")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fill)

    e = sub.add_parser("evaluate", help="hide clear observations, reconstruct them, print MAE/RMSE/R2",
                       formatter_class=_Help)
    e.add_argument("input", help="input cube: Zarr store or netCDF file")
    e.add_argument("--methods", default="linear,harmonic,whittaker",
                   help=f"comma-separated method names, of: {', '.join(list_methods())}")
    e.add_argument("--holdout", type=float, default=0.2, help="share of clear observations hidden")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--checkpoint", action="append", default=[], metavar="[METHOD=]PATH",
                   help="checkpoint of the networks (PATH) or of one method (METHOD=PATH, repeatable); a checkpoint "
                        "trained on hidden observations is warned about (an error with --strict)")
    _add_training_arguments(e, "networks listed without a checkpoint (and an ensemble)")
    e.add_argument("--train-dir", default=None, help="keep what is trained here (default: a temporary folder)")
    e.add_argument("--interval", default=None, metavar="LEVELS",
                   help="also score the intervals of methods that give them (ensemble): e.g. 0.9 or 0.5,0.9,0.95")
    _add_cube_arguments(e)
    e.add_argument("--by-gap", action="store_true", help="also score by gap length")
    e.add_argument("--gaps", default="pixels",
                   help="shape of what is hidden: pixels (single pixel-dates, the default) | clouds (real cloud "
                        "shapes from the cube's own masks, recommended) | N (N x N pixel blocks)")
    e.add_argument("--by-gap-size", action="store_true",
                   help="also score by gap size (distance in pixels to the nearest clear pixel of the date)")
    e.add_argument("--csv", default=None, help="also write the table to this CSV file")
    e.add_argument("--plot", default=None, help="also plot RMSE per band (and by gap) to this image file")
    e.add_argument("--batch-size", type=int, default=None, help="pixels per batch (networks)")
    e.add_argument("--device", default=None, help="torch device (networks); default cuda if available")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)

    n = sub.add_parser("ensemble", help="fit a gap-aware blend of methods, with calibrated intervals",
                       formatter_class=_Help)
    n.add_argument("input", help="input cube: Zarr store or netCDF file")
    n.add_argument("output", help="ensemble file to write (networks it trains go to OUTPUT's stem + .members/)")
    n.add_argument("--methods", required=True, help=f"comma-separated members, of: {', '.join(list_methods())}")
    n.add_argument("--gaps", default="clouds", help="shape of what is hidden: clouds | pixels | N")
    n.add_argument("--holdout", type=float, default=0.1, help="share of clear observations hidden")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=PATH",
                   help="a member network already trained (repeatable)")
    _add_training_arguments(n, "member networks without a checkpoint")
    n.add_argument("--member-option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a member's fill option, e.g. restore-dit:n_samples=8 (repeatable)")
    n.add_argument("--no-gate", action="store_true",
                   help="weights per gap class only (default: moved per value by gap size, gap days, the members' "
                        "disagreement and RESTORE-DiT's spread)")
    _add_cube_arguments(n)
    n.add_argument("--batch-size", type=int, default=None, help="pixels per batch (networks)")
    n.add_argument("--device", default=None, help="torch device (networks); default cuda if available")
    n.add_argument("--overwrite", action="store_true", help="replace OUTPUT and the networks it trained")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=_cmd_ensemble)

    t = sub.add_parser("train", help="train a network on a cube (self-supervised), write a checkpoint",
                       formatter_class=_TrainHelp)
    t.add_argument("input", help="input cube: Zarr store or netCDF file")
    t.add_argument("output", help="best checkpoint; the last one and a CSV log are written beside it")
    t.add_argument("--method", default="anytimeformer", help=f"network to train: {', '.join(trainable_methods())}")
    t.add_argument("--preset", default=None, help="architecture preset (listed by --help)")
    t.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="train for about this long: seconds or e.g. 90s, 10min, 1h; the number of steps is fixed "
                   "from the measured step rate so that the learning-rate schedule completes")
    t.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default 2000); with --time-budget, at most this many")
    t.add_argument("--batch-size", type=int, default=None,
                   help="samples per step (default: the method's; anytimeformer 256 pixel-years, restore-dit 8 "
                        "windows)")
    t.add_argument("--seed", type=int, default=None, help="seed of hold-out, data order, gaps, weights")
    t.add_argument("--device", default=None, help="torch device; default cuda if available")
    t.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads on the CPU (torch.set_num_threads); default: half the usable CPUs "
                        "(OMP_NUM_THREADS if set), fastest on a shared machine")
    t.add_argument("--validation-fraction", type=float, default=None, help="share of spatial blocks held out")
    t.add_argument("--init", default=None, help="fine-tune from this xrecon checkpoint")
    _add_cube_arguments(t, chunks_example="y=256,x=256")
    t.add_argument("--no-sar", action="store_true", help="ignore SAR: train an optical-only network")
    t.add_argument("--option", action="append", default=[],
                   help="training or architecture option KEY=VALUE, e.g. lr=5e-4, ema=0.999, d_model=64 "
                        "(repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again over files of an earlier run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("check", help="report what would make a reconstruction wrong or slow, before running it",
                       formatter_class=_Help)
    c.add_argument("input", help="input cube: Zarr store or netCDF file")
    c.add_argument("--query-times", default=None, help="as for fill: SAR coverage is judged around them")
    c.add_argument("--methods", default="linear,harmonic,whittaker", help="methods whose needs are checked")
    _add_cube_arguments(c)
    c.add_argument("--strict", action="store_true", help="exit with an error on any warning")
    c.set_defaults(func=_cmd_check)

    d = sub.add_parser("demo", help="fill a synthetic cube, write Zarr and a figure", formatter_class=_Help)
    d.add_argument("--out", default="xrecon-demo", help="output folder")
    d.add_argument("--size", type=int, default=128, help="cube width and height in pixels")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrecon`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except XreconError as err:
        print(f"xrecon: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a parent that is a file, a full disk...
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"xrecon: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The message on one line, with CLI flags rather than Python keywords."""
    text = " ".join(str(err).split())
    for keyword, flag in (("overwrite=True", "--overwrite"), ("resume=True", "--resume"), ("mask=False", "--no-mask"),
                          ("max_query_times=", "--max-query-times ")):
        text = text.replace(keyword, flag)
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
