"""Loading data: local JSON/JSONL/Parquet/text files or hub dataset names, checked for the fields a stage needs.

Every loader returns plain Python rows (lists of dicts or strings); errors name the fields found and expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")
SFT_SCHEMAS = "messages | prompt + completion | instruction (+ input) + output"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_error(kind: str, name: str, folder_form: str) -> OSError:
    return OSError(
        f"{kind} {name!r} is not a local path and HF_HUB_OFFLINE=1 forbids the hub; "
        f"pass a local {folder_form} instead (or unset HF_HUB_OFFLINE when online)"
    )


def _looks_like_path(spec: str) -> bool:
    """Hub names are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") >= 2
        or "\\" in spec
        or Path(spec).suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES
    )


def load_rows(spec: str, split: str = "train") -> tuple[list[dict] | list[str], str]:
    """Rows of a file or hub dataset: dicts for tables, strings (one per non-empty line) for .txt/.md.

    Returns (rows, description). A folder loads every data file in it (sorted).
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"data folder {spec!r} holds no {'/'.join(TEXT_SUFFIXES + TABLE_SUFFIXES)} files")
        rows: list = []
        for f in files:
            rows.extend(_load_file(f))
        return rows, f"{spec} ({len(files)} files)"
    if p.is_file():
        return _load_file(p), str(spec)
    if _looks_like_path(spec):
        raise FileNotFoundError(
            f"data file {spec!r} not found; expected a .jsonl/.json/.parquet/.txt/.md file, "
            "a folder of them, or a hub dataset name"
        )
    if hub_offline():
        raise offline_error("dataset", spec, "JSONL/JSON/Parquet/text file")
    import datasets

    ds = datasets.load_dataset(spec, split=split)
    return [dict(r) for r in ds], f"{spec} [{split}]"


def _load_file(p: Path) -> list:
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()  # nested fields (messages) stay Python lists
    if suffix == ".jsonl":
        return json_lines(p)
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # JSON lines saved as .json
            return json_lines(p)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list):
            raise ValueError(f"{p} must hold a list of objects (or JSON lines), got {type(data).__name__}")
        return data
    raise ValueError(f"unsupported data file {p}: expected {', '.join(TABLE_SUFFIXES + TEXT_SUFFIXES)}")


def json_lines(p: Path) -> list:
    """One JSON value per non-empty line; a bad line is a one-line error naming the file and line."""
    rows = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{p}:{i} is not valid JSON ({e.msg}); expected a JSON list or one JSON object a line"
                    ) from None
    return rows


def _fields(rows: list) -> list[str]:
    return sorted(rows[0]) if rows and isinstance(rows[0], dict) else ["<plain text lines>"]


def _need(rows: list, desc: str, what: str, expected: str) -> None:
    if not rows:
        raise ValueError(f"{what} {desc} is empty; expected rows with {expected}")


def load_cpt_texts(spec: str, text_field: str = "text", split: str = "train", limit: int = 0) -> list[str]:
    """CPT documents: text lines, or the ``text_field`` of each row."""
    rows, desc = load_rows(spec, split)
    _need(rows, desc, "CPT data", f"a {text_field!r} field")
    if isinstance(rows[0], dict):
        if text_field not in rows[0]:
            raise ValueError(
                f"CPT data {desc} has fields {_fields(rows)}; expected a text field {text_field!r} "
                f"(set data.cpt_text_field to one of them)"
            )
        rows = [str(r[text_field]) for r in rows if r.get(text_field)]
    return rows[:limit] if limit > 0 else rows


def _chat(role: str, content: str) -> dict:
    return {"role": role, "content": str(content)}


def sft_row(row: dict) -> dict | None:
    """One SFT row as a conversational prompt/completion pair, or None when no known schema fits."""
    if isinstance(row.get("messages") or row.get("conversations"), list):
        msgs = row.get("messages") or row["conversations"]
        msgs = [_chat(m.get("role") or m.get("from"), m.get("content") or m.get("value") or "") for m in msgs]
        msgs = [{**m, "role": {"human": "user", "gpt": "assistant"}.get(m["role"], m["role"])} for m in msgs]
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            return None
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}
    if "prompt" in row and "completion" in row:
        p, c = row["prompt"], row["completion"]
        prompt = p if isinstance(p, list) else [_chat("user", p)]
        completion = c if isinstance(c, list) else [_chat("assistant", c)]
        return {"prompt": prompt, "completion": completion}
    if "instruction" in row and ("output" in row or "response" in row):
        return {
            "prompt": [_chat("user", instruction_text(row))],
            "completion": [_chat("assistant", row.get("output", row.get("response")))],  # type: ignore[arg-type]
        }
    return None


def instruction_text(row: dict) -> str:
    """The user turn of an instruction row: ``instruction`` (+ a blank line + ``input`` when present)."""
    extra = str(row.get("input") or "").strip()
    return str(row["instruction"]) + (f"\n\n{extra}" if extra else "")


def load_sft_rows(spec: str, split: str = "train", limit: int = 0) -> list[dict]:
    """SFT rows as conversational ``{"prompt": [...], "completion": [...]}`` (trl's prompt-completion form)."""
    rows, desc = load_rows(spec, split)
    _need(rows, desc, "SFT data", SFT_SCHEMAS)
    if not isinstance(rows[0], dict) or sft_row(rows[0]) is None:
        raise ValueError(f"SFT data {desc} has fields {_fields(rows)}; expected {SFT_SCHEMAS}")
    out = [r for r in (sft_row(row) for row in rows) if r is not None]
    return out[:limit] if limit > 0 else out


def load_probes(spec: str, split: str = "train") -> list[dict]:
    """Knowledge probes: rows with ``kind`` (cloze, cloze_heldout or qa), ``prompt`` and ``answer``, and an
    optional ``relation`` (probes of one relation share the candidate answers of the margin and the guessing
    floor; see :mod:`layerprobe.evaluation.evaluate`)."""
    rows, desc = load_rows(spec, split)
    expected = ["answer", "kind", "prompt"]
    _need(rows, desc, "probe data", str(expected))
    if not isinstance(rows[0], dict) or not set(expected) <= set(rows[0]):
        raise ValueError(
            f"probe data {desc} has fields {_fields(rows)}; expected {expected} "
            "(kind is 'cloze', 'cloze_heldout' or 'qa')"
        )
    bad = sorted({str(r.get("kind")) for r in rows} - {"cloze", "cloze_heldout", "qa"})
    if bad:
        raise ValueError(f"probe data {desc} has kind {bad[0]!r}; expected 'cloze', 'cloze_heldout' or 'qa'")
    return [
        {
            "kind": r["kind"],
            "prompt": str(r["prompt"]),
            "answer": str(r["answer"]),
            **({"relation": str(r["relation"])} if r.get("relation") else {}),
        }
        for r in rows
    ]


def load_instructions(spec: str, split: str = "train") -> list[dict]:
    """Held-out instructions: rows with ``prompt``, ``instruction`` (+ ``input``) or ``messages``."""
    rows, desc = load_rows(spec, split)
    _need(rows, desc, "instruction data", "a prompt or instruction field")
    out = []
    for r in rows:
        if not isinstance(r, dict):
            break
        if isinstance(r.get("prompt"), str):
            out.append({"prompt": r["prompt"]})
        elif "instruction" in r:
            out.append({"prompt": instruction_text(r)})
        elif (row := sft_row(r)) is not None:
            out.append({"prompt": row["prompt"][-1]["content"]})
        else:
            break
    if len(out) != len(rows):
        raise ValueError(
            f"instruction data {desc} has fields {_fields(rows)}; expected 'prompt', "
            "'instruction' (+ 'input') or 'messages'"
        )
    return out


def pack_texts(tok, docs: list[str], block: int) -> list[list[int]]:
    """Tokenize documents (each followed by EOS), concatenate and cut into blocks of ``block`` tokens."""
    ids: list[int] = []
    for enc in tok(docs)["input_ids"]:
        ids.extend(enc + [tok.eos_token_id])
    if len(ids) < block:
        return [ids] if ids else []
    return [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
