"""Shared pytest fixtures: tiny configs (2 layers, hidden 64, 4 heads, 2 kv heads, vocab 128),
seeded random models and checkpoint directories written with model.save_model. Everything is
built in-process on CPU; nothing is downloaded."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repo root holds model.py

import course  # noqa: E402
import model as M  # noqa: E402

def pytest_configure(config):
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    spin-waiting against other processes made a 1 ms forward take 250 ms. The markers t1 .. t6
    say which course task a test grades (course.py grade, docs/course.md)."""
    torch.set_num_threads(1)
    for task, title in course.TASKS.items():
        config.addinivalue_line("markers", f"{task.lower()}: course task {task}, {title}")


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
# Per family: what differs from plain llama (qwen3 also gets a head_dim != hidden / heads).
FAMILIES = {"llama": dict(model_type="llama"),
            "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
            "qwen3": dict(model_type="qwen3", head_dim=32, tie_word_embeddings=True)}


def words(rng, k):
    """k words of the conftest tokenizer (w0..w124 -> ids 3..127), drawn from random.Random rng."""
    return " ".join(f"w{rng.randrange(125)}" for _ in range(k))


def tiny_config(**overrides) -> "M.Config":
    return M.Config(**{**TINY, **overrides})


def random_model(cfg, seed=0) -> "M.Transformer":
    """Seeded random weights, with norms and biases randomised too so that they are tested."""
    torch.manual_seed(seed)
    model = M.Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def write_tokenizer(path: Path, vocab_size=128):
    """A word-level tokenizer.json (ids 0-2 are <pad>, <s>, </s>) and tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab_size - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")          # joins words with spaces
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"}))


@pytest.fixture
def tiny():
    """Factory: tiny(**overrides) -> Config."""
    return tiny_config


@pytest.fixture
def make_model():
    """Factory: make_model(seed=0, **config overrides) -> random Transformer (eval mode)."""
    return lambda seed=0, **kw: random_model(tiny_config(**kw), seed)


@pytest.fixture
def make_ckpt(tmp_path):
    """Factory: make_ckpt(name="ckpt", seed=0, tokenizer=True, **overrides) -> (dir, model),
    a random tiny checkpoint written by save_model (with tokenizer files)."""
    def make(name="ckpt", seed=0, tokenizer=True, **kw):
        model = random_model(tiny_config(**kw), seed)
        if tokenizer:
            src = tmp_path / f"{name}_src"
            src.mkdir()
            write_tokenizer(src, model.config.vocab_size)
            model.path = src                  # save_model copies tokenizer files from here
        out = tmp_path / name
        M.save_model(model, out)
        return out, model
    return make


@pytest.fixture
def tiny_ckpt(make_ckpt):
    """A random tiny llama checkpoint directory (untied head) and the model it was saved from."""
    return make_ckpt()
