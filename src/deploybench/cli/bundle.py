"""`deploybench bundle VARIANT --out DIR`: a variant as a folder to deploy (see `deploybench.bundle`)."""

from __future__ import annotations

import sys

from deploybench.cli.common import ArgumentParser, add_common, open_workspace, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="deploybench bundle",
        description="Write a variant's model, config.json, model card, predict.py and requirements.txt "
        "to a new folder.",
    )
    add_common(p)
    p.add_argument("variant", help="variant id or unique prefix")
    p.add_argument("--out", required=True, help="the bundle folder to make (new, or an empty folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def bundle() -> int:
        from deploybench.bundle import build_bundle
        from deploybench.bundle.build import check_out_dir

        check_out_dir(args.out)  # before the workspace logs the command
        print(build_bundle(open_workspace(args, record=False), args.variant, args.out, data_dir=args.data_dir))
        return 0

    return run(bundle)


if __name__ == "__main__":
    sys.exit(main())
