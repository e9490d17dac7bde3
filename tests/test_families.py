"""Every method on every supported timm ViT family either trains with all its tensors receiving
gradients (and starts from the frozen model where it promises to), or is refused before training
with a message naming the family; one small model per family, built without weights."""

from __future__ import annotations

import pytest
import timm
import torch

from nbsupport.vit import methods
from nbsupport.vit.backbones import create_vit
from nbsupport.vit.families import UnsupportedModelError, describe, probe

SMALL = dict(pretrained=False, num_classes=5, depth=2, embed_dim=48, num_heads=3)
FAMILIES = {
    "vit, class token": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, **SMALL),
    "vit, pooled, no class token": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                                             class_token=False, global_pool="avg", **SMALL),
    "vit, registers": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=4,
                                                **SMALL),
    "eva, rotary, fused qkv": lambda: timm.create_model("eva02_tiny_patch14_224", img_size=28, patch_size=7,
                                                        **SMALL),
    "eva, rotary, separate q/k/v": lambda: timm.create_model("eva02_tiny_patch14_224", img_size=28, patch_size=7,
                                                             qkv_fused=False, **SMALL),
}
CONFIG = {"dvpt": {"bottleneck": 12, "heads": 2}, "adaptformer": {"bottleneck": 8}}


@pytest.mark.parametrize("method", list(methods.METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_method_trains_on_every_family(family, method):
    torch.manual_seed(0)
    model = methods.adapt(FAMILIES[family](), method, **CONFIG.get(method, {}))   # the probe runs inside
    trainable = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(4, 3, *model.patch_embed.img_size)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    before = [p.detach().clone() for p in trainable]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert all(p.grad is not None for p in trainable)
        opt.step()
    moved = sum(not torch.equal(a, p) for a, p in zip(before, trainable))
    assert moved == len(trainable)                     # every trainable tensor actually trained


def test_families_are_what_they_say():
    assert describe(FAMILIES["vit, pooled, no class token"]())["class_token"] is False
    assert describe(FAMILIES["vit, registers"]())["registers"] == 4
    eva = describe(FAMILIES["eva, rotary, fused qkv"]())
    assert eva["family"] == "Eva" and eva["rotary"] and eva["fused_qkv"]
    assert not describe(FAMILIES["eva, rotary, separate q/k/v"]())["fused_qkv"]


def test_lora_on_separate_projections_targets_q_k_v():
    model = methods.adapt(FAMILIES["eva, rotary, separate q/k/v"](), "lora")
    names = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj"}


def test_the_probe_catches_a_lora_that_eva_bypasses():
    # what happened before the check: LoRA injected into attn.qkv, which Eva reads as qkv.weight
    from peft import LoraConfig, inject_adapter_in_model

    model = FAMILIES["eva, rotary, fused qkv"]()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["qkv"]), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    with pytest.raises(UnsupportedModelError, match="receive no gradient"):
        probe(model, "lora", ref, x)


def test_the_probe_catches_a_method_that_changes_the_frozen_model_at_init():
    model = FAMILIES["vit, class token"]()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.eval().forward_head(model.forward_features(x), pre_logits=True)
        model.blocks[0].mlp.fc2.bias += torch.randn(48)   # a "zero-initialised" branch that is not zero
    with pytest.raises(UnsupportedModelError, match="changes the features at initialisation"):
        probe(model, "lora", ref, x)


def test_dvpt_cls_injection_needs_a_class_token():
    with pytest.raises(UnsupportedModelError, match="needs a class token"):
        methods.adapt(FAMILIES["vit, pooled, no class token"](), "dvpt", inject="cls", bottleneck=12, heads=2)
    methods.adapt(FAMILIES["vit, class token"](), "dvpt", inject="cls", bottleneck=12, heads=2)


def test_cnns_are_refused_with_the_family_named():
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=5)
    with pytest.raises(UnsupportedModelError, match="cannot adapt a ResNet"):
        methods.adapt(cnn, "lora")
    methods.adapt(timm.create_model("resnet18", pretrained=False, num_classes=5), "linear")   # a head works anywhere
    with pytest.raises(UnsupportedModelError, match="a timm ResNet is not a Vision Transformer"):
        create_vit("resnet18", num_classes=5, pretrained=True)      # refused before any download


def test_a_timm_hub_load_records_the_commit_it_loaded(tmp_path, monkeypatch):
    """Offline from the hub cache: the record's weights name the snapshot's commit."""
    import safetensors.torch
    import timm

    from nbsupport.vit.backbones import create_vit

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    snap = tmp_path / "hub" / f"models--timm--{name}" / "snapshots" / commit
    snap.mkdir(parents=True)
    src = timm.create_model(name, pretrained=False)
    safetensors.torch.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors"))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    for var, value in (("HF_HUB_CACHE", str(tmp_path / "hub")), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(var, str(value) if var == "HF_HUB_CACHE" else "1")
        monkeypatch.setattr(f"huggingface_hub.constants.{var}", value)
    model = create_vit(name, num_classes=0, pretrained=True)
    assert model.nbsupport_weights == f"pretrained:{name}@{commit}"
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
