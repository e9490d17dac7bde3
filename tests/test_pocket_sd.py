"""The pocket Stable Diffusion: architecture from SD's classes, vocabulary, pretraining (resume
included), export and hash-checked loading."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch

from nbsupport.core.checkpoints import CheckpointError, StepCheckpoints
from nbsupport.data import corpus, fundus
from nbsupport.sd import methods, pocket
from nbsupport.sd import pretrain as sdp
from nbsupport.sd.models import WeightsUnavailableError


@pytest.fixture(scope="module")
def comp():
    return pocket.build_pocket(seed=0)


def test_pocket_is_built_from_stable_diffusions_classes(comp):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(comp.unet, UNet2DConditionModel) and isinstance(comp.vae, AutoencoderKL)
    assert isinstance(comp.text_encoder, CLIPTextModel)
    sizes = pocket.component_sizes(comp)
    assert 1e6 < sizes["unet"] < 2e7 and sizes["vae"] < 2e6 and sizes["text_encoder"] < 2e6
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = comp.vae.encode(x).latent_dist.mean
    assert z.shape == (2, 4, 16, 16)                                  # a 4x VAE
    ids = comp.tokenizer(["A colour fundus photograph of a left eye."] * 2, padding="max_length",
                         max_length=77, return_tensors="pt").input_ids
    emb = comp.text_encoder(ids)[0]
    assert emb.shape == (2, 77, 128)
    assert comp.unet(z, torch.tensor([10, 500]), emb).sample.shape == z.shape


@pytest.mark.parametrize("method", list(methods.SD_METHODS))
def test_every_sd_method_applies_to_the_pocket_model_unchanged(method):
    c = pocket.build_pocket(seed=0)
    groups = methods.prepare(c, method)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    assert trainable > 0 and trainable == sum(p.numel() for m in c.models().values() for p in m.parameters()
                                              if p.requires_grad)


def test_every_caption_word_is_in_the_pocket_vocabulary():
    words = set()
    for grade in range(5):
        for eye in ("left", "right"):
            words |= set(pocket._WORD.findall(sdp.source_caption(grade, eye).lower()))
            lesions = list(fundus.LESION_KINDS) + ["venous_beading"]
            words |= set(pocket._WORD.findall(fundus.caption_for(grade, lesions, eye).lower()))
    assert words <= set(pocket.POCKET_WORDS), words - set(pocket.POCKET_WORDS)


def test_source_captions_never_name_a_lesion():
    for grade in range(5):
        cap = sdp.source_caption(grade, "left").lower()
        assert fundus.GRADE_NAMES[grade] in cap
        for word in ("microaneurysm", "haemorrhage", "exudate", "cotton", "neovascular", "beading"):
            assert word not in cap


def test_unknown_prompt_words_warn_and_still_tokenize(comp):
    with pytest.warns(UserWarning, match="glaucoma"):
        unknown = pocket.check_prompts(["A fundus photograph with glaucoma cupping."])
    assert unknown == ["cupping", "glaucoma"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pocket.check_prompts([fundus.caption_for(4, ["haemorrhages"], "left")]) == []
    ids = comp.tokenizer("glaucoma").input_ids
    assert len(ids) > 3                                                # characters, not one unknown id


def test_corpus_labels_match_the_rendered_eyes():
    spec = corpus.CorpusSpec(n=12)
    grades, eyes, cameras = corpus.corpus_labels(spec)
    assert len(grades) == len(eyes) == len(cameras) == 12
    for i in (0, 5, 11):
        s = fundus.generate_fundus(corpus.CORPUS_SEED0 + i, int(grades[i]), 64, cameras[i])
        assert s.meta["eye"] == eyes[i] and corpus.TARGET_CAMERA not in cameras


# ----------------------------------------------------------------------------- pretraining


def test_pretraining_resumes_to_the_same_weights_and_exports(tmp_path):
    cfg = sdp.SDPretrainConfig.smoke()
    whole = sdp.pretrain_sd(cfg, tmp_path / "whole", device="cpu", progress=False)
    assert whole["finished"] and whole["vae"]["step"] == cfg.vae_steps and whole["diffusion"]["step"] == cfg.steps
    ev = whole["diffusion"]["evaluations"]
    assert [e["step"] for e in ev] == [2, cfg.steps] and all(np.isfinite(e["fid_pocket_vit"]) for e in ev)
    vae_ev = StepCheckpoints(tmp_path / "whole" / cfg.key).load("vae")[1]["evaluation"]   # kept in the manifest
    assert vae_ev == whole["vae"]["evaluation"] and vae_ev["n_real"] == cfg.holdout and vae_ev["psnr_db"] > 0
    calls = 0
    while True:                                      # "interrupted" after every step
        calls += 1
        part = sdp.pretrain_sd(cfg, tmp_path / "split", device="cpu", max_minutes=0, progress=False)
        if part["finished"]:
            break
        assert calls < 20
    assert calls == cfg.vae_steps + cfg.steps
    for stage in ("vae", "diffusion"):
        a, sa = StepCheckpoints(tmp_path / "whole" / cfg.key).load(stage)
        b, sb = StepCheckpoints(tmp_path / "split" / cfg.key).load(stage)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), stage
        assert [x[1] for x in sa["loss_curve"]] == pytest.approx([x[1] for x in sb["loss_curve"]], rel=1e-5)
    assert len(list((tmp_path / "split" / cfg.key).glob("diffusion-*.safetensors"))) == 2   # weights + optimizer

    out = tmp_path / "pocket-fundus-sd.safetensors"
    rec = sdp.export_pocket(whole["run_dir"], out, {"note": "smoke"}, cfg=cfg)
    assert rec["vae"]["evaluation"] == vae_ev
    assert rec["probe_reference"]["n_real"] == cfg.holdout                # the exported file, evaluated
    sweep = rec["guidance_sweep"]
    assert sweep["chosen"] in [r["guidance"] for r in sweep["rows"]] and len(sweep["rows"]) == 4
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == rec["sha256"]
    loaded = pocket.load_pocket(out, expected_sha256=rec["sha256"])
    assert loaded.weights == f"pretrained:pocket-fundus-sd@sha256:{rec['sha256'][:16]}"
    assert loaded.vae_scale == pytest.approx(whole["diffusion"]["vae_scaling_factor"])
    ema, _ = StepCheckpoints(tmp_path / "whole" / cfg.key).load("diffusion")
    k = next(iter(loaded.unet.state_dict()))
    assert torch.allclose(loaded.unet.state_dict()[k], ema[f"ema.unet.{k}"].half().float())

    with pytest.raises(WeightsUnavailableError, match="sha256"):
        pocket.load_pocket(out, expected_sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="missing"):
        pocket.load_pocket(tmp_path / "nope.safetensors")


class _Identity(torch.nn.Module):
    """A perfect 'VAE': the latent is the image."""

    def encode(self, x: torch.Tensor) -> types.SimpleNamespace:
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mean=x))

    def decode(self, z: torch.Tensor) -> types.SimpleNamespace:
        return types.SimpleNamespace(sample=z)


class _Mirror(_Identity):
    """A VAE that returns the mirror image: a left eye comes back as a right one."""

    def decode(self, z: torch.Tensor) -> types.SimpleNamespace:
        return types.SimpleNamespace(sample=z.flip(-1))


class _Blur(_Identity):
    """A VAE that keeps only a quarter-resolution image."""

    def decode(self, z: torch.Tensor) -> types.SimpleNamespace:
        small = torch.nn.functional.avg_pool2d(z, 4)
        return types.SimpleNamespace(sample=torch.nn.functional.interpolate(small, scale_factor=4, mode="bilinear"))


def test_vae_evaluation_separates_a_perfect_round_trip_from_a_blurring_one():
    from nbsupport.data.corpus import CorpusSpec, corpus_labels, load_corpus

    spec = CorpusSpec(n=96)
    images, _ = load_corpus(spec, workers=1, progress=False)
    grades, eyes, _ = corpus_labels(spec)
    perfect = sdp.evaluate_vae(_Identity(), images, grades, eyes)
    assert perfect["psnr_db"] > 100                                  # lossless up to uint8 rounding
    assert perfect["eye_accuracy_recon"] == perfect["eye_accuracy_real"]
    assert perfect["grade_qwk_recon"] == perfect["grade_qwk_real"]
    blurred = sdp.evaluate_vae(_Blur(), images, grades, eyes)
    assert 15 < blurred["psnr_db"] < 40 and blurred["eye_accuracy_real"] == perfect["eye_accuracy_real"]
    mirrored = sdp.evaluate_vae(_Mirror(), images, grades, eyes)       # the probes read the reconstructions
    assert mirrored["eye_accuracy_recon"] < 0.2 < 0.8 < mirrored["eye_accuracy_real"]


def test_the_shipped_pocket_sd_loads_offline_or_says_it_is_not_shipped():
    if pocket.POCKET_SD_SHA256 is None:
        with pytest.raises(WeightsUnavailableError, match="not shipped"):
            pocket.load_pocket()
        return
    c = pocket.load_pocket()
    assert c.weights.startswith("pretrained:pocket-fundus-sd@sha256:" + pocket.POCKET_SD_SHA256[:16])
    record = pocket.shipped_record()
    assert record["sha256"] == pocket.POCKET_SD_SHA256
    assert record["vae"]["evaluation"]["n_real"] > 0 and record["diffusion"]["evaluations"]
    # the cpu profile samples at the guidance the record's rule chose on the source domain
    from nbsupport.core.profiles import get_profile

    assert get_profile("cpu").sd_guidance == record["guidance_sweep"]["chosen"]


def test_a_damaged_checkpoint_names_its_folder(tmp_path):
    ck = StepCheckpoints(tmp_path / "run")
    ck.save("stage", {"w": torch.ones(3)}, None, {"step": 1}, 1)
    ck.save("stage", {"w": torch.full((3,), 2.0)}, None, {"step": 2}, 2)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.safetensors")) == ["stage-00000002.safetensors"]
    tensors, state = ck.load("stage")
    assert state["step"] == 2 and tensors["w"][0] == 2.0
    path = tmp_path / "run" / "stage-00000002.safetensors"
    path.write_bytes(path.read_bytes()[:20])                                # truncated
    with pytest.raises(CheckpointError, match=str(tmp_path / "run")):
        ck.load("stage")


def test_updating_a_checkpoints_state_keeps_its_tensors_and_optimizer(tmp_path):
    ck = StepCheckpoints(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no readable 'stage' checkpoint"):
        ck.update_state("stage", {"step": 0})
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    ck.save("stage", {"w": w.detach()}, opt, {"step": 1}, 1)
    ck.update_state("stage", {"step": 1, "evaluation": {"psnr_db": 30.0}})
    w2 = torch.nn.Parameter(torch.zeros(3))
    opt2 = torch.optim.AdamW([w2], lr=0.1)
    tensors, state = ck.load("stage", opt=opt2)
    assert state == {"step": 1, "evaluation": {"psnr_db": 30.0}} and torch.equal(tensors["w"], w.detach())
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_kill_before_the_manifest_is_written_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from nbsupport.core import checkpoints

    ck = StepCheckpoints(tmp_path / "run")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    ck.save("stage", {"w": torch.ones(3)}, opt, {"step": 1}, 1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(checkpoints, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save("stage", {"w": torch.full((3,), 2.0)}, opt, {"step": 2}, 2)
    monkeypatch.undo()
    tensors, state = ck.load("stage", opt=opt)
    assert state["step"] == 1 and tensors["w"][0] == 1.0                  # weights and counter of one step
