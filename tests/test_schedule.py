"""The learning-rate schedule (roilib/optim.py): a plain function of the step, a warm-up capped
for short runs, resume rules; and a 100-step demo run that learns."""
import json

import pytest
import torch

from helpers import run_script
from roilib.optim import FINAL_FACTOR, lr_factor, make_optimizer, set_learning_rate, warmup_steps
from roilib.run import restore_training_state


def test_warmup_is_capped_at_a_tenth_of_the_run():
    assert warmup_steps(100, 1200) == 100            # long run: as asked
    assert warmup_steps(100, 100) == 10              # STEPS == WARMUP_STEPS: a tenth
    assert warmup_steps(100, 50) == 5                # STEPS < WARMUP_STEPS
    assert warmup_steps(100, 9) == 0                 # too short for any warm-up
    assert warmup_steps(0, 1000) == 0


@pytest.mark.parametrize("steps", [1, 5, 50, 100, 101])
def test_short_runs_peak_then_decay_to_the_end_value(steps):
    """STEPS <= WARMUP_STEPS: the run still reaches its peak and ends at FINAL_FACTOR."""
    warmup = warmup_steps(100, steps)
    factors = [lr_factor(s, warmup, steps) for s in range(steps)]
    assert max(factors) == pytest.approx(1.0)
    assert factors.index(max(factors)) == max(warmup - 1, 0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))   # decays after
    if steps > 1:   # the last step runs far below the peak; the cosine ends at step STEPS
        assert factors[-1] < 0.15 and lr_factor(steps, warmup, steps) == pytest.approx(FINAL_FACTOR)


def test_schedule_values():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(12, 4, 20) == pytest.approx(FINAL_FACTOR + (1 - FINAL_FACTOR) * 0.5)   # half-way
    assert lr_factor(20, 4, 20) == pytest.approx(FINAL_FACTOR)
    assert lr_factor(500, 4, 20) == pytest.approx(FINAL_FACTOR)    # steps added on resume: flat


def test_resume_takes_the_new_lr_and_weight_decay():
    """No scheduler state: the resumed step and this run's LR give the LR; the stored
    optimiser state (moments) is kept, with this run's weight decay."""
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model, 1e-3, 0.05)
    model(torch.ones(1, 3)).sum().backward()
    set_learning_rate(optimizer, 1e-3 * lr_factor(0, 2, 10))
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "step": 7}
    resumed = make_optimizer(model, 5e-4, 0.01)
    step = restore_training_state(state, resumed, torch.amp.GradScaler("cpu", enabled=False), "last.pt")
    set_learning_rate(resumed, 5e-4 * lr_factor(step, 2, 10))
    assert step == 7
    assert [g["lr"] for g in resumed.param_groups] == [pytest.approx(5e-4 * lr_factor(7, 2, 10))] * 2
    assert [g["weight_decay"] for g in resumed.param_groups] == [0.01, 0.0]
    assert torch.equal(resumed.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


@pytest.mark.slow
def test_a_100_step_demo_run_learns(make_demo_data, tmp_path):
    """The default WARMUP_STEPS=100 with --STEPS=100: the warm-up is capped (and said so), the
    LR decays, and the model learns well above chance (10 classes: 10%)."""
    data = make_demo_data(0, 60, 20)
    out = run_script("Train.py", "--STEPS=100", "--ARCH=resnet18", "--MIN_SIZE=64", "--MAX_SIZE=64",
                     "--MAX_BATCH=16", "--WORKERS=0", "--DEVICE=cpu", "--AMP=False", "--LOG_EVERY=50",
                     "--VAL_EVERY=100", f"--LOG_DIR={tmp_path}", "--RUN=short",
                     f"--TRAIN_IMAGES={data}/train/images", f"--TRAIN_ANNOTATIONS={data}/train/instances.json",
                     f"--VAL_IMAGES={data}/val/images", f"--VAL_ANNOTATIONS={data}/val/instances.json", here=True).stdout
    assert "warm-up: 10 steps, not WARMUP_STEPS=100" in out
    config = json.loads((tmp_path / "short" / "config.json").read_text())
    assert config["lr_schedule"]["warmup_steps"] == 10
    best = torch.load(tmp_path / "short" / "best.pt", weights_only=True)
    # 0.81 here; 0.53 with the uncapped warm-up (the LR at its peak at the end); chance: 0.10
    assert best["metrics"]["mean_class_accuracy"] > 0.65, best["metrics"]
