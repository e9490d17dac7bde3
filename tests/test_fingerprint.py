"""Dataset fingerprints: what decides a trained model changes the key, nothing else does."""

from __future__ import annotations

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


def test_subsets_and_concatenations_are_identified_item_by_item():
    a, b = ds(), ds(split="val")
    sub = Subset(a, [3, 1])
    assert item_keys(sub) == [a.seeds[3], a.seeds[1]]
    assert item_keys(ConcatDataset([sub, b])) == [a.seeds[3], a.seeds[1], *b.seeds]
    assert fingerprint(ConcatDataset([sub, b])) != fingerprint(ConcatDataset([b, sub]))
