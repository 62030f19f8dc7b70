"""The data of the ``layerprobe_mc`` task: JCommonsenseQA-format JSON lines, read by ``datasets``' json loader.

The harness passes the task's metadata as keyword arguments: ``mc_path`` (a file, or a folder holding one
``*<mc_split>*.json`` file, as ``--data.mc`` takes it) and ``mc_split`` (default ``valid``).
"""

from __future__ import annotations

import re

from layerprobe.sources.realdata import jcommonsenseqa_file


def load(mc_path: str | None = None, mc_split: str = "valid", **_) -> dict:
    """{"test": the rows}, each with its choices gathered into ``choices`` (choice0..choiceN in order)."""
    import datasets  # a heavy third-party import, only when the harness loads the task

    if not mc_path:
        raise ValueError(
            "the task layerprobe_mc reads its rows from the metadata key mc_path, got none; pass "
            '--data.mc FILE to layerprobe, or --metadata \'{"mc_path": "FILE"}\' to lm_eval'
        )
    rows = datasets.load_dataset("json", data_files={"test": str(jcommonsenseqa_file(mc_path, mc_split))})

    def gather(row: dict) -> dict:
        keys = sorted(
            (k for k in row if re.fullmatch(r"choice\d+", k) and row[k] is not None), key=lambda k: int(k[6:])
        )
        return {"choices": [str(row[k]) for k in keys]}

    return rows.map(gather)
