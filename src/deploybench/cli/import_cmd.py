"""`deploybench import OTHER_WORKSPACE`: merge variants, measurements, paired speed-ups and search summaries made
elsewhere (see `deploybench.store.importer`)."""

from __future__ import annotations

import sys

from deploybench.cli.common import ArgumentParser, add_common, open_workspace, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="deploybench import",
        description="Merge the variants, measurements, paired speed-ups and search summaries of another "
        "workspace into this one (a pair or summary here is replaced only by a later one). Every "
        "artifact is checked against its recorded sha256; imported torch.export programs "
        "stay unsealed (they load with --trust-artifacts only).",
    )
    add_common(p)
    p.add_argument("other", metavar="OTHER_WORKSPACE", help="the workspace folder to import from")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def merge() -> int:
        from deploybench.store.importer import import_workspace

        ws = open_workspace(args)
        s = import_workspace(ws, args.other)
        print(
            f"imported {len(s.variants)} variant(s), {s.measurements} measurement(s), {s.pairs} paired speed-up(s) "
            f"and {s.summaries} search summary(ies) into {ws.root} ({s.variants_present}, {s.measurements_present}, "
            f"{s.pairs_present} and {s.summaries_present} were here already or newer)"
        )
        return 0

    return run(merge)


if __name__ == "__main__":
    sys.exit(main())
