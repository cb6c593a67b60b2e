"""Efficiency metrics on tiny models: parameter and MAC counts by hand, measurements present, ratios."""

from __future__ import annotations

import pytest

from pruner.evaluation import compare, efficiency, macs_per_token
from pruner.testing import TINY, tiny_model


def test_macs_per_token_counts_every_linear_once_plus_attention():
    model = tiny_model()
    h, f, v, layers = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], TINY["num_hidden_layers"]
    hd = h // TINY["num_attention_heads"]
    attn = h * h * 2 + 2 * h * TINY["num_key_value_heads"] * hd  # q, o, k, v
    expected = layers * (attn + 3 * h * f) + h * v  # + lm_head
    m = macs_per_token(model, context=100)
    assert m["linear"] == expected
    assert m["attention"] == layers * 2 * TINY["num_attention_heads"] * hd * 100
    assert m["lm_head"] == h * v and m["decoder"] == layers * (attn + 3 * h * f) + m["attention"]


def test_efficiency_reports_settings_and_compare_gives_ratios():
    dense, small = tiny_model(), tiny_model(intermediate_size=48)
    kw = dict(prompt_tokens=8, new_tokens=4, prefill_batch=2, prefill_tokens=16, warmup=1, repeats=2)
    a, b = efficiency(dense, **kw), efficiency(small, **kw)
    for r in (a, b):
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and len(r["decode_seconds"]) == 2
        assert r["settings"]["new_tokens"] == 4 and r["settings"]["device"] == "cpu"
        p = r["params"]
        assert p["total"] == p["decoder_layers"] + p["embeddings"] + p["other"]
        assert r["memory"]["weights_bytes"] == 4 * p["total"]
    c = compare(a, b)
    assert c["params_ratio"] == pytest.approx(b["params"]["total"] / a["params"]["total"]) and c["params_ratio"] < 1
    assert c["ideal_speedup_from_params"] == pytest.approx(1 / c["params_ratio"])
    assert c["macs_ratio"] < 1 and c["decode_speedup"] > 0 and c["kv_cache_ratio"] == 1.0
    # the LM head is the same in both, so the decoder-only ratio (prefill) shrinks more than the per-token one
    dec = b["macs_per_token"]["decoder"] / a["macs_per_token"]["decoder"]
    assert c["ideal_prefill_speedup_from_decoder_macs"] == pytest.approx(1 / dec)
    assert c["ideal_prefill_speedup_from_decoder_macs"] > c["ideal_speedup_from_macs"]


def test_efficiency_rejects_bad_settings():
    with pytest.raises(ValueError):
        efficiency(tiny_model(), repeats=0)
