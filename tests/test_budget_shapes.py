"""Every budget is exercised: the chapters' models at the ``gpu`` and ``full`` budgets' shapes
(widths, the chapter-specific variants of them) train two steps and code a real image on the
CPU, on small crops, so that a shape or memory bug on a path no CI machine runs at full size
is caught here. The notebooks' per-budget settings name every budget."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lictutor import distill, models, zoo
from lictutor.budget import BUDGETS, get_budget
from lictutor.config import budget_config
from lictutor.evaluate import compress_image, decompress_image
from lictutor.train import fit_entropy_model, train

BIG = ("gpu", "full")
SMALL = dict(steps=2, warmup=1, batch=2, crop=64)  # the budget's widths on small crops
IMAGE = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
BOOK = Path(__file__).resolve().parent.parent / "book"


def codes(model, name):
    """One real compress/decompress of a small image: the decoded image has its size."""
    blob = compress_image(model, IMAGE, name)
    assert decompress_image(model, blob, name).shape == IMAGE.shape


@pytest.mark.parametrize("budget", BIG)
@pytest.mark.parametrize("family", sorted(models.MODELS))
def test_each_family_trains_and_codes_at_the_budgets_widths(budget, family):
    b = get_budget(budget)
    config = budget_config(b, b.lmbdas[0], model=family, **SMALL)
    assert config.model_args.get("N", b.N) == b.N
    model, ckpt = train(config, cache=False, progress=False, log_every=1)
    assert len(ckpt["history"]) == 2 and all(np.isfinite(h["loss"]) for h in ckpt["history"])
    codes(model, family)


@pytest.mark.slow
@pytest.mark.parametrize("budget", BIG)
def test_the_chapters_variants_at_the_budgets_widths(budget):
    b = get_budget(budget)
    lmbda = b.lmbdas[0]
    # chapters 3, 4 and 7: the two-stage warm start from the factorized transforms
    factorized, _ = train(budget_config(b, lmbda, **SMALL), cache=False, progress=False)
    for family, warm in (("mean-scale", zoo.transforms_of), ("fast", zoo.fast_transforms_of)):
        fit, joint = zoo.hyperprior_stages(b, lmbda, family, **SMALL)
        stage1, _ = fit_entropy_model(fit, warm(factorized), cache=False, progress=False)
        model, _ = train(joint, init_from=stage1.state_dict(), cache=False, progress=False)
        codes(model, family)
    # chapter 4: the bottleneck sweep, M/4 and 2M
    for M in (b.M // 4, b.M * 2):
        config = budget_config(b, lmbda, model="mean-scale", model_args={"N": b.N, "M": M}, **SMALL)
        codes(train(config, cache=False, progress=False)[0], "mean-scale")
    # chapter 5b: a narrow student distilled from a teacher at the budget's widths
    teacher, _ = train(budget_config(b, lmbda, model="hyperprior", **SMALL), cache=False, progress=False)
    recipes = distill.distill_recipes((1.0,), kl_weight=0.1, K=16 if budget == "full" else 8)
    base = budget_config(b, lmbda, model="hyperprior", **SMALL)
    student_config = replace(base, model_args={**base.model_args, "N": b.N // 8})
    for name in ("latent+output", "latent+output+KL T=1"):
        student, ckpt = distill.train_student(student_config, recipes[name], teacher, cache=False, progress=False,
                                              log_every=1)
        assert all(np.isfinite(h["loss"]) for h in ckpt["history"])
        codes(student, "hyperprior")


def test_the_notebooks_per_budget_settings_name_every_budget():
    """A ``{"smoke": …, "cpu": …}[budget.name]`` that misses a budget fails at that budget only:
    find every such table in the chapters and check its keys."""
    tables = 0
    for path in sorted(BOOK.glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for table in re.findall(r"\{([^{}]*)\}\[budget\.name\]", "".join(cell["source"])):
                keys = set(re.findall(r"\"(\w+)\"\s*:", table))
                assert keys == set(BUDGETS), f"{path.name}: {{{table}}}[budget.name] lacks {set(BUDGETS) - keys}"
                tables += 1
    assert tables >= 2


def test_a_training_step_at_the_gpu_budget_fits_a_t4():
    """The largest family's activations for one step of the gpu budget's real batch and crop,
    counted on the CPU (``lictutor.profile.peak_memory``), stay well inside a T4's 16 GB."""
    from lictutor.losses import RateDistortionLoss
    from lictutor.profile import peak_memory

    b = get_budget("gpu")
    model = models.create("fast", N=b.N, M=b.M).train()
    x = torch.rand(b.batch, 3, b.crop, b.crop)
    loss = RateDistortionLoss(b.lmbdas[0])
    peak = peak_memory(lambda: loss(model(x), x)["loss"].backward())
    assert peak < 4e9, f"{peak / 1e9:.1f} GB"
