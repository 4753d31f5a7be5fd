"""`deploybench app`: serve the read-only Gradio app over a workspace (`deploybench.app.launch`)."""

from __future__ import annotations

from pathlib import Path

from deploybench.cli.common import ArgumentParser, add_common, open_workspace, run
from deploybench.errors import UserError
from deploybench.store import default_workspace


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="deploybench app",
        description=(
            "A web app over the workspace, read-only: predict with up to four variants side by side, explore the "
            "Pareto front and each variant's card, see training curves. New measurements appear without a restart."
        ),
    )
    add_common(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        root = args.workspace or default_workspace()
        if not (Path(root) / "deploybench.db").is_file():
            raise UserError(f"no workspace at {root}: train a model first, or name one with --workspace")
        if not 0 < args.port < 65536:
            raise UserError(f"--port must be between 1 and 65535, got {args.port}")
        open_workspace(args, record=False)  # trust setting, and a damaged store fails here as one line
        from deploybench.app import launch  # Gradio is heavy: imported only by this command

        launch(root, args.data_dir, host=args.host, port=args.port)
        return 0

    return run(go)
