"""fsad register: adapt a training run's weights to a category and register fsad-<category>."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, runtime_settings, schema_default
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "register fsad-CATEGORY: a training run's weights + the category's K-shot dictionary"
RENAMED = {"--category": "--target"}  # the old spelling, for one release


def add_arguments(p):
    p.add_argument("--run", dest="run_id", required=True, metavar="RUN_ID", help="training run id (logged by fsad train)")
    p.add_argument("--target", required=True, metavar="CAT", help="category the registered model scores")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--support", metavar="DIR", help="folder of K normal support images")
    source.add_argument("--draw", type=int, metavar="N", help="support draw N of the evaluation protocol")
    p.add_argument("--shots", type=int, default=None,
                   help=f"K for --draw (default eval.shots = {schema_default('eval.shots')})")
    p.add_argument("--data", default=None, help="data root (default: the training run's); metrics use its test set")
    p.add_argument("--fpr", type=float, default=None,
                   help="target false-alarm rate of the version's threshold, calibrated on the K shots alone, "
                        f"in (0, 0.5] (default eval.fpr = {schema_default('eval.fpr')})")
    add_config_arguments(p, runtime_only=True)
    add_tracking_arguments(p, optional=False)


def run(args) -> int:
    from model.calibration import check_fpr
    from orchestrator.tracking.registry import register_from_run

    if args.fpr is not None:
        check_fpr(args.fpr)
    result = register_from_run(tracking_uri(args, required=True), args.run_id, args.target, args.support,
                               args.draw, args.shots, args.data, fpr=args.fpr, settings=runtime_settings(args, 'register'))
    print(result.line())
    return 0
