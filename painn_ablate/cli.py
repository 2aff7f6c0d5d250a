"""`painn-ablate`: the command line. The only module that prints.

Bad input (config, data, sweep file, run directory) prints one line
`painn-ablate: error: ...` and exits with code 2; an exploded run is a result
and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from painn_ablate.config import ConfigError
    from painn_ablate.data import DataError
    from painn_ablate.train import RunDirError

    types = [InputError, ConfigError, DataError, RunDirError]
    try:
        from painn_ablate.sweep import SweepError

        types.append(SweepError)
    except ImportError:
        pass
    return tuple(types)


# ----------------------------------------------------------------------------- train


def describe(summary: dict) -> str:
    """The one-paragraph summary printed at the end of a run."""
    s = summary
    lines = [f"{s['name']}: {s['status']} after {s['steps_completed']}/{s['steps_total']} steps "
             f"in {s['wall_seconds']:.1f} s ({s['ms_per_step'] or float('nan'):.1f} ms/step, preset {s['preset']}, seed {s['seed']})."]
    if s["first_nonfinite"]:
        f = s["first_nonfinite"]
        lines.append(f"First non-finite value at step {f['step']}: {f['phase']} pass, layer {f['layer']}, "
                     f"block {f['block']}, tensor {f['tensor']} ({s['nonfinite_events']} event(s)).")
    stats = s.get("last_finite_stats")
    if stats and stats["mu_norm_max"]:
        mu = ", ".join(f"L{l} {v:.3g}" for l, v in sorted(stats["mu_norm_max"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"Max ||mu|| per layer at step {stats['step']} (last finite statistics): {mu}.")
    if s.get("early_warning"):
        w = s["early_warning"]
        lines.append(f"Early warning fired at step {w['step']} (risk {w['risk']:.3g}).")
    if s["val"]:
        lines.append(f"Best validation at step {s['best_step']}: pos MSE {s['val']['pos_mse']:.4g}, "
                     f"vel MSE {s['val']['vel_mse']:.4g}.")
    if s["test"]:
        lines.append(f"Test at that step: pos MSE {s['test']['pos_mse']:.4g}, vel MSE {s['test']['vel_mse']:.4g}.")
    lines.append(f"Records in {s['run_dir']}.")
    return " ".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from painn_ablate.config import compose
    from painn_ablate.train import run

    cfg = compose(args.overrides, base=args.config)
    summary = run(cfg)
    print(describe(summary))
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="painn-ablate", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configuration",
                       description="Train one configuration: painn-ablate train model=r2_full train.lr=3e-3 seed=1")
    p.add_argument("--config", help="a saved config.yaml to start from (re-run a run)")
    p.add_argument("overrides", nargs="*", help="key=value overrides; model=<preset> selects a preset")
    p.set_defaults(func=cmd_train)

    try:
        from painn_ablate import sweep_cli

        sweep_cli.add_commands(sub)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except _bad_input_types() as exc:
        print(f"painn-ablate: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("painn-ablate: interrupted; records up to now are in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
