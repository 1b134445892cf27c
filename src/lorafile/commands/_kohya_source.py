"""The two options that locate a kohya config's companion files, shared by import and migrate."""

from __future__ import annotations


def add_kohya_source_options(parser) -> None:
    parser.add_argument(
        "--dataset-config",
        metavar="D.toml",
        help="kohya source: the --dataset_config TOML (default: the config's own)",
    )
    parser.add_argument(
        "--sample-prompts",
        metavar="P.txt",
        help="kohya source: the sample prompts file, when the config's path is elsewhere",
    )


def kohya_source_options(args) -> dict[str, str]:
    """The reader options given on the command line (kohya's `read(..., **options)`)."""
    options = {}
    if args.dataset_config:
        options["dataset_config"] = args.dataset_config
    if args.sample_prompts:
        options["sample_prompts"] = args.sample_prompts
    return options
