"""Child-process entry: `python -m deploybench.profile.worker JOB.json RESULT.json` measures one
(variant, backend, batch size) in a fresh interpreter, so its memory peak is its own."""

from __future__ import annotations

import json
import sys
import traceback


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    job = json.loads(open(job_path).read())
    from deploybench.profile.runner import measure_combo_safe

    try:
        result = measure_combo_safe(**job)
    except BaseException as exc:  # reported to the parent, which records the failure and goes on
        result = dict(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
