"""FID/KID through torch-fidelity with a domain extractor, Vendi against vendi-score, alignment,
and leakage checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

pytest.importorskip("torch_fidelity")

from nbsupport import evaluation  # noqa: E402
from nbsupport.data import leakage  # noqa: E402
from nbsupport.vit.backbones import create_vit  # noqa: E402
from nbsupport.data.fundus import generate_fundus  # noqa: E402


def closed_form_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_on_gaussian_features_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 4
    a = rng.normal(size=(d, d))
    s1 = a @ a.T / d + np.eye(d)
    s2 = np.diag([1.0, 2.0, 0.5, 1.5])
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    assert evaluation.fid_from_features(x1, x2) == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=0.02)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(500, 8))
    assert abs(evaluation.fid_from_features(x, x)) < 1e-6


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", num_classes=5, pretrained=False, img_size=32, tiny=True)
    name = evaluation.register_domain_extractor(model, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return name, model


def images(seed0, n, grade=None):
    return [generate_fundus(seed0 + i, (i % 5) if grade is None else grade, 32).image for i in range(n)]


def test_wrapper_equals_torch_fidelity_directly(extractor):
    import torch_fidelity

    name, model = extractor
    real, fake = evaluation.UInt8Images(images(0, 24)), evaluation.UInt8Images(images(500, 24, grade=4))
    ours = evaluation.fid_kid(real, fake, feature_extractor=name, feature_layer="features", kid_subset_size=12,
                              cuda=False)
    direct = torch_fidelity.calculate_metrics(input1=fake, input2=real, fid=True, kid=True, feature_extractor=name,
                                              feature_layer_fid="features", feature_layer_kid="features",
                                              kid_subset_size=12, cuda=False, verbose=False, cache=False)
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-9)
    assert ours["kid"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-9)
    assert all(p.requires_grad for p in model.parameters())     # registering did not freeze the caller's model


def test_domain_fid_of_a_set_with_itself_is_zero_and_grows_with_shift(extractor):
    name, _ = extractor
    real = evaluation.UInt8Images(images(0, 20))
    same = evaluation.fid_kid(real, real, feature_extractor=name, kid_subset_size=10, cuda=False)
    assert abs(same["fid"]) < 1e-4
    shifted = evaluation.UInt8Images([np.clip(im.astype(int) + 60, 0, 255).astype(np.uint8) for im in images(0, 20)])
    assert evaluation.fid_kid(real, shifted, feature_extractor=name, kid_subset_size=10, cuda=False)["fid"] > 1e-3


def test_vendi_equals_vendi_score_package():
    from vendi_score import vendi

    x = np.random.default_rng(2).normal(size=(40, 16))
    assert evaluation.vendi_score(x) == pytest.approx(vendi.score_X(x), rel=1e-6)
    assert evaluation.vendi_score(np.ones((10, 3))) == pytest.approx(1.0, abs=1e-6)
    assert evaluation.vendi_score(np.eye(7)) == pytest.approx(7.0, rel=1e-6)


def test_alignment_is_perfect_on_real_correctly_labelled_images():
    # a classifier that is right on the real images: one-hot probabilities of their true grades
    grades = [i % 5 for i in range(25)]
    probs = np.eye(5)[grades]
    out = evaluation.alignment(probs, grades, 5)
    assert out["accuracy"] == 1.0 and out["kappa"] == pytest.approx(1.0) and out["auc"] == 1.0
    assert set(out["per_class_score"].values()) == {1.0} and out["per_class_metric"] == "accuracy"
    wrong = evaluation.alignment(np.eye(5)[[(g + 2) % 5 for g in grades]], grades, 5)
    assert wrong["accuracy"] == 0.0


def test_alignment_f1_averages_over_the_prompted_grades_only():
    from sklearn.metrics import f1_score

    prompted = [0, 0, 2, 2, 2, 4]                  # grades 1 and 3 never asked for
    probs = np.eye(5)[[0, 1, 2, 2, 3, 4]]          # two mistakes, into grades nobody prompted
    out = evaluation.alignment(probs, prompted, 5)
    assert out["f1_classes"] == [0, 2, 4]
    pred = probs.argmax(1)
    assert out["f1"] == pytest.approx(f1_score(prompted, pred, labels=[0, 2, 4], average="macro"))
    assert out["f1"] > f1_score(prompted, pred, labels=list(range(5)), average="macro", zero_division=0)
    multi = evaluation.alignment(np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]]), [[1, 0], [0, 1], [1, 1]], 2)
    assert multi["per_class_metric"] == "AUC"


def test_alignment_reference_weighs_the_judge_by_the_prompts_grades():
    real_labels = [0] * 6 + [1] * 2 + [2] * 2                 # the test set: mostly grade 0
    judged = [0] * 6 + [1, 0] + [0, 0]                        # right on grade 0, half on 1, never on 2
    probs = np.eye(3)[judged]
    assert (np.eye(3)[judged].argmax(1) == real_labels).mean() == 0.7      # over the test set as drawn
    assert evaluation.alignment_reference(probs, real_labels, [0, 1, 2, 2], 3) == pytest.approx(
        (1.0 + 0.5 + 2 * 0.0) / 4)                            # the prompts ask mostly for grade 2
    assert evaluation.alignment_reference(probs, real_labels, [0, 3, 3], 4) == 1.0  # no real grade 3: left out
    with pytest.raises(ValueError, match="no prompted grade has a real image"):
        evaluation.alignment_reference(probs, real_labels, [3], 4)


def test_kid_std_comes_from_varying_subsets(extractor):
    name, _ = extractor
    real, fake = evaluation.UInt8Images(images(0, 20)), evaluation.UInt8Images(images(700, 20, grade=3))
    out = evaluation.fid_kid(real, fake, feature_extractor=name, cuda=False)    # default subset size 1000
    assert out["kid_std"] > 0           # subsets of half the set: not the same 20 images a hundred times


def test_real_and_generated_images_share_one_uint8_path(tmp_path):
    from PIL import Image

    from nbsupport.data.datasets import build_dataset

    ds = build_dataset("fundus-procedural", "test", task="text-to-image", image_size=32, limit=3)
    imgs, labels = evaluation.uint8_images(ds)
    rendered = [generate_fundus(s, g, 32).image for s, g in zip(ds.seeds, ds.grades)]
    assert all(np.array_equal(a, b) for a, b in zip(imgs, rendered))     # the round trip is exact
    assert labels == ds.grades
    Image.fromarray(imgs[0]).save(tmp_path / "x.png")                     # as generated images are stored
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), imgs[0])


def test_reference_extractor_is_the_frozen_pocket_vit_offline():
    kw, description = evaluation.reference_extractor("cpu")
    assert "pocket ViT" in description and kw["feature_layer"] == "features"
    kw, description = evaluation.reference_extractor("gpu")
    assert kw["feature_extractor"] == "inception-v3-compat"


def test_alignment_judge_is_another_model_trained_on_images_the_generator_never_saw(tmp_path, monkeypatch):
    from nbsupport.data.datasets import build_dataset
    from nbsupport.data.fingerprint import item_keys
    from nbsupport.evaluation import judge as judge_mod
    from nbsupport.vit.backbones import POCKET_MEAN, POCKET_STD

    monkeypatch.setenv("NBSUPPORT_CACHE", str(tmp_path))
    gen_train = build_dataset("fundus-clinic", "train", task="text-to-image", image_size=64, limit=40)
    train, val, source = judge_mod.judge_training_set("fundus-clinic", "cpu", 64, POCKET_MEAN, POCKET_STD, gen_train, 30)
    assert len(train) == 30 and val is None and "after the 40 the generator trained on" in source
    assert not set(item_keys(train)) & set(item_keys(gen_train))
    with pytest.raises(AssertionError, match="leaked"):           # a judge set that overlaps is refused
        judge_mod.assert_disjoint(item_keys(gen_train), item_keys(gen_train))
    # at cpu both are the pocket architecture: the judge is fully fine-tuned, the extractor frozen
    j = evaluation.train_judge("fundus-clinic", "cpu", gen_train, "test", n=24, epochs=1, progress=False)
    assert j.n_train == 24 and np.isfinite(j.test_score) and j.weights.startswith("pretrained:pocket-fundus-vit")
    fid_vit = create_vit("pocket-fundus-vit", pretrained=True, num_classes=0)
    judge_params = dict(j.model.named_parameters())
    shared = [n for n, p in fid_vit.named_parameters()
              if n in judge_params and judge_params[n].shape == p.shape and torch.equal(judge_params[n], p)]
    assert not shared                    # no weight of the judge equals the FID extractor's
    x = [generate_fundus(5, 2, 64).image]
    feats, probs = j.predict(x)
    assert probs.shape == (1, 5) and feats.shape[1] != 0


def test_assert_disjoint():
    leakage.assert_disjoint([1, 2, 3], [4, 5])
    with pytest.raises(AssertionError, match="1 test patient"):
        leakage.assert_disjoint(["p1", "p2"], ["p2"], "patient")


def test_clip_score_offline_names_the_fix(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="local folder"):
        evaluation.clip_score([np.zeros((32, 32, 3), np.uint8)], ["a photo"])


def test_per_grade_scores_skip_small_grades_and_match_pooled_functions(extractor):
    name, model = extractor
    real, real_labels = images(0, 20), [i % 5 for i in range(20)]          # 4 real images per grade
    gen, gen_labels = images(500, 8), [0, 0, 0, 0, 1, 1, 2, 3]               # only grade 0 has 4 generated
    feats = np.random.default_rng(3).normal(size=(20, 6))
    out = evaluation.per_grade_scores(feats, real_labels, real, feats[:8], gen_labels, gen, 5,
                                      feature_extractor=name, cuda=False)
    assert set(out) == {0}
    pooled = evaluation.fid_kid(evaluation.UInt8Images([real[i] for i in (0, 5, 10, 15)]),
                                evaluation.UInt8Images(gen[:4]), feature_extractor=name, cuda=False)
    assert out[0]["fid"] == pytest.approx(pooled["fid"]) and out[0]["kid"] == pytest.approx(pooled["kid"])
    assert out[0]["vendi"] == pytest.approx(evaluation.vendi_score(feats[:4])) and out[0]["n"] == 4


def test_the_judge_describes_itself_with_its_accuracy():
    from nbsupport.evaluation.judge import Judge

    judge = Judge(torch.nn.Identity(), 64, (0.5,) * 3, (0.5,) * 3, "test_kappa", 0.77, 900,
                  "the clinic's training split", "pretrained:pocket", "pocket-fundus-vit",
                  row={"test_accuracy": 0.596})
    line = judge.describe()
    assert "on 900 real images" in line and "Kappa on the real test images: 0.770" in line
    assert line.endswith("accuracy 0.596")
    assert "accuracy" not in Judge(torch.nn.Identity(), 64, (0.5,) * 3, (0.5,) * 3, "test_kappa", 0.77, 900,
                                   "x", "w").describe().split("0.770")[1]       # no row: no claim
