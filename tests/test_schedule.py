"""The EfficientXpert schedule (method §8) with the model, the data and the pruning call
stubbed: train.run's calls of its step functions are recorded, so the order of LoRA, the
optimizer steps, the checkpoints, every pruning call and the merge is checked without any
model or pruning code (course task T6). The same schedule in real runs: tests/test_train.py.

Run: python -m pytest -q tests/test_schedule.py
"""
import types

import pytest
import torch

import train


def recorded_run(monkeypatch, steps_per_epoch=2, start_epoch=0, **over):
    """train.run on a TrainConfig(**over) with setup, evaluation, LoRA, the steps, the
    checkpoints, prune_call, merge_lora and finish replaced by recorders; returns the events
    in order and the `final` that run hands to finish."""
    cfg, events = train.TrainConfig(**over), []
    r = types.SimpleNamespace(cfg=cfg, steps_per_epoch=steps_per_epoch, start_epoch=start_epoch,
                              model=torch.nn.Module())

    def prune_call(r, method, *, tag, compensate=False, average=False, keep_scores=False):
        events.append(("prune", tag, method, compensate, average, keep_scores))
        return {"tag": tag}
    stubs = dict(setup=lambda c: r, evaluate=lambda r, key: events.append(("eval", key)),
                 attach_lora=lambda r: events.append(("lora",)),
                 batches=lambda r, e: ((e * steps_per_epoch + i, None) for i in range(steps_per_epoch)),
                 train_step=lambda r, epoch, step, batch: events.append(("step", step)),
                 save_checkpoint=lambda r, epoch: events.append(("ckpt", epoch)),
                 prune_call=prune_call, finish=lambda r, final: final)
    for name, f in stubs.items():
        monkeypatch.setattr(train, name, f)
    monkeypatch.setattr(train.M, "merge_lora",
                        lambda model, masks=None: events.append(("merge", masks is not None)))
    final = train.run(cfg)
    return events, final


def epoch(e, spe=2):
    """The events of one plain epoch: its optimizer steps, then its checkpoint."""
    return [("step", s) for s in range(e * spe, (e + 1) * spe)] + [("ckpt", e)]


def inter(step, keep):
    """An intermediate call: ForeSight, compensated, averaged (E7); keep: a later call averages."""
    return ("prune", f"step{step}", "foresight", True, True, keep)


START, LORA = ("eval", "dense_start"), ("lora",)


@pytest.mark.t6
@pytest.mark.parametrize("over, want, final", [
    (dict(method="efx", epochs=3),                              # a call before epochs 1 and 2
     [START, LORA, *epoch(0), inter(2, True), *epoch(1), inter(4, False), *epoch(2),
      ("prune", "final", "foresight", True, False, False)], "final"),
    (dict(method="efx", epochs=2, steps_per_epoch=4, prune_every_steps=3, compensate_final=False),
     [START, LORA, ("step", 0), ("step", 1), ("step", 2), inter(3, True), ("step", 3), ("ckpt", 0),
      ("step", 4), ("step", 5), inter(6, False), ("step", 6), ("step", 7), ("ckpt", 1),
      ("prune", "final", "foresight", False, False, False)], "final"),
    (dict(method="efx", epochs=1), [START, LORA, *epoch(0),
                                    ("prune", "final", "foresight", True, False, False)], "final"),
    (dict(method="wanda", epochs=2, prune_every_steps=1),       # baselines: no intermediate calls
     [START, LORA, *epoch(0), *epoch(1), ("merge", False), ("prune", "final", "wanda", False, False, False)],
     "final"),
    (dict(method="magnitude", baseline_order="before"),         # the first call's mask held
     [START, ("prune", "before-lora", "magnitude", False, False, False), LORA, *epoch(0), *epoch(1),
      *epoch(2), ("merge", True)], "before-lora"),
    (dict(method="sparsegpt", baseline_order="both", epochs=1),
     [START, ("prune", "before-lora", "sparsegpt", False, False, False), LORA, *epoch(0),
      ("merge", False), ("prune", "final", "sparsegpt", False, False, False)], "final"),
    (dict(method="dense", epochs=2), [START, LORA, *epoch(0), *epoch(1), ("merge", False)], None),
])
def test_s8_schedule_calls_in_order(monkeypatch, over, want, final):
    """Each method's schedule as method §8 lists it: when LoRA attaches, which optimizer steps
    an intermediate call precedes, each call's kind (compensated, averaged, scores kept for a
    later call), the merge (masked for "before") and the final call that finish() receives."""
    events, got = recorded_run(monkeypatch, **over)
    assert events == want
    assert (got and got["tag"]) == final


@pytest.mark.t6
def test_s8_schedule_resumes_at_the_checkpointed_epoch(monkeypatch):
    """--resume after epoch 0 of 3 (start_epoch 1): training restarts at step 2 and its
    intermediate call, which the interrupted run had not reached, runs first."""
    events, _ = recorded_run(monkeypatch, start_epoch=1, method="efx", epochs=3)
    assert events == [START, LORA, inter(2, True), *epoch(1), inter(4, False), *epoch(2),
                      ("prune", "final", "foresight", True, False, False)]


@pytest.mark.t6
def test_s8_ramp_hand_values():
    """The cubic ramp rho (1 - (1 - k/K)^3) reaches rho at the final call k = K; "none" is rho."""
    assert train.ramp(0.5, 1, 3, "none") == train.ramp(0.5, 3, 3, "none") == 0.5
    assert train.ramp(0.5, 1, 3, "cubic") == pytest.approx(0.5 * 19 / 27, abs=1e-12)
    assert train.ramp(0.5, 2, 3, "cubic") == pytest.approx(0.5 * 26 / 27, abs=1e-12)
    assert train.ramp(0.6, 2, 4, "cubic") == pytest.approx(0.6 * 7 / 8, abs=1e-12)
    assert train.ramp(0.5, 3, 3, "cubic") == pytest.approx(0.5, abs=1e-12)
