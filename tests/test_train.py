"""Metrics against scikit-learn; the training loop learns, keeps the best model, and resumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, f1_score

from nbsupport.vit import methods
from nbsupport.vit.backbones import create_vit
from nbsupport.data.datasets import build_dataset
from nbsupport.vit.metrics import (bootstrap_counts, classification_metrics, multilabel_metrics,
                                  paired_bootstrap_kappa, quadratic_weighted_kappa, quadratic_weighted_kappa_rows)
from nbsupport.vit.train import TrainConfig, train_classifier


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, 200)
    p = np.clip(t + rng.integers(-2, 3, 200), 0, 4)
    assert quadratic_weighted_kappa(t, p, 5) == pytest.approx(cohen_kappa_score(t, p, weights="quadratic"), abs=1e-12)


def test_kappa_edge_cases():
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == pytest.approx(1.0)
    assert quadratic_weighted_kappa([0, 4], [4, 0], 5) < 0
    assert quadratic_weighted_kappa([2, 2], [2, 2], 5) == 0.0


def test_kappa_rows_match_sklearn_row_by_row():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, (40, 30))
    p = np.clip(t + rng.integers(-2, 3, t.shape), 0, 4)
    p[3] = 2                                                     # one rater uses a single grade: Kappa 0
    t[7] = p[7] = 1                                              # both: undefined, 0 by convention
    got = quadratic_weighted_kappa_rows(t, p, 5)
    want = [quadratic_weighted_kappa(a, b, 5) for a, b in zip(t, p)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == pytest.approx(cohen_kappa_score(t[0], p[0], weights="quadratic"), abs=1e-12)


def test_paired_bootstrap_resamples_the_test_set_once_for_every_method():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    good = np.stack([np.where(rng.random(300) < 0.8, y, rng.integers(0, 5, 300)) for _ in range(3)])   # [S, N]
    noisy = np.stack([np.where(rng.random(300) < 0.5, y, rng.integers(0, 5, 300)) for _ in range(3)])
    out = paired_bootstrap_kappa(y, {"good": good, "same": good, "noisy": noisy, "one seed": good[0]}, 5,
                                 n_resamples=500, seed=0)
    assert {k: v.shape for k, v in out.items()} == {k: (500,) for k in out}
    assert np.array_equal(out["good"], out["same"])             # paired: identical predictions, zero gap
    full = np.mean([quadratic_weighted_kappa(y, s, 5) for s in good])
    assert abs(np.median(out["good"]) - full) < 0.02 and out["good"].std() > 0.005   # centred, and it does vary
    lo, hi = np.percentile(out["good"] - out["noisy"], [2.5, 97.5])
    assert lo > 0                                               # a large gap stays clear of 0
    again = paired_bootstrap_kappa(y, {"good": good}, 5, n_resamples=500, seed=0)
    assert np.array_equal(again["good"], out["good"])           # seeded
    idx = np.repeat(np.arange(300), bootstrap_counts(300, 500, seed=0)[7])    # resample 7 by hand
    assert out["noisy"][7] == pytest.approx(np.mean([quadratic_weighted_kappa(y[idx], s[idx], 5) for s in noisy]))
    with pytest.raises(ValueError, match=r"predictions\['short'\] has 299 images per seed, the labels 300"):
        paired_bootstrap_kappa(y, {"short": good[:, :299]}, 5)
    with pytest.raises(ValueError, match="at least one image and one resample, got n=0"):
        bootstrap_counts(0, 10)


def test_bootstrap_by_patient_draws_both_eyes_together():
    plain = bootstrap_counts(6, 400, seed=3)
    assert plain.shape == (400, 6) and (plain.sum(1) == 6).all()                 # n images per resample
    assert np.array_equal(bootstrap_counts(6, 400, seed=3, groups=list("abcdef")), plain)   # own groups: the same
    eyes = ["p1", "p1", "p2", "p3", "p3", "p4"]                                  # patients p1 and p3: two eyes each
    by_patient = bootstrap_counts(6, 400, seed=3, groups=eyes)
    assert np.array_equal(by_patient[:, 0], by_patient[:, 1]) and np.array_equal(by_patient[:, 3], by_patient[:, 4])
    assert (by_patient[:, [0, 2, 3, 5]].sum(1) == 4).all()                        # 4 patient draws per resample
    assert not np.array_equal(plain[:, 0], plain[:, 1])                          # images alone: drawn apart
    with pytest.raises(ValueError, match="groups has 5 entries for 6 images"):
        bootstrap_counts(6, 10, groups=eyes[:5])
    # a patient's eyes agree with each other: drawing them apart understates the test set's noise
    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 5, 150), 2)                                    # [300]: 150 patients, 2 eyes
    pred = np.repeat(np.where(rng.random(150) < 0.6, y[::2], rng.integers(0, 5, 150)), 2)
    wide = paired_bootstrap_kappa(y, {"m": pred}, 5, n_resamples=800, seed=0, groups=np.arange(300) // 2)["m"]
    narrow = paired_bootstrap_kappa(y, {"m": pred}, 5, n_resamples=800, seed=0)["m"]
    assert wide.std() > 1.2 * narrow.std()


def test_classification_metrics_perfect():
    y = np.array([0, 1, 2, 3, 4, 0])
    probs = np.eye(5)[y]
    m = classification_metrics(y, probs, 5)
    assert m == {"accuracy": 1.0, "kappa": pytest.approx(1.0), "auc": 1.0, "f1": 1.0}
    three = np.array([0, 1, 2, 0])                   # grades 3 and 4 neither held nor predicted: no F1 to average
    assert classification_metrics(three, np.eye(5)[three], 5)["f1"] == 1.0
    pred = np.array([0, 1, 1, 3])                    # a wrong grade 3 counts (sklearn's default label set)
    assert classification_metrics(three, np.eye(5)[pred], 5)["f1"] == pytest.approx(
        f1_score(three, pred, average="macro", zero_division=0))


def test_multilabel_f1_skips_findings_nobody_has():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert multilabel_metrics(y, y * 0.9)["f1"] == 1.0                           # finding 3: absent, never predicted


def test_kappa_refuses_grades_outside_its_classes():
    with pytest.raises(ValueError, match=r"y_pred holds grade 3, outside 0..2 \(num_classes=3\)"):
        quadratic_weighted_kappa([0, 1, 2, 0], [0, 1, 2, 3], 3)
    with pytest.raises(ValueError, match="y_true holds grade -1"):
        quadratic_weighted_kappa([-1, 1], [0, 1], 3)


def data(n_train=24):
    kw = dict(image_size=32)
    return (build_dataset("fundus-procedural", "train", limit=n_train, **kw),
            build_dataset("fundus-procedural", "val", limit=10, **kw),
            build_dataset("fundus-procedural", "test", limit=10, **kw))


def model(method="dvpt", seed=0):
    torch.manual_seed(seed)
    m = create_vit("vit_tiny_patch16_224", num_classes=5, pretrained=False, img_size=32, tiny=True)
    return methods.adapt(m, method)


def test_training_lowers_the_loss_and_tests_the_best():
    tr, va, te = data(32)
    res = train_classifier(model("full"), tr, va, te, 5, TrainConfig(epochs=4, lr=1e-3, batch_size=8, warmup_epochs=0.5),
                           progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert 1 <= res.best_epoch <= 4 and set(res.test) == {"accuracy", "kappa", "auc", "f1"}
    assert res.best_val["kappa"] == max(h["val_kappa"] for h in res.history)
    assert res.steps == 16 and res.step_time_s > 0


def test_resume_continues_from_the_saved_epoch(tmp_path):
    tr, va, te = data()
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=8, warmup_epochs=0.5)
    straight = model(seed=5)
    ref = train_classifier(straight, tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    interrupted = model(seed=5)
    part = train_classifier(interrupted, tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "b",
                            progress=False, stop_after_epochs=1)
    assert len(part.history) == 1 and part.test == {}
    resumed_model = model(seed=5)   # a fresh process: rebuilt model, state from disk
    res = train_classifier(resumed_model, tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert res.resumed_from_epoch == 1 and res.steps == 3 * 3   # optimisation steps of the whole run
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    for a, b in zip(ref.history, res.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    sa = methods.trainable_state_dict(straight)
    sb = methods.trainable_state_dict(resumed_model)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert res.test == pytest.approx(ref.test)


def test_multi_label_training_uses_bce_and_auc(tmp_path):
    """Findings (multi-hot targets) train with a sigmoid/BCE loss and select on macro AUC."""
    from PIL import Image

    from nbsupport.data.manifests import load_manifest
    from nbsupport.data.datasets import ImageListDataset, list_items

    (tmp_path / "img").mkdir()
    rows = ["file,A,B"]
    rng = np.random.default_rng(0)
    for i in range(30):
        a, b = i % 2, (i // 2) % 2
        img = np.zeros((32, 32, 3), np.uint8)
        img[:, :, 0] = 200 * a + rng.integers(0, 30)
        img[:, :, 1] = 200 * b + rng.integers(0, 30)
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"{i}.png,{a}.0,{b}.0")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest({"name": "ml", "title": "t", "tasks": ["classification"], "modality": "x", "license": "-",
                       "citation": "-", "findings": ["A", "B"], "label_columns": ["A", "B"], "multi_label": True,
                       "source": {"type": "csv", "path": str(tmp_path / "l.csv"), "image_root": str(tmp_path / "img"),
                                  "image_column": "file", "positive_values": ["1.0"]},
                       "splits": {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 0}})
    items = list_items(m)
    ds = {s: ImageListDataset([it for it in items if it.split == s], m, image_size=32) for s in ("train", "val", "test")}
    torch.manual_seed(0)
    net = methods.adapt(create_vit("vit_tiny_patch16_224", num_classes=2, pretrained=False, img_size=32, tiny=True), "full")
    res = train_classifier(net, ds["train"], ds["val"], ds["test"], 2,
                           TrainConfig(epochs=3, lr=1e-3, batch_size=6, warmup_epochs=0.5), progress=False)
    assert "auc" in res.test and "kappa" not in res.test and set(res.test["per_finding_auc"]) <= {0, 1}
    assert res.best_val["auc"] == max(h["val_auc"] for h in res.history if h["val_auc"] == h["val_auc"])


def test_a_kill_while_publishing_a_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    """Killed after epoch 2's files are written but before its manifest: the resume starts from
    epoch 1's consistent checkpoint and ends where an uninterrupted run ends."""
    from nbsupport.core import checkpoints

    tr, va, te = data()
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=8, warmup_epochs=0.5)
    straight = model(seed=5)
    ref = train_classifier(straight, tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    real_write, calls = checkpoints.write_json, []

    def dying_write(path, payload, indent=1):
        if str(path).endswith("last.json"):
            calls.append(payload["state"]["epoch"])
            if payload["state"]["epoch"] == 2:
                raise KeyboardInterrupt("killed while publishing epoch 2")
        return real_write(path, payload, indent)

    monkeypatch.setattr(checkpoints, "write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(model(seed=5), tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    monkeypatch.undo()
    assert calls == [1, 2]
    resumed = model(seed=5)
    res = train_classifier(resumed, tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert res.resumed_from_epoch == 1 and [h["epoch"] for h in res.history] == [1, 2, 3]
    sa, sb = methods.trainable_state_dict(straight), methods.trainable_state_dict(resumed)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert res.test == pytest.approx(ref.test)


def test_a_truncated_checkpoint_names_its_folder_and_the_fix(tmp_path):
    from nbsupport.core.checkpoints import CheckpointError

    tr, va, te = data()
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, warmup_epochs=0.5)
    train_classifier(model(), tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "run", progress=False, stop_after_epochs=1)
    (weights,) = [p for p in (tmp_path / "run").glob("last-*.safetensors") if "optimizer" not in p.name]
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'run'}.*delete"):
        train_classifier(model(), tr, va, te, 5, cfg, checkpoint_dir=tmp_path / "run", progress=False)


def test_optimizer_steps_counts_what_training_takes():
    from dataclasses import replace

    from nbsupport.vit.experiment import optimizer_steps

    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=4, warmup_epochs=0.5)
    tr, va, _ = data(6)                                   # 2 batches per epoch, the second partial
    assert optimizer_steps(6, cfg) == 6 == train_classifier(model("bitfit"), tr, va, None, 5, cfg, progress=False).steps
    assert optimizer_steps(6, replace(cfg, compile="cudagraphs")) == 6             # the partial batch too
    assert optimizer_steps(3, replace(cfg, compile="cudagraphs")) == 3


def test_cudagraphs_mode_trains_like_eager_and_runs_partial_batches_eagerly(monkeypatch):
    """compile="cudagraphs" hands the graph one batch shape; the epoch's partial batch runs on the
    plain model. On the CPU the compiled model is traced with the aot_eager backend (the CUDA graph
    itself needs a GPU); the losses and metrics are the eager run's."""
    from dataclasses import replace

    real, seen = torch.compile, []

    def recording(m, mode=None, **kwargs):
        compiled = real(m, backend="aot_eager")

        def run(x):
            seen.append(x.shape[0])
            return compiled(x)
        return run

    monkeypatch.setattr(torch, "compile", recording)
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=4, warmup_epochs=0.5)
    tr, va, _ = data(6)                                   # a full batch of 4, then 2
    eager = train_classifier(model("lora"), tr, va, None, 5, cfg, progress=False)
    graphs = train_classifier(model("lora"), tr, va, None, 5, replace(cfg, compile="cudagraphs"), progress=False)
    assert seen == [4, 4] and graphs.steps == eager.steps == 4
    assert [h["train_loss"] for h in graphs.history] == pytest.approx([h["train_loss"] for h in eager.history], rel=1e-5)
    with pytest.raises(ValueError, match="grad_accum=2.*grad_accum=1"):
        train_classifier(model("lora"), tr, va, None, 5, replace(cfg, compile="cudagraphs", grad_accum=2), progress=False)


def test_difference_is_the_books_yardstick_and_says_when_one_seed_cannot_tell():
    from nbsupport.vit.experiment import difference

    assert difference(0.68, 0.03, 0.6, 0.04) == (pytest.approx(0.08), pytest.approx(0.05), False)  # 0.08 <= 2 x 0.05
    assert difference(0.4, 0.01, 0.65, 0.006)[2] is True
    assert difference(0.7, float("nan"), 0.6, float("nan"))[2] is None                          # one seed: no noise estimate
    from nbsupport.vit.experiment import near_threshold, versus

    assert near_threshold(0.0196, 0.0092) and near_threshold(-0.0196, 0.0092)   # 0.0196 vs 0.0184: either sign
    assert near_threshold(0.0170, 0.0092) and not near_threshold(0.0250, 0.0092)
    assert not near_threshold(0.0196, float("nan"))                                 # one seed: no threshold
    from nbsupport.vit.experiment import seed_verdict

    assert [seed_verdict(*difference(*ab)) for ab in [(0.80, 0.005, 0.77, 0.005), (0.769, 0.006, 0.7494, 0.0072),
                                                       (0.78, 0.01, 0.77, 0.01), (0.8, float("nan"), 0.7, float("nan"))]
            ] == ["beyond", "barely beyond", "within", "one seed"]
    close = pd.DataFrame({"test_kappa": [0.769, 0.7494], "test_kappa_std": [0.006, 0.0072]}, index=["a", "b"])
    assert versus(close, "a", "b").endswith(
        "beyond the seed noise, but by less than a tenth of the threshold: not separated (twice the seeds' spread: 0.019)")
    from nbsupport.vit.experiment import versus

    t = pd.DataFrame({"test_kappa": [0.68, 0.6], "test_kappa_std": [0.03, 0.04]}, index=["DVPT", "LoRA"])
    assert versus(t, "DVPT", "LoRA") == "DVPT - LoRA: +0.080 Kappa, within the seed noise (twice the seeds' spread: 0.100)"
