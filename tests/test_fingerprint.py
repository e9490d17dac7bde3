"""Dataset fingerprints: what decides a trained model changes the key, nothing else does."""

from __future__ import annotations

import pytest
from torch.utils.data import ConcatDataset, Subset

from nbsupport.data.datasets import FundusDataset
from nbsupport.data.fingerprint import fingerprint, item_keys
from nbsupport.vit.experiment import label_subset


def ds(**kw):
    args = dict(n=20, split="train", image_size=32, seed=0)
    args.update(kw)
    return FundusDataset(**args)


def test_the_same_data_has_the_same_fingerprint_across_objects():
    assert fingerprint(ds()) == fingerprint(ds())
    assert fingerprint(label_subset(ds(), 1.0)) == fingerprint(ds())       # all of it is the same data


def test_split_seed_size_camera_and_labels_change_the_fingerprint():
    base = fingerprint(ds())
    assert fingerprint(ds(split="test")) != base
    assert fingerprint(ds(seed=1)) != base
    assert fingerprint(ds(image_size=64)) != base
    assert fingerprint(ds(camera="clinic_dim_bluish")) != base
    relabelled = ds()
    relabelled.targets = [(t + 1) % 5 for t in relabelled.targets]
    assert fingerprint(relabelled) != base
    assert fingerprint(label_subset(ds(), 0.5)) != base


def test_a_new_version_of_the_masks_changes_only_segmentation_fingerprints(monkeypatch):
    from nbsupport.data import fundus

    seg, cls = fingerprint(ds(task="segmentation")), fingerprint(ds())
    monkeypatch.setattr(fundus, "MASKS_VERSION", fundus.MASKS_VERSION + 1)
    assert fingerprint(ds(task="segmentation")) != seg      # trained on other masks: never resumed
    assert fingerprint(ds()) == cls                           # the images did not change


def test_subsets_and_concatenations_are_identified_item_by_item():
    a, b = ds(), ds(split="val")
    sub = Subset(a, [3, 1])
    assert item_keys(sub) == [a.seeds[3], a.seeds[1]]
    assert item_keys(ConcatDataset([sub, b])) == [a.seeds[3], a.seeds[1], *b.seeds]
    assert fingerprint(ConcatDataset([sub, b])) != fingerprint(ConcatDataset([b, sub]))


# ----------------------------------------------------------------------------- run keys and the lr rule


@pytest.fixture(scope="module")
def smoke_setup():
    from nbsupport.vit import experiment

    bb = experiment.make_backbone("smoke", num_classes=5)
    return experiment, bb, experiment.load_classification_data("fundus-procedural", "smoke", bb)


def test_the_lr_grid_picks_by_validation_and_its_runs_are_reused(smoke_setup, capsys):
    experiment, bb, data = smoke_setup
    lr, grid = experiment.choose_lr("bitfit", bb, data, "smoke", "cpu", epochs=1, factors=(1.0, 3.0))
    assert set(grid) == {1e-3, 3e-3} and grid[lr] == max(grid.values())
    capsys.readouterr()
    rows = experiment.run_seeds("bitfit", bb, data, "smoke", "test", "cpu", [0], epochs=1, lr=lr, record=False)
    assert rows[0]["lr"] == lr and "reusing the finished run" in capsys.readouterr().err   # the grid's run


def test_a_changed_split_never_resumes_an_old_model(smoke_setup, capsys):
    experiment, bb, data = smoke_setup
    first = experiment.run_method("linear", bb, data, "smoke", "a", "cpu", record=False, progress=False,
                                  train_config=experiment.default_train_config("smoke", "linear", epochs=1))
    again = experiment.run_method("linear", bb, data, "smoke", "b", "cpu", record=False, progress=True,
                                  train_config=experiment.default_train_config("smoke", "linear", epochs=1))
    assert again["checkpoint"] == first["checkpoint"] and "reusing" in capsys.readouterr().err
    moved = experiment.ClassificationData(label_subset(data.train, 0.5), data.val, data.test, data.num_classes,
                                          data.classes, data.dataset)
    other = experiment.run_method("linear", bb, moved, "smoke", "a", "cpu", record=False, progress=False,
                                  train_config=experiment.default_train_config("smoke", "linear", epochs=1))
    assert other["checkpoint"] != first["checkpoint"] and "reusing" not in capsys.readouterr().err


def test_predictions_on_test_reproduce_each_runs_recorded_kappa(smoke_setup):
    experiment, bb, data = smoke_setup
    rows = experiment.run_seeds("linear", bb, data, "smoke", "test", "cpu", [0, 1], epochs=1, record=False)
    preds, labels = experiment.predictions_on_test(rows, bb, data, "cpu")
    assert preds.shape == (2, len(data.test)) and labels.shape == (len(data.test),)
    assert labels.tolist() == [int(data.test[i][1]) for i in range(len(data.test))]
    from nbsupport.vit.metrics import quadratic_weighted_kappa
    assert [quadratic_weighted_kappa(labels, p, data.num_classes) for p in preds] == [r["test_kappa"] for r in rows]
    wrong = dict(rows[0], test_kappa=rows[0]["test_kappa"] + 0.1)          # a row that another checkpoint scored
    with pytest.raises(RuntimeError, match="checkpoint scores test Kappa .* the run recorded"):
        experiment.predictions_on_test([wrong], bb, data, "cpu")


def test_segmentation_counts_on_test_reproduce_each_runs_recorded_dice(smoke_setup):
    from nbsupport.vit.segmentation import pooled_dice

    experiment, bb, _ = smoke_setup
    data = experiment.load_segmentation_data("fundus-clinic-seg", "smoke", bb)
    rows = experiment.run_seeds("linear", bb, data, "smoke", "test", "cpu", [0, 1], epochs=1, record=False)
    counts = experiment.segmentation_counts_on_test(rows, bb, data, "cpu")
    assert counts.shape == (2, len(data.test), len(data.classes), 3)
    assert [float(pooled_dice(c.sum(0))) for c in counts] == pytest.approx([r["test_dice"] for r in rows], abs=1e-12)
    wrong = dict(rows[0], test_dice=rows[0]["test_dice"] + 0.1)
    with pytest.raises(RuntimeError, match="checkpoint scores test Dice .* the run recorded"):
        experiment.segmentation_counts_on_test([wrong], bb, data, "cpu")
