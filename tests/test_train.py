"""Recovery training (pruner.training.train) on a tiny random model with a tiny BPE tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from pruner.data import load_text
from pruner.testing import tiny_model, tiny_tokenizer
from pruner.training.train import (
    PackedData,
    TrainConfig,
    TrainDone,
    TrainState,
    TrainStep,
    WSDSchedule,
    iter_train,
    lm_and_distill_loss,
    make_accelerator,
    train,
)


def tiny_llama(seed: int = 0, layers: int = 3):
    """The training tests' model: hidden 48 is a multiple of every head count pruning can leave (2, 4, 6), which
    saving needs; tied embeddings like the default model."""
    return tiny_model("llama", seed, perturb=False, vocab_size=len(tiny_tokenizer()), hidden_size=48,
                      num_hidden_layers=layers, num_attention_heads=6, num_key_value_heads=3,
                      max_position_embeddings=256, tie_word_embeddings=True)


def small_cfg(**kw) -> TrainConfig:
    base = {"lr": 3e-3, "seq_len": 32, "batch_size": 2, "data": "stories", "exclude": "wikitext2:test"}
    base.update(kw)
    return TrainConfig(**base)


def test_wsd_schedule_shape():
    s = WSDSchedule(total_steps=100, peak=1e-3, warmup=0.05, decay=0.10)
    lrs = [s.lr(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 5)
    assert lrs[4] == pytest.approx(1e-3)  # end of the 5-step warm-up
    assert all(v == pytest.approx(1e-3) for v in lrs[5:90])  # stable
    assert all(a > b for a, b in zip(lrs[89:], lrs[90:], strict=False))  # linear decay
    assert lrs[99] > 0 and lrs[99] < 1e-3 / 5


def test_packed_data_is_deterministic_and_position_addressed():
    tok = tiny_tokenizer()
    d = PackedData(tok, "stories", seq_len=32, seed=1)
    assert d.sequences.shape[1] == 32 and len(d) > 100
    a = d.batch(5, 4)
    b = d.batch(5, 4)
    assert torch.equal(a, b)
    assert torch.equal(d.batch(5, 2), a[:2]) and torch.equal(d.batch(7, 2), a[2:])
    # the second epoch is a different order of the same sequences
    n = len(d)
    e2 = d.batch(n, n)
    assert not torch.equal(e2, d.batch(0, n))
    assert sorted(map(tuple, e2.tolist())) == sorted(map(tuple, d.sequences.tolist()))


def test_training_data_excludes_evaluation_overlap(tmp_path):
    tok = tiny_tokenizer()
    test_text = load_text("wikitext2", "test", detokenize=True)
    leaked = next(line.strip() for line in test_text.splitlines() if len(line.split()) > 60)
    f = tmp_path / "mine.txt"
    clean = "A clean paragraph about gardens and rivers and the sea.\n\n" + "Another clean one.\n\n" * 40
    f.write_text(clean + leaked + "\n\n" + clean)
    d = PackedData(tok, str(f), seq_len=8, seed=0)
    assert d.removed_paragraphs == 1 and d.paragraphs == 2 * 41 + 1
    kept = tok.decode(d.sequences.flatten().tolist()).replace(" ", "")  # the tiny BPE decodes with spaces
    assert "gardens" in kept
    probe = "".join(leaked.split()[20:26])
    assert probe not in kept
    # without the exclusion the paragraph stays
    d2 = PackedData(tok, str(f), seq_len=8, seed=0, exclude="")
    assert d2.removed_paragraphs == 0 and d2.tokens > d.tokens


def test_hf_dataset_offline_raises_clear_error():
    from pruner.data import DataError

    with pytest.raises(DataError, match="Hugging Face"):
        PackedData(tiny_tokenizer(), "hf:allenai/c4:en", seq_len=32)


def test_distillation_loss_is_zero_for_identical_logits_and_mixes():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    loss, lm, kd = lm_and_distill_loss(logits, ids, logits.clone(), weight=0.5, temperature=2.0)
    assert kd.item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * lm.item(), rel=1e-6)
    other = torch.randn(2, 5, 11)
    loss2, lm2, kd2 = lm_and_distill_loss(logits, ids, other, weight=0.25, temperature=2.0)
    assert kd2.item() > 0
    assert loss2.item() == pytest.approx(0.75 * lm2.item() + 0.25 * kd2.item(), rel=1e-6)
    only_lm, _, none = lm_and_distill_loss(logits, ids, None)
    assert none is None and only_lm.item() == pytest.approx(lm.item())


def test_training_lowers_the_loss_and_reports_progress():
    tok = tiny_tokenizer()
    model = tiny_llama()
    cfg = small_cfg()
    events = list(iter_train(model, tok, tokens=20 * 64, config=cfg, accelerator=make_accelerator("no", cpu=True)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    done = events[-1]
    assert isinstance(done, TrainDone) and done.steps == 20 == len(steps)
    assert done.tokens == 20 * 64 and done.tokens_per_s > 0 and done.peak_memory_bytes > 0
    first, last = sum(e.loss for e in steps[:5]) / 5, sum(e.loss for e in steps[-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "eta_s"} <= set(steps[0].to_dict())
    assert steps[-1].eta_s == 0
    assert all(math.isfinite(e.grad_norm) for e in steps)
    # the optimiser state comes back as tensors (for a safetensors checkpoint)
    assert done.optimizer_state and all(torch.is_tensor(v) for v in done.optimizer_state.values())


def test_schedule_and_data_positions_carry_across_calls():
    tok = tiny_tokenizer()
    cfg = small_cfg()
    data = PackedData(tok, "stories", seq_len=32)
    acc = make_accelerator("no", cpu=True)
    # one call of 6 steps equals two calls of 3 + 3 steps sharing the schedule and state (fresh optimiser
    # each call, so the weights differ, but the lr and data positions must line up)
    sched = WSDSchedule(6, cfg.lr, 0.2, 0.4)
    st = TrainState()
    lrs = []
    for _ in range(2):
        for e in iter_train(tiny_llama(), tok, 3 * 64, cfg, accelerator=acc, data=data, schedule=sched, state=st):
            if isinstance(e, TrainStep):
                lrs.append(e.lr)
    assert st.global_step == 6 and st.data_position == 12 and st.tokens_seen == 6 * 64
    assert lrs == [sched.lr(i) for i in range(6)]


def test_should_stop_ends_after_completed_steps():
    tok = tiny_tokenizer()
    n = {"k": 0}

    def stop():
        n["k"] += 1
        return n["k"] > 3

    out = train(tiny_llama(), tok, 10 * 64, small_cfg(), accelerator=make_accelerator("no", cpu=True), should_stop=stop)
    assert out["cancelled"] and out["steps"] == 3 and len(out["losses"]) == 3


def test_distillation_from_teacher_runs_and_reports_kd():
    tok = tiny_tokenizer()
    teacher = tiny_llama(seed=1)
    ev = list(iter_train(tiny_llama(), tok, 2 * 64, small_cfg(distill_weight=0.5), accelerator=make_accelerator("no", cpu=True),
                         teacher=teacher))
    kd = [e.kd_loss for e in ev if isinstance(e, TrainStep)]
    assert len(kd) == 2 and all(k > 0 for k in kd)
    assert all(not p.requires_grad for p in teacher.parameters())
