"""Half-precision copies of the project's own cached models (issue 20).

The default model and the fetched shipped models are cached as float32 safetensors (de-quantized once from their
GGUF files). Loading one in bfloat16 / float16 made transformers convert every tensor out of the memory-mapped
float32 file: the whole float32 file became resident beside the half-precision copy (1.5× the float32 weight
bytes at the peak, for a model that then holds 0.5×). A copy in the requested dtype is therefore written once, next
to the float32 one, reading the float32 file with plain reads, one tensor at a time (never mapped), and later loads
map it directly: the same tensors (conversion is rounding either way), a fraction of the memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def variant_dir(folder: Path, dtype: torch.dtype) -> Path:
    return folder.with_name(f"{folder.name}-{DTYPES[dtype]}")


def cached_in(folder: Path, dtype: torch.dtype, progress=None) -> Path:
    """``folder`` (a float32 cached model) as a folder whose weights are stored in ``dtype``: the folder itself for
    float32 (or a dtype without a variant), else its half-precision copy, written on first use."""
    if dtype not in DTYPES:
        return folder
    out = variant_dir(folder, dtype)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    if progress:
        progress(f"Writing a {DTYPES[dtype]} copy of {folder.name} once (later {DTYPES[dtype]} loads map it) ...")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in folder.iterdir():
            if f.suffix == ".safetensors":
                convert_file(f, tmp / f.name, dtype)
            elif f.name == "config.json":
                config = json.loads(f.read_text(encoding="utf-8"))
                config["torch_dtype"] = config["dtype"] = DTYPES[dtype]
                (tmp / f.name).write_text(json.dumps(config, indent=2), encoding="utf-8")
            elif f.is_file():
                shutil.copy2(f, tmp / f.name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_file(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with its floating-point tensors in ``dtype``, reading one tensor at a time with
    plain reads: at most the converted tensors plus one source tensor are in memory."""
    with open(src, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        meta = header.pop("__metadata__", None)
        base = 8 + n
        out = {}
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            fh.seek(base + start)
            buf = bytearray(end - start)
            fh.readinto(buf)
            t = torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]) if buf else \
                torch.empty(0, dtype=_ST_DTYPES[info["dtype"]])
            t = t.reshape(info["shape"])
            out[name] = t.to(dtype) if t.is_floating_point() else t.clone()
            del buf, t
    save_file(out, str(dst), metadata=meta)
