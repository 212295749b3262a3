"""Model resolution: SEALONG_MODEL_CACHE keeps a bundled model's conversion once and later workdirs copy it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sealong.loop.backends import models
from sealong.store.artifacts import sha256_dir


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Counts real conversions of the tiny Llama (the real builder still runs)."""
    calls: list[int] = []
    real = models.build_tiny_random_llama

    def counted(seed: int = 0):
        calls.append(seed)
        return real(seed)

    monkeypatch.setattr(models, "build_tiny_random_llama", counted)
    return calls


def test_without_the_cache_every_workdir_converts_and_nothing_is_kept(tmp_path, monkeypatch, builds):
    monkeypatch.delenv(models.MODEL_CACHE_ENV, raising=False)
    assert models.model_cache_entry("tiny-random-llama", 0) is None
    a = models.prepare_base_model("tiny-random-llama", tmp_path / "a")
    b = models.prepare_base_model("tiny-random-llama", tmp_path / "b")
    assert builds == [0, 0] and sha256_dir(a) == sha256_dir(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_the_cache_converts_once_and_copies_the_same_bytes(tmp_path, monkeypatch, builds):
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(cache))
    first = models.prepare_base_model("tiny-random-llama", tmp_path / "a")
    entry = models.model_cache_entry("tiny-random-llama", 0)
    assert entry.parent == cache.resolve() and (entry / "manifest.json").is_file()
    second = models.prepare_base_model("tiny-random-llama", tmp_path / "b")
    assert builds == [0]  # the second workdir copied the conversion
    assert sha256_dir(second) == sha256_dir(first) == sha256_dir(entry / "model")
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    # Another seed is another model, so another entry.
    assert models.model_cache_entry("tiny-random-llama", 1) != entry
    models.prepare_base_model("tiny-random-llama", tmp_path / "c", seed=1)
    assert builds == [0, 1] and len(list(cache.iterdir())) == 2


def test_a_damaged_entry_is_never_used_and_is_replaced(tmp_path, monkeypatch, builds):
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(tmp_path / "cache"))
    good = sha256_dir(models.prepare_base_model("tiny-random-llama", tmp_path / "a"))
    entry = models.model_cache_entry("tiny-random-llama", 0)
    weights = entry / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    again = models.prepare_base_model("tiny-random-llama", tmp_path / "b")
    assert builds == [0, 0]  # converted again instead of copying the damaged files
    assert sha256_dir(again) == good and sha256_dir(entry / "model") == good  # and the entry was repaired
    (entry / "manifest.json").unlink()  # an entry cut short is no entry
    models.prepare_base_model("tiny-random-llama", tmp_path / "c")
    assert builds == [0, 0, 0] and sha256_dir(entry / "model") == good


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(cache))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache.mkdir()
    (cache / f".tmp-tiny-random-llama-0123abcd-{dead.pid}").mkdir()
    live = cache / f".tmp-tiny-random-llama-0123abcd-{os.getppid()}"
    live.mkdir()
    models.prepare_base_model("tiny-random-llama", tmp_path / "a")
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".tmp-")) == [live.name]


def test_an_unwritable_cache_does_not_fail_the_conversion(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(blocker / "cache"))
    base = models.prepare_base_model("tiny-random-llama", tmp_path / "a")
    assert (base / "config.json").is_file()


def test_smollm2_tokenizer_from_a_directory_instead_of_the_gguf(tmp_path, monkeypatch, tiny_model):
    """SEALONG_SMOLLM2_TOKENIZER (the GPU check's kit, which cannot carry the GGUF): the tiny Llama is
    built with the tokenizer in that directory, the same tokenizer as the GGUF's, and no cache entry is
    keyed on a GGUF that the machine may not have."""
    _, gguf_tok = tiny_model
    saved = tmp_path / "tok"
    gguf_tok.save_pretrained(saved)
    monkeypatch.setenv(models.SMOLLM2_TOKENIZER_ENV, str(saved))
    monkeypatch.setenv(models.MODEL_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_GGUF_TOKENIZER", [])
    monkeypatch.setattr(models, "bundled_smollm2_dir", lambda: pytest.fail("read the GGUF"))
    assert models.model_cache_entry("tiny-random-llama", 0) is None
    base = models.prepare_base_model("tiny-random-llama", tmp_path / "wd")
    tok = models.load_tokenizer(base)
    text = "Plan: find where Ada was born. <|im_end|>"
    assert (
        tok(text)["input_ids"] == gguf_tok(text)["input_ids"] and tok.chat_template == gguf_tok.chat_template
    )
    assert not (tmp_path / "cache").exists()
