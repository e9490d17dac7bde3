"""Segmentation: Dice/IoU against scikit-learn, the decoder's shapes, every method's trainable set
on the segmentation model, one loop with classification, and real mask folders' bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from nbsupport.data import fundus
from nbsupport.data.datasets import DataError, build_dataset, verify
from nbsupport.vit import methods
from nbsupport.vit.segmentation import SegmentationModel, dice_iou, segmentation_loss

SMALL = dict(pretrained=False, num_classes=0, depth=2, embed_dim=48, num_heads=3)


def test_dice_and_iou_equal_scikit_learns_f1_and_jaccard():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(0)
    target = rng.random((6, 3, 16, 16)) < 0.3
    pred = target ^ (rng.random(target.shape) < 0.2)
    out = dice_iou(pred, target, ["a", "b", "c"])
    for k, name in enumerate("abc"):
        t, p = target[:, k].ravel(), pred[:, k].ravel()
        assert out["dice_per_class"][name] == pytest.approx(f1_score(t, p))
        assert out["iou_per_class"][name] == pytest.approx(jaccard_score(t, p))
    assert out["dice"] == pytest.approx(np.mean([f1_score(target[:, k].ravel(), pred[:, k].ravel()) for k in range(3)]))
    empty = dice_iou(np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 4), bool))
    assert empty["dice"] == 1.0 and empty["iou"] == 1.0          # nothing to find, nothing found


@pytest.mark.parametrize("size, patch, detail", [(64, 8, 16), (32, 16, 16), (32, 16, 0)])
def test_decoder_output_has_the_masks_shape(size, patch, detail):
    vit = methods.adapt(timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=patch, **SMALL), "lora")
    model = SegmentationModel(vit, num_classes=4, detail=detail)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 4, size, size)
    assert (model.decoder.detail is None) == (detail == 0)
    assert model.decoder.out.in_channels == 32 + detail
    assert model.nbsupport_method["decoder"].get("detail", 0) == detail      # the stem is part of the run key


def test_the_detail_stem_reaches_single_pixels():
    """A token stands for a whole patch, so a one-pixel change moves a token-only decoder's logits
    over the patch alike; through the detail stem (its 5x5 receptive field) it moves the pixel's own
    logit, and far less elsewhere."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    bumped = x.clone()
    bumped[0, :, 9, 9] += 3.0
    vit = methods.adapt(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, **SMALL), "linear")
    model = SegmentationModel(vit, num_classes=1, detail=16).eval()
    with torch.no_grad():
        model.decoder.out.weight[:, :32] = 0                  # silence the token path: the stem alone
        d_stem = (model(bumped) - model(x)).abs()[0, 0]
        model = SegmentationModel(vit, num_classes=1, detail=0).eval()
        d_tokens = (model(bumped) - model(x)).abs()[0, 0]
    far = torch.ones(32, 32, dtype=torch.bool)
    far[7:12, 7:12] = False                                   # outside the stem's receptive field
    assert d_stem[9, 9] > 50 * d_stem[far].max()             # only GroupNorm's statistics leak further
    share = {name: (d[9, 9] / d.sum()).item() for name, d in (("stem", d_stem), ("tokens", d_tokens))}
    assert share["stem"] > 10 * share["tokens"]               # the token path spreads the change over the patch
@pytest.mark.parametrize("method", list(methods.METHODS))
def test_each_methods_trainable_set_on_the_segmentation_model(method):
    cfg = {"dvpt": {"bottleneck": 12, "heads": 2}, "adaptformer": {"bottleneck": 8}}.get(method, {})
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL)
    backbone_only = {n for n, p in methods.adapt(
        timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL), method, **cfg
    ).named_parameters() if p.requires_grad}
    model = SegmentationModel(methods.adapt(vit, method, **cfg), num_classes=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    assert decoder <= trainable and trainable == decoder | {f"backbone.{n}" for n in backbone_only}
    if method == "linear":
        assert trainable == decoder                       # "decoder only": a frozen backbone
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    y = (torch.rand(2, 3, 32, 32) < 0.2).float()
    segmentation_loss(model(torch.randn(2, 3, 32, 32)), y).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_dvpt_cls_injection_is_refused_for_dense_tasks():
    vit = methods.adapt(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL), "dvpt",
                        inject="cls", bottleneck=12, heads=2)
    with pytest.raises(ValueError, match="inject='tokens'"):
        SegmentationModel(vit, 2)


def test_procedural_masks_reach_the_dataset():
    ds = build_dataset("fundus-clinic-seg", "train", task="segmentation", image_size=64, limit=3)
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and y.shape == (4, 64, 64) and ds.mask_kinds[:2] == ["vessels", "optic_disc"]
    s = fundus.generate_fundus(ds.seeds[1], ds.grades[1], 64, "clinic_dim_bluish")
    assert torch.equal(y[0].bool(), torch.from_numpy(s.masks["vessels"]))


def test_one_loop_trains_segmentation(tmp_path):
    from nbsupport.vit.train import TrainConfig, train_classifier

    ds = build_dataset("fundus-clinic-seg", "train", task="segmentation", image_size=32, limit=8)
    vit = methods.adapt(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL), "full")
    model = SegmentationModel(vit, 4)
    res = train_classifier(model, ds, ds, ds, 4, TrainConfig(epochs=3, batch_size=4, lr=3e-3, amp=False),
                           checkpoint_dir=tmp_path / "ck", progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert 0 <= res.test["dice"] <= 1 and set(res.test["dice_per_class"]) == set(ds.mask_kinds)


# ----------------------------------------------------------------------------- real mask folders

def pairs_manifest(tmp_path, mask_map, **layout):
    from nbsupport.data.manifests import load_manifest

    return load_manifest({
        "name": "mine", "title": "T", "modality": "endoscopy", "license": "CC0", "citation": "-",
        "tasks": ["segmentation"], "findings": list(mask_map),
        "source": {"type": "pairs", "images": str(tmp_path / "images"), "masks": str(tmp_path / "masks"),
                   "mask_map": mask_map, **layout},
        "splits": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}})


def write_pair(tmp_path, name, mask, size=(16, 16), mode="L"):
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), 100, np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
    Image.fromarray(mask, mode).save(tmp_path / "masks" / f"{name}.png")


def test_index_and_colour_masks_become_one_channel_per_kind(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[:8] = 1
    m[12:] = 2
    for i in range(4):
        write_pair(tmp_path, f"a{i}", m)
    ds = build_dataset(pairs_manifest(tmp_path, {"disc": 1, "cup": 2}), "train", task="segmentation", image_size=16)
    _, y = ds[0]
    assert y.shape == (2, 16, 16) and y[0, :8].all() and not y[0, 8:].any() and y[1, 12:].all()
    colour = tmp_path / "c"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:4] = (255, 0, 0)
    for i in range(4):
        write_pair(colour, f"b{i}", rgb, mode="RGB")
    ds = build_dataset(pairs_manifest(colour, {"polyp": [255, 0, 0]}), "test", task="segmentation", image_size=8)
    assert ds[0][1].shape == (1, 8, 8) and ds[0][1][0, :2].all()


def test_bad_mask_pairs_are_named(tmp_path):
    ok = np.zeros((16, 16), np.uint8)
    noisy = tmp_path / "n"
    m = np.zeros((16, 16), np.uint8)
    m[0, 0] = 37                                   # a value that is neither background nor in the map
    for i in range(4):
        write_pair(noisy, f"n{i}", m)
    ds = build_dataset(pairs_manifest(noisy, {"lesion": 255}), "train", task="segmentation", image_size=16)
    with pytest.raises(DataError, match=r"field 'source.mask_map': .*values \[37\].*mask_tolerance"):
        ds[0]                                      # the field as the manifest spells it (no 'layout' here)
    with pytest.raises(DataError, match=r"n0.png: field 'source.mask_map'"):
        verify(pairs_manifest(noisy, {"lesion": 255}))       # `nbsupport data verify` opens every mask too
    assert build_dataset(pairs_manifest(noisy, {"lesion": 255}, mask_tolerance=40), "train",
                         task="segmentation", image_size=16)[0][1].sum() == 0
    orphan = tmp_path / "o"
    for i in range(3):
        write_pair(orphan, f"o{i}", ok)
    (orphan / "masks" / "o1.png").unlink()
    with pytest.raises(DataError, match="have no mask"):
        build_dataset(pairs_manifest(orphan, {"lesion": 255}), "train", task="segmentation", image_size=16)


def test_misaligned_pair_is_refused(tmp_path):
    for i in range(4):
        write_pair(tmp_path, f"w{i}", np.zeros((8, 16), np.uint8))
    ds = build_dataset(pairs_manifest(tmp_path, {"lesion": 255}), "train", task="segmentation", image_size=16)
    with pytest.raises(DataError, match="mask is 16x8 but its image is 16x16: a misaligned pair"):
        ds[0]
    with pytest.raises(DataError, match="field 'source.masks': mask is 16x8"):
        verify(pairs_manifest(tmp_path, {"lesion": 255}))


def test_a_pairs_set_has_a_fingerprint_that_follows_its_masks(tmp_path):
    from nbsupport.data.fingerprint import fingerprint

    m = np.zeros((16, 16), np.uint8)
    for i in range(4):
        write_pair(tmp_path, f"p{i}", m)
    manifest = pairs_manifest(tmp_path, {"lesion": 255})
    before = fingerprint(build_dataset(manifest, "train", task="segmentation", image_size=16))   # targets: None
    m[4:8, 4:8] = 255                                           # an edited mask is new labels
    for i in range(4):
        Image.fromarray(m, "L").save(tmp_path / "masks" / f"p{i}.png")
    assert fingerprint(build_dataset(manifest, "train", task="segmentation", image_size=16)) != before


@pytest.mark.parametrize("name, images, masks, mask_name, kind", [
    ("isic2016-seg", "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth",
     "{}_Segmentation.png", "lesion"),
    ("kvasir-seg", "Kvasir-SEG/images", "Kvasir-SEG/masks", "{}.jpg", "polyp"),
])
def test_shipped_mask_manifests_read_their_published_layout(name, images, masks, mask_name, kind):
    from nbsupport.core.paths import data_dir

    root = data_dir(name)
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for i in range(12):
        stem = f"ISIC_{i:07d}" if name.startswith("isic") else f"cju{i:04d}"
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / images / f"{stem}.jpg")
        m = np.zeros((20, 30), np.uint8)
        m[5:15, 10:20] = 255
        Image.fromarray(m).save(root / masks / mask_name.format(stem), quality=70)   # JPEG noise for Kvasir
    ds = build_dataset(name, "train", task="segmentation", image_size=16)
    x, y = ds[0]
    assert ds.mask_kinds == [kind] and y.shape == (1, 16, 16) and 0.1 < y.mean() < 0.4


def test_red_on_black_masks_in_a_csv_are_read_as_masks(tmp_path):
    # IDRiD's lesion masks are red on black: their grey value (76) is below a grey threshold of 127
    from nbsupport.data.manifests import load_manifest

    (tmp_path / "img").mkdir()
    rows = ["image,od,split"]
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "img" / f"i{i}.jpg")
        m = np.zeros((16, 16, 3), np.uint8)
        m[4:8, 4:8] = (255, 0, 0)
        Image.fromarray(m).save(tmp_path / "img" / f"i{i}_OD.png")
        rows.append(f"i{i}.jpg,i{i}_OD.png,{'train' if i < 2 else 'test'}")
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    m = load_manifest({"name": "idrid-like", "title": "T", "modality": "fundus", "license": "-", "citation": "-",
                       "tasks": ["segmentation"], "findings": ["optic_disc"],
                       "source": {"type": "csv", "path": str(tmp_path / "index.csv"), "image_root": str(tmp_path / "img"),
                                  "image_column": "image", "mask_columns": ["od"]},
                       "splits": {"column": "split", "val_fraction": 0.5, "seed": 0}})
    _, y = build_dataset(m, "test", task="segmentation", image_size=16)[0]
    assert y.sum() == 16 and y[0, 4:8, 4:8].all()


def test_a_changed_decoder_is_a_new_run_not_a_resumed_one(tmp_path):
    from nbsupport.core.checkpoints import CheckpointError
    from nbsupport.vit.train import TrainConfig, train_classifier

    ds = build_dataset("fundus-clinic-seg", "train", task="segmentation", image_size=32, limit=4)

    def model(width):
        vit = methods.adapt(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL), "linear")
        return SegmentationModel(vit, 4, width=width)

    assert model(16).nbsupport_method != model(32).nbsupport_method      # so run keys differ
    cfg = TrainConfig(epochs=1, batch_size=4, amp=False)
    train_classifier(model(16), ds, ds, None, 4, cfg, checkpoint_dir=tmp_path / "ck", progress=False)
    with pytest.raises(CheckpointError, match="other shapes"):           # never a silent shape mismatch
        train_classifier(model(32), ds, ds, None, 4, cfg, checkpoint_dir=tmp_path / "ck", progress=False)


def test_paired_bootstrap_dice_resamples_images_and_pools_their_pixels():
    from nbsupport.vit.metrics import bootstrap_counts
    from nbsupport.vit.segmentation import image_counts, paired_bootstrap_dice, pooled_dice

    rng = np.random.default_rng(1)
    target = rng.random((40, 3, 8, 8)) < 0.3
    good = target ^ (rng.random(target.shape) < 0.05)
    bad = target ^ (rng.random(target.shape) < 0.4)
    counts = {name: image_counts(p, target) for name, p in (("good", good), ("bad", bad))}
    assert counts["good"].shape == (40, 3, 3)
    assert pooled_dice(counts["good"].sum(0)) == pytest.approx(dice_iou(good, target)["dice"])   # one formula
    out = paired_bootstrap_dice({**counts, "same": counts["good"], "two seeds": np.stack([counts["good"]] * 2)},
                                n_resamples=300, seed=0)
    assert np.array_equal(out["good"], out["same"]) and np.allclose(out["good"], out["two seeds"])  # paired
    assert (out["good"] > out["bad"]).all()
    # resample 0 by hand: draw the same images, pool their pixels, score them as one test set
    idx = np.repeat(np.arange(40), bootstrap_counts(40, 300, seed=0)[0])   # the Kappa bootstrap's draws
    assert out["bad"][0] == pytest.approx(dice_iou(bad[idx], target[idx])["dice"])
    lo, hi = np.percentile(out["good"] - out["bad"], [2.5, 97.5])
    assert 0 < lo < hi
    eyes = np.arange(40) // 2                                  # by patient: two eyes drawn together
    grouped = paired_bootstrap_dice(counts, n_resamples=300, seed=0, groups=eyes)
    idx = np.repeat(np.arange(40), bootstrap_counts(40, 300, seed=0, groups=eyes)[5])
    assert grouped["bad"][5] == pytest.approx(dice_iou(bad[idx], target[idx])["dice"])
    with pytest.raises(ValueError, match="different numbers of test images or kinds"):
        paired_bootstrap_dice({"a": counts["good"], "b": counts["bad"][:39]})
    with pytest.raises(ValueError, match="different numbers of test images or kinds"):
        paired_bootstrap_dice({"a": counts["good"], "b": counts["bad"][:, :2]})
    with pytest.raises(ValueError, match=r"counts\['flat'\] has shape \(40, 9\)"):
        paired_bootstrap_dice({"flat": counts["good"].reshape(40, 9)})
    with pytest.raises(ValueError, match="at least one method"):
        paired_bootstrap_dice({})
