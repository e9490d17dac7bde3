"""The pocket foundation ViT: its corpus, its pretraining loop (resume included) and its shipped,
hash-checked weights."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

from nbsupport.core.checkpoints import StepCheckpoints
from nbsupport.data import corpus, fundus
from nbsupport.vit import backbones, pretrain
from nbsupport.vit.backbones import BACKBONES, WeightsUnavailableError, create_vit


# ----------------------------------------------------------------------------- corpus


def test_parse_targets_mark_every_finding_where_the_generator_put_it():
    s = fundus.generate_fundus(corpus.CORPUS_SEED0 + 5, 3, 64, "clinic")
    t = corpus.parse_targets(s, 8)
    assert t.shape == (len(corpus.PARSE_KINDS), 8, 8) and t.dtype == np.uint8
    for k, kind in enumerate(corpus.PARSE_KINDS[:5]):
        assert len(s.meta["centres"][kind]) == s.counts[kind]
        for x, y in s.meta["centres"][kind]:
            assert t[k, min(7, int(y * 8)), min(7, int(x * 8))] == 1
        assert t[k].sum() <= s.counts[kind] and (t[k].sum() > 0) == (s.counts[kind] > 0)
    dx, dy = s.meta["disc"]
    assert t[corpus.PARSE_KINDS.index("optic_disc"), int(dy * 8), int(dx * 8)] == 1
    assert t[-1].sum() == 1


def test_grade_zero_has_no_lesion_targets():
    t = corpus.parse_targets(fundus.generate_fundus(11, 0, 64, "default"), 8)
    assert t[:5].sum() == 0 and t[-2:].sum() >= 2


def test_corpus_keeps_the_target_camera_out():
    with pytest.raises(ValueError, match="clinic_dim_bluish.*must stay out"):
        corpus.CorpusSpec(cameras=("default", "clinic_dim_bluish"))
    with pytest.raises(ValueError, match="unknown presets"):
        corpus.CorpusSpec(cameras=("default", "nikon"))


def test_corpus_is_deterministic_and_disjoint_from_chapter_seeds(tmp_path):
    spec = corpus.CorpusSpec(n=6, cameras=("default",))
    a = corpus.load_corpus(spec, tmp_path / "a", workers=1, progress=False)
    b = corpus.load_corpus(spec, tmp_path / "b", workers=1, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (6, 64, 64, 3) and a[1].shape == (6, len(corpus.PARSE_KINDS), 8, 8)
    assert corpus.CORPUS_SEED0 > 10**9          # FundusDataset seeds stay below (seed * 10 + split) * 10**6 + n


def test_global_targets_follow_a_flip():
    s = fundus.generate_fundus(3, 2, 64, "default")
    t = torch.from_numpy(corpus.parse_targets(s, 8)).float()[None]
    right = float(s.meta["eye"] == "right")
    assert pretrain.global_targets(t)[0, 0] == right
    assert pretrain.global_targets(t.flip(-1))[0, 0] == 1 - right


# ----------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def smoke_cfg():
    return dataclasses.replace(pretrain.PretrainConfig.smoke(), probe_every=10**6, probe_train=30, probe_test=20)


def test_pretraining_resumes_to_the_same_weights(tmp_path, smoke_cfg, monkeypatch):
    monkeypatch.setenv("NBSUPPORT_CACHE", str(tmp_path / "cache"))
    whole = pretrain.pretrain(smoke_cfg, tmp_path / "whole", device="cpu", progress=False)
    assert whole["done"] and whole["step"] == smoke_cfg.steps and len(whole["loss_curve"]) == 3
    first = pretrain.pretrain(smoke_cfg, tmp_path / "split", device="cpu", max_minutes=0, progress=False)
    assert not first["done"] and first["step"] == 1          # "interrupted" after one step
    second = pretrain.pretrain(smoke_cfg, tmp_path / "split", device="cpu", progress=False)
    assert second["done"] and second["step"] == smoke_cfg.steps
    a, _ = StepCheckpoints(tmp_path / "whole" / smoke_cfg.key).load("last")
    b, _ = StepCheckpoints(tmp_path / "split" / smoke_cfg.key).load("last")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rec = pretrain.export_weights(tmp_path / "whole" / smoke_cfg.key, tmp_path / "w.safetensors", {"device": "cpu"})
    assert rec["sha256"] == backbones.sha256_of(tmp_path / "w.safetensors")
    assert json.loads((tmp_path / "w.json").read_text())["step"] == smoke_cfg.steps
    model = create_vit("pocket-fundus-vit", 5, weights_path=tmp_path / "w.safetensors")
    assert model.nbsupport_weights.startswith("local:")


# ----------------------------------------------------------------------------- loading


@pytest.fixture()
def fake_shipped(tmp_path, monkeypatch):
    """A pocket checkpoint in a temporary weights folder, registered with its true hash."""
    torch.manual_seed(0)
    state = {k: v.half() for k, v in backbones.pocket_architecture(0).state_dict().items()}
    safetensors.torch.save_file(state, str(tmp_path / "pocket-fundus-vit.safetensors"))
    monkeypatch.setattr(backbones, "weights_dir", lambda: tmp_path)
    spec = dataclasses.replace(BACKBONES["pocket-fundus-vit"],
                               sha256=backbones.sha256_of(tmp_path / "pocket-fundus-vit.safetensors"))
    monkeypatch.setitem(BACKBONES, "pocket-fundus-vit", spec)
    return tmp_path, state


def test_pocket_loads_by_name_with_a_fresh_head(fake_shipped):
    _, state = fake_shipped
    model = create_vit("pocket-fundus-vit", num_classes=5)
    assert model.nbsupport_weights.startswith("pretrained:pocket-fundus-vit@sha256:")
    assert torch.equal(model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"].float())
    assert model.head.out_features == 5
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_pocket_with_a_wrong_hash_is_refused(fake_shipped):
    path = fake_shipped[0] / "pocket-fundus-vit.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError, match="sha256.*expected.*git checkout"):
        create_vit("pocket-fundus-vit", num_classes=5)


def test_pocket_missing_file_says_what_to_do(fake_shipped):
    (fake_shipped[0] / "pocket-fundus-vit.safetensors").unlink()
    with pytest.raises(WeightsUnavailableError, match="missing.*nbsupport pretrain --export.*pretrained=False"):
        create_vit("pocket-fundus-vit", num_classes=5)


def test_pocket_at_another_resolution_interpolates_and_says_so(fake_shipped):
    with pytest.warns(UserWarning, match="pretrained at 64 px.*interpolated.*8x8 to 16x16"):
        model = create_vit("pocket-fundus-vit", num_classes=5, img_size=128)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 5)


def test_random_pocket_is_labelled_random(fake_shipped):
    shutil.rmtree(fake_shipped[0])                            # never read when random weights are asked for
    assert create_vit("pocket-fundus-vit", 5, pretrained=False).nbsupport_weights == "random"


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vit_enormous'.*pocket-fundus-vit"):
        create_vit("vit_enormous", num_classes=5)


@pytest.mark.skipif(BACKBONES["pocket-fundus-vit"].sha256 is None, reason="pocket weights not shipped yet")
def test_shipped_pocket_weights_load_offline_and_grade_a_procedural_eye(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = backbones.weights_dir() / "pocket-fundus-vit.safetensors"
    assert backbones.sha256_of(path) == BACKBONES["pocket-fundus-vit"].sha256
    assert path.stat().st_size < 8 * 2**20
    model = create_vit("pocket-fundus-vit", num_classes=5).eval()
    img = fundus.generate_fundus(123, 3, 64, "clinic_dim_bluish").image
    mean, std = torch.tensor(backbones.POCKET_MEAN).view(3, 1, 1), torch.tensor(backbones.POCKET_STD).view(3, 1, 1)
    x = ((torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    record = pretrain.shipped_record()
    assert record["sha256"] == BACKBONES["pocket-fundus-vit"].sha256
    assert record["step"] == record["config"]["steps"] == pretrain.PretrainConfig().steps
    assert record["probes"][-1]["cls"] > max(r["cls"] for r in record["random_init_probes"]) + 0.2
