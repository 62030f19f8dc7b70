"""``python -m layerprobe.sweep.worker JOB.json RESULT.json``: a local sweep worker runs one cell's job and writes its
record (atomically). Its own module, not :mod:`layerprobe.sweep.cell`: the package imports ``cell``, and running a
module the package has already imported makes ``python -m`` warn in every cell's log."""

from __future__ import annotations

import sys

from layerprobe.core import rundir
from layerprobe.sweep.cell import CellJob, run_cell


def main(argv: list[str] | None = None) -> int:
    job_file, result_file = argv if argv is not None else sys.argv[1:]
    record = run_cell(CellJob.read(job_file))
    rundir.write_json(result_file, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
