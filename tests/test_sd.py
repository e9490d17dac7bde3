"""Stable Diffusion: parameter counts on the SD 1.5 architecture (built on meta, no weights),
training on a tiny random pipeline, checkpoints, resume, deterministic sampling."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from nbsupport.data.datasets import build_dataset  # noqa: E402
from nbsupport.sd.methods import LORA_TARGETS, SD_METHODS, ScaledBranch, load_trainable, prepare, save_trainable  # noqa: E402
from nbsupport.sd.models import build_sd15, build_tiny  # noqa: E402
from nbsupport.sd.sampling import sample  # noqa: E402
from nbsupport.sd.train import SDTrainConfig, denoising_loss, train_sd  # noqa: E402

UNET, TEXT, VAE = 859_520_964, 123_060_480, 83_653_863


def count(groups):
    return sum(p.numel() for g in groups for p in g["params"])


@pytest.fixture(scope="module")
def sd15_counts():
    out = {}
    for m in SD_METHODS:
        comp = build_sd15("meta")
        out[m] = (comp, prepare(comp, m))
    return out


def test_sd15_component_sizes():
    comp = build_sd15("meta")
    sizes = {k: sum(p.numel() for p in m.parameters()) for k, m in comp.models().items()}
    assert sizes == {"unet": UNET, "text_encoder": TEXT, "vae": VAE}


def test_full_methods_train_whole_components(sd15_counts):
    expect = {"unet": UNET, "text_encoder": TEXT, "vae": VAE, "text_encoder+unet": TEXT + UNET,
              "vae+unet": VAE + UNET, "vae+text_encoder": VAE + TEXT, "all": UNET + TEXT + VAE}
    for m, n in expect.items():
        assert count(sd15_counts[m][1]) == n, m


def test_learning_rates_follow_the_study(sd15_counts):
    lrs = lambda m: {g["name"]: g["lr"] for g in sd15_counts[m][1]}  # noqa: E731
    assert lrs("unet") == {"unet": 1e-5}
    assert lrs("text_encoder") == {"text_encoder": 5e-6}
    assert lrs("text_encoder+unet") == {"text_encoder": 1e-6, "unet": 1e-5}
    assert lrs("vae") == {"vae": 1e-6}
    assert lrs("lora") == {"unet.lora": 1e-4}


def test_lora_counts():
    for r, expected in ((8, 1_594_368), (4, 797_184)):
        comp = build_sd15("meta")
        groups = prepare(comp, "lora", r=r, alpha=2 * r)
        assert count(groups) == expected
    comp = build_sd15("meta")
    targets = [m for n, m in comp.unet.named_modules() if n.endswith(LORA_TARGETS) and isinstance(m, torch.nn.Linear)]
    assert sum(8 * (m.in_features + m.out_features) for m in targets) == 1_594_368


def test_dora_is_lora_plus_magnitudes(sd15_counts):
    comp, groups = sd15_counts["dora"]
    names = [n for n, p in comp.unet.named_parameters() if p.requires_grad]
    magnitudes = [n for n in names if "magnitude" in n]
    lora = [n for n in names if "lora_A" in n or "lora_B" in n]
    assert len(magnitudes) == len(lora) // 2 and set(names) == set(magnitudes) | set(lora)
    mag_count = sum(p.numel() for n, p in comp.unet.named_parameters() if "magnitude" in n)
    assert count(groups) == 1_594_368 + mag_count


def test_bitfit_is_every_unet_bias(sd15_counts):
    comp, groups = sd15_counts["bitfit"]
    assert count(groups) == 343_684
    assert all(n.endswith("bias") for n, p in comp.unet.named_parameters() if p.requires_grad)


def test_difffit_is_biases_norms_and_scales(sd15_counts):
    from diffusers.models.attention import BasicTransformerBlock

    comp, groups = sd15_counts["difffit"]
    names = {n for n, p in comp.unet.named_parameters() if p.requires_grad}
    biases = {n for n in names if n.endswith("bias")}
    scales = {n for n in names if n.endswith(".gamma")}
    norms = names - biases - scales
    assert len(biases) and len(scales) and len(norms)
    assert all(isinstance(comp.unet.get_submodule(n.rsplit(".", 1)[0]), (torch.nn.GroupNorm, torch.nn.LayerNorm))
               for n in norms)
    blocks = [m for m in comp.unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(scales) == 3 * len(blocks) == 48
    assert sum(p.numel() for n, p in comp.unet.named_parameters() if n in biases) == 343_684
    assert all(isinstance(getattr(b, br), ScaledBranch) for b in blocks for br in ("attn1", "attn2", "ff"))


def test_difffit_scales_survive_a_deep_copy_and_scale_the_branch():
    import copy

    from diffusers.models.attention import BasicTransformerBlock

    block = BasicTransformerBlock(16, 2, 8, cross_attention_dim=12)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    before = block(x, encoder_hidden_states=ctx)
    from nbsupport.sd.methods import _add_difffit_scales

    scales = _add_difffit_scales(block)
    assert len(scales) == 3 and torch.allclose(block(x, encoder_hidden_states=ctx), before, atol=1e-6)  # gamma = 1
    twin = copy.deepcopy(block)                                        # what an EMA copy does
    with torch.no_grad():
        for g in scales:
            g.zero_()
    zeroed = block(x, encoder_hidden_states=ctx)
    assert torch.allclose(zeroed, x, atol=1e-6)                         # every branch off: the identity
    assert torch.allclose(twin(x, encoder_hidden_states=ctx), before, atol=1e-6)   # the copy keeps its own scales
    assert any(k.endswith("attn2.gamma") for k in twin.state_dict())


# ----------------------------------------------------------------------------- tiny pipeline

@pytest.fixture(scope="module")
def t2i():
    return build_dataset("fundus-procedural", "train", task="text-to-image", image_size=32, limit=4)


def tiny(t2i, tmp_path_factory, seed=0):
    caps = [t2i[i]["caption"] for i in range(len(t2i))]
    return build_tiny(caps, tmp_path_factory.mktemp("tok"), seed=seed)


CFG = dict(batch_size=2, grad_accum=1, resolution=32, mixed_precision=None, gradient_checkpointing=False)


@pytest.mark.parametrize("method", list(SD_METHODS))
def test_only_intended_parameters_get_gradients(method, t2i, tmp_path_factory):
    comp = tiny(t2i, tmp_path_factory)
    train_sd(comp, method, t2i, SDTrainConfig(steps=1, **CFG), progress=False)
    spec = SD_METHODS[method]
    for cname, model in comp.models().items():
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{method}: {cname}.{n} trainable, no gradient"
            else:
                assert p.grad is None, f"{method}: frozen {cname}.{n} got a gradient"
        if cname in spec.full:
            assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "unet"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(method, t2i, tmp_path_factory):
    comp = tiny(t2i, tmp_path_factory)
    before = denoising_loss(comp, t2i)
    train_sd(comp, method, t2i, SDTrainConfig(steps=12, lr=3e-3, **CFG), progress=False)
    after = denoising_loss(comp, t2i)
    assert after < before, (before, after)


@pytest.mark.parametrize("method", ["lora", "difffit", "text_encoder"])
def test_save_load_reproduces_outputs(method, t2i, tmp_path_factory, tmp_path):
    comp = tiny(t2i, tmp_path_factory)
    train_sd(comp, method, t2i, SDTrainConfig(steps=3, lr=1e-2, **CFG), progress=False)
    path = save_trainable(comp, tmp_path / "m.safetensors")
    ref = denoising_loss(comp, t2i)
    fresh = tiny(t2i, tmp_path_factory)
    prepare(fresh, method)
    assert denoising_loss(fresh, t2i) != pytest.approx(ref, rel=1e-6)
    load_trainable(fresh, path)
    assert denoising_loss(fresh, t2i) == pytest.approx(ref, rel=1e-6)


def test_resume_continues_from_the_saved_step(t2i, tmp_path_factory, tmp_path):
    cfg = SDTrainConfig(steps=4, checkpoint_every=2, lr=1e-3, **CFG)
    straight = tiny(t2i, tmp_path_factory)
    ref = train_sd(straight, "lora", t2i, cfg, checkpoint_dir=tmp_path / "a", progress=False)
    first = tiny(t2i, tmp_path_factory)
    part = train_sd(first, "lora", t2i, cfg, checkpoint_dir=tmp_path / "b", progress=False, stop_after_steps=2)
    assert part.steps == 2 and part.checkpoint is None
    second = tiny(t2i, tmp_path_factory)   # after a disconnect: rebuilt from scratch, state from disk
    res = train_sd(second, "lora", t2i, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert res.resumed_from_step == 2 and res.steps == 4
    assert res.losses == pytest.approx(ref.losses, rel=1e-5)
    assert denoising_loss(second, t2i) == pytest.approx(denoising_loss(straight, t2i), rel=1e-5)
    with pytest.raises(ValueError, match="holds a 'lora' run"):
        train_sd(tiny(t2i, tmp_path_factory), "bitfit", t2i, cfg, checkpoint_dir=tmp_path / "b", progress=False)


def test_caching_and_optimizer_notice(t2i, tmp_path_factory):
    comp = tiny(t2i, tmp_path_factory)
    res = train_sd(comp, "lora", t2i, SDTrainConfig(steps=1, **CFG), progress=False)
    assert res.cached == {"latents": True, "text": True}
    assert any("AdamW" in n for n in res.notices)
    res = train_sd(tiny(t2i, tmp_path_factory), "vae+text_encoder", t2i, SDTrainConfig(steps=1, **CFG), progress=False)
    assert res.cached == {"latents": False, "text": False}


class _Counting(torch.utils.data.Dataset):
    """A dataset that counts its item reads (each one decodes an image in a real dataset)."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


def test_cached_training_reads_each_item_once_and_matches_the_uncached_loss(t2i, tmp_path_factory):
    data = _Counting(t2i)
    cached = train_sd(tiny(t2i, tmp_path_factory), "lora", data, SDTrainConfig(steps=3, lr=1e-3, **CFG), progress=False)
    assert cached.cached == {"latents": True, "text": True} and data.reads == len(t2i)   # the caching pass only
    plain = train_sd(tiny(t2i, tmp_path_factory), "lora", t2i, SDTrainConfig(steps=3, lr=1e-3, cache=False, **CFG),
                     progress=False)
    assert plain.cached == {"latents": False, "text": False}
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4)    # same draws: the cache changes speed only


def test_same_seed_same_samples(t2i, tmp_path_factory):
    comp = tiny(t2i, tmp_path_factory)
    prompts = [t2i[0]["caption"], t2i[1]["caption"]]
    a = sample(comp, prompts, [3, 4], resolution=32, steps=3)
    b = sample(comp, prompts, [3, 4], resolution=32, steps=3)
    c = sample(comp, prompts, [5, 6], resolution=32, steps=3)
    assert a[0].shape == (32, 32, 3) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_tiny_tokenizer_roundtrip(tmp_path):
    from nbsupport.sd.tokenizer import load_tiny_tokenizer

    tok = load_tiny_tokenizer(["Chest X-ray showing Edema."], tmp_path)
    ids = tok("Chest X-ray showing edema and a zebra.").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "chest x - ray showing edema and a zebra ."


def test_generation_resumes_without_duplicating_or_keeping_stale_images(t2i, tmp_path_factory, tmp_path, monkeypatch):
    from nbsupport.sd import sampling

    comp = tiny(t2i, tmp_path_factory)
    items = [{"prompt": t2i[i % len(t2i)]["caption"], "seed": 10 + i, "labels": 0} for i in range(5)]
    kw = dict(method="tiny", resolution=32, steps=2, batch_size=2, progress=False)
    sampling.generate_to_disk(comp, items[:3], tmp_path, **kw)          # "interrupted" after 3 of 5
    first = (tmp_path / "000001.png").read_bytes()
    calls = []
    real_sample = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda c, prompts, seeds, **k: calls.append(list(seeds)) or real_sample(c, prompts, seeds, **k))
    path = sampling.generate_to_disk(comp, items, tmp_path, **kw)
    assert calls == [[13, 14]]                                            # only the missing two
    entries = json.loads(path.read_text())["images"]
    assert [e["seed"] for e in entries] == [10, 11, 12, 13, 14] and (tmp_path / "000001.png").read_bytes() == first
    items[1] = {**items[1], "seed": 99}                                   # a changed item is regenerated
    calls.clear()
    sampling.generate_to_disk(comp, items, tmp_path, **kw)
    assert calls == [[99]]
    calls.clear()
    sampling.generate_to_disk(comp, items, tmp_path, **{**kw, "steps": 3})   # other settings: all regenerated
    assert sorted(s for c in calls for s in c) == [10, 12, 13, 14, 99]


def test_generated_sets_from_other_data_are_left_out(t2i, tmp_path_factory, tmp_path, monkeypatch):
    """A set records the data it was made from; a reader keeps only sets made from the current data,
    and a changed label regenerates the image even with the same prompt and seed."""
    from nbsupport.sd import sampling

    comp = tiny(t2i, tmp_path_factory)
    items = [{"prompt": t2i[i]["caption"], "seed": i, "labels": 0} for i in range(2)]
    kw = dict(resolution=32, steps=2, batch_size=2, progress=False)
    now = sampling.data_stamp(t2i, t2i)
    sampling.generate_to_disk(comp, items, tmp_path / "lora", method="lora", data=now, **kw)
    sampling.generate_to_disk(comp, items, tmp_path / "unet", method="unet",
                              data={**now, "train": "0" * 16}, **kw)
    sampling.generate_to_disk(comp, items, tmp_path / "bitfit", method="bitfit", **kw)
    fresh, left_out = sampling.generated_sets(tmp_path, now)
    assert fresh == ["lora"] and left_out == {"bitfit": "generated before sets recorded their data",
                                              "unet": "generated from another version of the data"}
    calls = []
    real_sample = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda c, p, seeds, **k: calls.append(list(seeds)) or real_sample(c, p, seeds, **k))
    sampling.generate_to_disk(comp, items, tmp_path / "unet", method="unet", data=now, **kw)
    assert calls == [] and sampling.generated_sets(tmp_path, now)[0] == ["lora", "unet"]   # same images: kept
    sampling.generate_to_disk(comp, [items[0], {**items[1], "labels": 1}], tmp_path / "unet", method="unet",
                              data=now, **kw)
    assert calls == [[1]]                                                # the relabelled item only


# ----------------------------------------------------------------------------- any SD snapshot

@pytest.fixture(scope="module")
def sd2_snapshot(t2i, tmp_path_factory):
    """A small local snapshot in the diffusers layout with SD 2.x's traits: linear projections in the
    transformer blocks, per-level head dims, a GELU text encoder and a v-prediction scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nbsupport.sd.tokenizer import load_tiny_tokenizer

    root = tmp_path_factory.mktemp("sd2")
    tok = load_tiny_tokenizer([t2i[i]["caption"] for i in range(len(t2i))], root / "tokenizer")
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                         attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8
                         ).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=32).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=2, hidden_act="gelu", bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                  ).save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction").save_pretrained(root / "scheduler")
    return root


def test_any_snapshot_loads_with_its_own_scheduler(sd2_snapshot):
    from nbsupport.sd.models import load_pretrained

    comp = load_pretrained(local_dir=sd2_snapshot)
    assert comp.scheduler.config.prediction_type == "v_prediction" and comp.weights == f"local:{sd2_snapshot}"
    assert comp.unet.config.use_linear_projection


def test_v_prediction_snapshots_train_on_the_velocity(sd2_snapshot, t2i, monkeypatch):
    from nbsupport.sd import train as train_mod
    from nbsupport.sd.models import load_pretrained

    comp = load_pretrained(local_dir=sd2_snapshot)
    z, eps, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    v = train_mod.training_target(comp.scheduler, z, eps, t)
    abar = comp.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(v, abar.sqrt() * eps - (1 - abar).sqrt() * z, atol=1e-6)
    assert torch.equal(train_mod.training_target(build_tiny_scheduler(), z, eps, t), eps)
    seen = []
    real = train_mod.training_target
    monkeypatch.setattr(train_mod, "training_target",
                        lambda s, *a: seen.append(s.config.prediction_type) or real(s, *a))
    train_mod.train_sd(comp, "lora", t2i, SDTrainConfig(steps=1, **CFG), progress=False)
    assert seen == ["v_prediction"]


def build_tiny_scheduler():
    from nbsupport.sd.models import training_scheduler

    return training_scheduler(None)


def test_params_sd_counts_any_snapshot(sd2_snapshot, capsys):
    import json as _json

    from nbsupport.book.cli import main
    from nbsupport.sd.models import load_pretrained

    assert main(["params", "sd", "--model", str(sd2_snapshot), "--json"]) == 0
    rows = {r["method"]: r for r in _json.loads(capsys.readouterr().out)}
    comp = load_pretrained(local_dir=sd2_snapshot)
    assert rows["unet"]["trainable"] == sum(p.numel() for p in comp.unet.parameters())
    assert rows["all"]["trainable"] == sum(p.numel() for m in comp.models().values() for p in m.parameters())
    assert rows["bitfit"]["trainable"] == sum(p.numel() for n, p in comp.unet.named_parameters() if n.endswith("bias"))
    assert main(["params", "sd", "--model", str(sd2_snapshot / "nope")]) == 2
    assert "folder not found" in capsys.readouterr().out
    (sd2_snapshot.parent / "half").mkdir()
    assert main(["params", "sd", "--model", str(sd2_snapshot.parent / "half")]) == 2
    assert "no unet/config.json" in capsys.readouterr().out


def _as_hub_cache(snapshot: Path, cache: Path, repo_id: str, commit: str) -> None:
    """Lay a local snapshot out as the Hugging Face cache would after a download of ``repo_id``."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(snapshot, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_load_records_the_commit_it_loaded(sd2_snapshot, tmp_path, monkeypatch):
    """Offline from the hub cache: the weights label names the snapshot's commit, not 'default'."""
    from nbsupport.sd.models import load_pretrained

    commit = "0123456789abcdef0123456789abcdef01234567"
    _as_hub_cache(sd2_snapshot, tmp_path / "hub", "someone/pocket-sd2", commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    comp = load_pretrained("someone/pocket-sd2")
    assert comp.weights == f"pretrained:someone/pocket-sd2@{commit}"
    assert comp.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("method,mode", [("lora", "cudagraphs"), ("text_encoder+unet", "default")])
def test_compiled_step_trains_like_eager(method, mode, t2i, tmp_path_factory, monkeypatch):
    """cfg.compile goes through torch.compile (here on the CPU's aot_eager backend, which traces the
    forward and backward graphs as inductor would, without generating kernels; the CUDA graph itself
    needs a GPU) and changes nothing of the maths: the eager losses, with gradient checkpointing on.
    The compiled step sees one micro-batch shape; the epoch's partial micro-batch runs eagerly."""
    calls, rows = [], []
    real = torch.compile

    def recording(model, mode=None, **kwargs):
        calls.append(mode)
        compiled = real(model, backend="aot_eager")

        def step(batch):
            rows.append(batch["noise"].shape[0])
            return compiled(batch)
        return step

    monkeypatch.setattr(torch, "compile", recording)
    cfg = SDTrainConfig(steps=4, lr=1e-3, **{**CFG, "batch_size": 3, "gradient_checkpointing": True})   # 4 items: 3, 1
    eager = train_sd(tiny(t2i, tmp_path_factory), method, t2i, cfg, progress=False)
    assert calls == []
    compiled = train_sd(tiny(t2i, tmp_path_factory), method, t2i, replace(cfg, compile=mode), progress=False)
    assert calls == [{"default": None, "cudagraphs": "reduce-overhead"}[mode]] and rows == [3, 3]
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert cfg.run_settings() == replace(cfg, compile=mode).run_settings()     # same run, same checkpoints


def test_compile_settings_are_checked():
    with pytest.raises(ValueError, match="compile='graphs'"):
        SDTrainConfig(compile="graphs")
    with pytest.raises(ValueError, match="grad_accum=4.*grad_accum=1"):      # graph buffers reused by the next replay
        SDTrainConfig(compile="cudagraphs", grad_accum=4)
    assert SDTrainConfig(compile="default", grad_accum=4).grad_accum == 4


def test_compiled_unet_samples_the_same_images(t2i, tmp_path_factory, tmp_path, monkeypatch):
    """make_pipeline(compile=...) hands the pipeline a torch.compile'd UNet (here on the aot_eager
    backend) and generate_to_disk passes it on; the images are those of the plain UNet, and the
    manifest's settings do not change (a speed setting)."""
    from nbsupport.sd import sampling

    comp = tiny(t2i, tmp_path_factory)
    real = torch.compile
    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, **k: modes.append(mode) or real(m, backend="aot_eager"))
    prompts, seeds = [t2i[0]["caption"], t2i[1]["caption"]], [3, 4]
    plain = sample(comp, prompts, seeds, resolution=32, steps=2)
    pipe = sampling.make_pipeline(comp, compile="cudagraphs")
    assert modes == ["reduce-overhead"] and pipe.unet is not comp.unet
    compiled = sample(comp, prompts, seeds, resolution=32, steps=2, pipe=pipe)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(plain, compiled))
    items = [{"prompt": p, "seed": s, "labels": 0} for p, s in zip(prompts, seeds)]
    kw = dict(method="tiny", resolution=32, steps=2, batch_size=2, progress=False)
    a = json.loads(sampling.generate_to_disk(comp, items, tmp_path / "a", **kw).read_text())
    b = json.loads(sampling.generate_to_disk(comp, items, tmp_path / "b", compile="default", **kw).read_text())
    assert modes == ["reduce-overhead", None] and a["settings"] == b["settings"]
    with pytest.raises(ValueError, match="compile='fast'"):
        sampling.make_pipeline(comp, compile="fast")
