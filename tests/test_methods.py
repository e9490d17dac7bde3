"""Classification methods at real ViT-B/16 size (built without weights), DVPT's properties,
checkpoints and resume."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from nbsupport.vit import methods
from nbsupport.vit.adapters.dvpt import DVPTConfig, DVPTModule, dvpt_parameter_count
from nbsupport.vit.backbones import WeightsUnavailableError, count_parameters, create_vit

D, L, C = 768, 12, 5
HEAD = D * C + C


@pytest.fixture(scope="module")
def vit_b_table():
    return {r["method"]: r for r in methods.parameter_table("vit_base_patch16_224", num_classes=C)}


def test_linear_and_full(vit_b_table):
    assert vit_b_table["linear"]["trainable"] == HEAD
    full = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=C)
    assert vit_b_table["full"]["trainable"] == count_parameters(full) == 85_798_656 + HEAD
    assert vit_b_table["full"]["backbone"] == 85_798_656


def test_bitfit_is_every_bias_plus_head(vit_b_table):
    per_block = D + 3 * D + D + D + 4 * D + D          # norm1, qkv, proj, norm2, fc1, fc2
    assert vit_b_table["bitfit"]["trainable"] == L * per_block + D + D + HEAD   # + patch embed, final norm


def test_vpt_counts(vit_b_table):
    assert vit_b_table["vpt_shallow"]["trainable"] == 10 * D + HEAD
    assert vit_b_table["vpt_deep"]["trainable"] == L * 10 * D + HEAD


def test_lora_equals_peft_count(vit_b_table):
    from peft import LoraConfig, get_peft_model

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=C)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["qkv"]))
    for p in peft_model.base_model.model.head.parameters():
        p.requires_grad_(True)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert vit_b_table["lora"]["trainable"] == trainable == L * 8 * (D + 3 * D) + HEAD


def test_adaptformer_and_ssf(vit_b_table):
    assert vit_b_table["adaptformer"]["trainable"] == L * (2 * D * 64 + 64 + D) + HEAD
    assert vit_b_table["ssf"]["trainable"] == L * 2 * (D + 3 * D + D + D + 4 * D + D) + 2 * D + 2 * D + HEAD


def test_dvpt_near_half_a_percent(vit_b_table):
    row = vit_b_table["dvpt"]
    assert row["added"] == dvpt_parameter_count(D, L, DVPTConfig())
    assert 0.45 < row["added_pct"] < 0.55
    assert row["trainable"] == row["added"] + HEAD


def test_checkpoint_bytes_are_trainable_only(vit_b_table):
    assert vit_b_table["linear"]["checkpoint_bytes"] < 20_000
    assert vit_b_table["dvpt"]["checkpoint_bytes"] < 0.01 * vit_b_table["full"]["checkpoint_bytes"]
    assert vit_b_table["full"]["checkpoint_bytes"] >= 4 * vit_b_table["full"]["trainable"]


# ----------------------------------------------------------------------------- small models

def tiny(method=None, seed=0, **cfg):
    torch.manual_seed(seed)
    model = create_vit("vit_tiny_patch16_224", num_classes=C, pretrained=False, img_size=32, tiny=True)
    return methods.adapt(model, method, **cfg) if method else model


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_only_trainable_params_get_gradients(method):
    model = tiny(method)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{method}: {name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{method}: frozen {name} got a gradient"


@pytest.mark.parametrize("method", ["adaptformer", "ssf", "dvpt", "lora"])
def test_adapted_equals_frozen_at_init(method):
    base = tiny(None, seed=1)
    adapted = methods.adapt(copy.deepcopy(base), method)
    x = torch.randn(3, 3, 32, 32)
    base.eval(), adapted.eval()
    assert torch.allclose(base(x), adapted(x), atol=1e-6)


@pytest.mark.parametrize("cfg", [dict(), dict(inject="cls"), dict(position="block"), dict(cross_attention=False),
                                 dict(group_size=1), dict(group_size=4)])
def test_dvpt_variants_start_frozen(cfg):
    base = tiny(None, seed=2)
    adapted = methods.adapt(copy.deepcopy(base), "dvpt", **cfg)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(base.eval()(x), adapted.eval()(x), atol=1e-6)


def test_dvpt_sharing_really_shares():
    model = tiny("dvpt", group_size=2)                       # 4 layers -> 2 modules
    assert len(model.dvpt) == 2
    first = [blk.mlp._shared.module for blk in model.blocks]
    assert first[0] is first[1] is model.dvpt[0] and first[2] is first[3] is model.dvpt[1]
    assert first[1] is not first[2]
    names = list(methods.trainable_state_dict(model))
    assert sum(n.endswith("down.weight") for n in names) == 2     # each shared tensor saved once
    model.dvpt[0].gate.data.fill_(1.0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.dvpt[0].down.weight.grad is not None           # gradients from both layers accumulate
    one_per_layer = tiny("dvpt", group_size=1)
    assert len(one_per_layer.dvpt) == 4
    assert count_parameters(one_per_layer, True) - HEAD_TINY == 2 * (count_parameters(model, True) - HEAD_TINY)


HEAD_TINY = 96 * C + C


def test_dvpt_cross_attention_is_on_the_forward_path():
    model = tiny("dvpt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for m in model.dvpt:
            m.gate.fill_(0.5)
        before = model(x)
        model.dvpt[0].prompts.add_(torch.randn_like(model.dvpt[0].prompts))
        after = model(x)
    assert not torch.allclose(before, after, atol=1e-5)
    # ... and the prompts are sample-specific: different images give different prompt features
    m = model.dvpt[0]
    feats = m.dynamic_prompts(torch.randn(2, 5, 96))
    assert feats.shape == (2, 10, 56) and not torch.allclose(feats[0], feats[1])


def test_dvpt_prompt_attention_shape():
    m = DVPTModule(96, DVPTConfig(bottleneck=32, heads=4, num_prompts=6))
    att = m.prompt_attention(torch.randn(3, 17, 96))
    assert att.shape == (3, 6, 17) and torch.allclose(att.sum(-1), torch.ones(3, 6))


def test_dvpt_config_errors():
    with pytest.raises(ValueError, match="divisible by heads"):
        DVPTConfig(bottleneck=30, heads=7)
    with pytest.raises(ValueError, match="inject='tokenz'"):
        DVPTConfig(inject="tokenz")
    with pytest.raises(ValueError, match="has no option"):
        methods.adapt(tiny(None), "dvpt", bottleneckk=3)
    with pytest.raises(ValueError, match="unknown method 'lorax'"):
        methods.adapt(tiny(None), "lorax")


def test_vpt_avg_pool_skips_prompts():
    model = create_vit("vit_tiny_patch16_224", num_classes=C, pretrained=False, img_size=32, tiny=True,
                       global_pool="avg", class_token=False)
    model = methods.adapt(model, "vpt_deep", num_prompts=3)
    assert model.num_prefix_tokens == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, C)


@pytest.mark.parametrize("method", ["dvpt", "lora", "vpt_deep", "ssf", "full"])
def test_save_load_reproduces_outputs(tmp_path, method):
    model = tiny(method, seed=3)
    with torch.no_grad():
        for p in methods.trainable_parameters(model):
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 3, 32, 32)
    ref = model.eval()(x)
    path = methods.save_trainable(model, tmp_path / "m.safetensors")
    fresh = tiny(method, seed=3)
    assert not torch.allclose(fresh.eval()(x), ref)
    methods.load_trainable(fresh, path)
    assert torch.allclose(fresh.eval()(x), ref, atol=1e-6)
    wrong = tiny("bitfit", seed=3)
    with pytest.raises(ValueError, match="checkpoint is for"):
        methods.load_trainable(wrong, path)


def test_offline_pretrained_error_names_the_fix(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # as on a machine without network
    with pytest.raises(WeightsUnavailableError) as info:
        create_vit("clip-vit-b16", num_classes=5, pretrained=True)
    msg = str(info.value)
    assert "vit_base_patch16_clip_224.openai" in msg and "pretrained=False" in msg
    assert "-p weights /path/to/model.safetensors" in msg and "-p profile smoke" in msg   # chapter parameters


def test_random_weights_are_labelled():
    assert create_vit("vit_tiny_patch16_224", 5, pretrained=False, tiny=True, img_size=32).nbsupport_weights == "random"


def test_ssf_folded_equals_unfolded():
    from nbsupport.vit.adapters.ssf import SSF, SSFLayerNorm, SSFLinear

    lin, ln = torch.nn.Linear(8, 6), torch.nn.LayerNorm(6)
    x = torch.randn(3, 4, 8)
    a, b = SSF(lin, 6), SSFLinear(lin)
    c, d = SSF(ln, 6), SSFLayerNorm(ln)
    with torch.no_grad():
        for m in (a, b):
            m.scale.copy_(torch.linspace(0.5, 1.5, 6))
            m.shift.copy_(torch.linspace(-1, 1, 6))
        for m in (c, d):
            m.scale.copy_(torch.linspace(2, 1, 6))
            m.shift.copy_(torch.linspace(1, -1, 6))
    assert torch.allclose(a(x), b(x), atol=1e-6)
    h = torch.randn(3, 4, 6)
    assert torch.allclose(c(h), d(h), atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_ssf_linear_gradients_equal_plain_autograd(bias):
    """The hand-written backward (no weight-gradient matmul) against autograd through
    ``(x W^T + b) * s + t``; without gradients the folded linear gives the same output."""
    from nbsupport.vit.adapters.ssf import SSFLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6, bias=bias).requires_grad_(False)
    m = SSFLinear(lin)
    with torch.no_grad():
        m.scale.copy_(torch.linspace(0.5, 1.5, 6))
        m.shift.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    m, lin = m.double(), lin.double()
    s, t = m.scale.detach().clone().requires_grad_(), m.shift.detach().clone().requires_grad_()
    dy = torch.randn(3, 4, 6, dtype=torch.float64)
    (m(x) * dy).sum().backward()
    got = x.grad.clone(), m.scale.grad, m.shift.grad
    x.grad = None
    ((lin(x) * s + t) * dy).sum().backward()
    for a, b in zip(got, (x.grad, s.grad, t.grad)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(m(x), lin(x) * s + t)
    assert torch.autograd.gradcheck(lambda x_, s_, t_: _ssf_apply(lin, x_, s_, t_), (x, s, t))


def _ssf_apply(lin, x, s, t):
    from nbsupport.vit.adapters.ssf import _ScaleShiftFrozenLinear

    return _ScaleShiftFrozenLinear.apply(x, lin.weight, lin.bias, s, t)


def test_ssf_linear_under_bf16_autocast_matches_fp32():
    from nbsupport.vit.adapters.ssf import SSFLinear

    torch.manual_seed(0)
    m = SSFLinear(torch.nn.Linear(64, 32).requires_grad_(False))
    x = torch.randn(4, 16, 64, requires_grad=True)
    (m(x) ** 2).sum().backward()
    ref = x.grad.clone(), m.scale.grad.clone(), m.shift.grad.clone()
    x.grad = m.scale.grad = m.shift.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16                 # no promotion to fp32 by the fp32 scale
    (y.float() ** 2).sum().backward()
    assert m.scale.grad.dtype == m.shift.grad.dtype == x.grad.dtype == torch.float32
    for a, b in zip((x.grad, m.scale.grad, m.shift.grad), ref):
        torch.testing.assert_close(a, b, rtol=0.03, atol=0.03 * b.abs().max().item())


def test_ssf_backward_costs_what_a_frozen_backbone_costs():
    """SSF's backward needs no weight-gradient matmul: its counted FLOPs are LoRA's, not full
    fine-tuning's (which differ by a whole forward's worth)."""
    from torch.utils.flop_counter import FlopCounterMode

    def step_flops(method: str) -> int:
        torch.manual_seed(0)
        model = methods.adapt(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=C,
                                                img_size=64), method)
        with FlopCounterMode(display=False) as fc:
            model(torch.randn(2, 3, 64, 64)).sum().backward()
        return fc.get_total_flops()

    full, lora, ssf = (step_flops(m) for m in ("full", "lora", "ssf"))
    assert ssf < 1.05 * lora and ssf < 0.75 * full


@pytest.mark.parametrize("inp", ["x", "norm"])
def test_adaptformer_reads_the_input_the_official_code_reads(inp):
    """Official code: ``x + MLP(LN(x)) + s * up(relu(down(x)))`` (un-normalised x); paper figure: LN(x)."""
    base = tiny(None, seed=3).eval()
    model = methods.adapt(copy.deepcopy(base), "adaptformer", input=inp).eval()
    blk, ref = model.blocks[0], base.blocks[0]
    ad = blk.mlp.branch
    with torch.no_grad():
        torch.nn.init.normal_(ad.up.weight, std=0.1)
        x = torch.randn(2, 5, base.embed_dim)
        h = x + ref.attn(ref.norm1(x))
        a = h if inp == "x" else ref.norm2(h)
        expected = h + ref.mlp(ref.norm2(h)) + ad.scale * ad.up(torch.relu(ad.down(a)))
        assert torch.allclose(blk(x), expected, atol=1e-5)
    assert ad.dropout.p == 0.1 and ad.scale == 0.1
    with pytest.raises(ValueError, match="input='ln'"):
        methods.adapt(copy.deepcopy(base), "adaptformer", input="ln")


def test_unknown_method_names_fail_before_any_training():
    assert methods.check_names(["dvpt", "lora"]) == ["dvpt", "lora"]
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['dvtp'\].*linear, full"):
        methods.check_names(["dvpt", "dvtp"])
    from nbsupport.vit.experiment import default_train_config

    with pytest.raises(ValueError, match="unknown method"):
        default_train_config("smoke", "lorra")
