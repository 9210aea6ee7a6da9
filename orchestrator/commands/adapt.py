"""fsad adapt: K images of a new category -> its dictionary -> registered fsad-NAME, in one call."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, runtime_settings, schema_default
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "adapt a model to a new category from K normal images and register fsad-NAME"


def add_arguments(p):
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a model directory")
    p.add_argument("--support", required=True, metavar="DIR", help="folder of K normal images of the new category")
    p.add_argument("--name", required=True, help="the new category (registered as fsad-NAME)")
    p.add_argument("--data", default=None, help="data root holding NAME's test set, to measure the new version")
    p.add_argument("--fpr", type=float, default=None,
                   help="target false-alarm rate of the version's threshold, calibrated on the K shots alone, "
                        f"in (0, 0.5] (default eval.fpr = {schema_default('eval.fpr')})")
    add_config_arguments(p, runtime_only=True)
    add_tracking_arguments(p, optional=False)


def run(args) -> int:
    from model.calibration import check_fpr
    from orchestrator.tracking.registry import adapt_and_register

    if args.fpr is not None:
        check_fpr(args.fpr)
    result = adapt_and_register(tracking_uri(args, required=True), args.model, args.support, args.name, args.data,
                                fpr=args.fpr, settings=runtime_settings(args, 'adapt'))
    print(result.line())
    return 0
