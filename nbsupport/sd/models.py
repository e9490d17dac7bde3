"""Stable Diffusion v1.5 components: from the hub (pinned), or built from configs without weights.

``SD15`` configs reproduce the real architecture (UNet 859,520,964 parameters, text encoder
123,060,480, VAE 83,653,863) for parameter counts and cost benchmarks; ``build_sd15(device="meta")``
builds it without allocating memory. ``build_tiny`` makes a small random pipeline (and a local
tokenizer) for the smoke profile. ``load_pretrained`` loads real weights and, offline, fails with
an error that names the fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["SD15_HUB_ID", "SD15_REVISION", "UNET_SD15", "VAE_SD15", "TEXT_SD15", "SDComponents",
           "build_sd15", "build_from_configs", "build_tiny", "load_pretrained", "load_for_profile",
           "training_scheduler", "WeightsUnavailableError"]

# The original runwayml repository moved; this is the maintained mirror.
SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_REVISION: str | None = None   # pin a commit here once verified (see the chapter note)

UNET_SD15: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
VAE_SD15: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT_SD15: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
TINY = dict(
    unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
              attention_head_dim=4, norm_num_groups=8),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
             block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32),
)


class WeightsUnavailableError(RuntimeError):
    """Stable Diffusion weights could not be loaded."""


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline that fine-tuning touches.

    Attributes:
        unet: ``UNet2DConditionModel`` (latents ``[B, 4, H/8, W/8]`` -> noise prediction).
        vae: ``AutoencoderKL`` (pixels ``[B, 3, H, W]`` in [-1, 1] <-> latents).
        text_encoder: ``CLIPTextModel`` (token ids ``[B, 77]`` -> ``[B, 77, C]``).
        tokenizer: ``CLIPTokenizer`` (None for meta builds).
        scheduler: ``DDPMScheduler`` for training (epsilon prediction).
        weights: ``"random"`` or ``"pretrained:<id>@<rev>"``.
        name: a short description.
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any
    weights: str
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    def models(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}

    def to(self, device: torch.device | str) -> "SDComponents":
        for m in self.models().values():
            m.to(device)
        return self

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))


def _scheduler() -> Any:
    from diffusers import DDPMScheduler

    # SD 1.5's training noise schedule
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         steps_offset=1)


def build_sd15(device: str | torch.device = "meta", with_vae: bool = True) -> SDComponents:
    """The SD 1.5 architecture from its configs, random (or, on ``meta``, unallocated) weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_SD15)
        vae = AutoencoderKL(**VAE_SD15) if with_vae else nn.Identity()
        text = CLIPTextModel(CLIPTextConfig(**TEXT_SD15))
    return SDComponents(unet, vae, text, None, _scheduler(), "random", "SD 1.5 architecture (no weights)")


def _is_local(src: str | Path) -> bool:
    return Path(str(src)).expanduser().is_dir()


def _configs(src: str | Path, revision: str | None = None) -> dict[str, Any]:
    """The ``unet``, ``vae``, ``text_encoder`` and ``scheduler`` configs of a diffusers SD snapshot
    (a local folder, or a hub id: only the small JSON files are fetched)."""
    import json

    def read(sub: str, name: str) -> dict[str, Any] | None:
        if _is_local(src):
            f = Path(str(src)).expanduser() / sub / name
            return json.loads(f.read_text()) if f.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return json.loads(Path(hf_hub_download(str(src), name, subfolder=sub, revision=revision)).read_text())
        except EntryNotFoundError:       # the repository has no such file (only that counts as absent)
            return None
        except (OSError, ValueError) as exc:     # offline, no such repository, a bad id
            raise WeightsUnavailableError(
                f"{src}: could not read {sub}/{name} ({exc.__class__.__name__}: {str(exc)[:200]}). Expected a "
                "local folder or a hub id of a diffusers Stable Diffusion snapshot (offline: a local folder)") from exc

    text = str(src)
    hub_like = not text.startswith(("/", ".", "~")) and text.count("/") <= 1 and "\\" not in text
    if not hub_like and not _is_local(src):
        raise WeightsUnavailableError(f"{src}: folder not found (expected a diffusers Stable Diffusion snapshot: "
                                      "unet/, vae/, text_encoder/, tokenizer/, scheduler/)")

    out = {"unet": read("unet", "config.json"), "vae": read("vae", "config.json"),
           "text_encoder": read("text_encoder", "config.json"), "scheduler": read("scheduler", "scheduler_config.json")}
    missing = [k for k in ("unet", "vae", "text_encoder") if out[k] is None]
    if missing:
        raise WeightsUnavailableError(
            f"{src}: no {', '.join(f'{m}/config.json' for m in missing)}. Expected a diffusers Stable Diffusion "
            "snapshot (unet/, vae/, text_encoder/, tokenizer/, scheduler/), as a local folder or a hub id "
            "(offline: a local folder)")
    return out


def training_scheduler(config: dict[str, Any] | None) -> Any:
    """A ``DDPMScheduler`` with a snapshot's noise schedule and ``prediction_type`` (SD 1.x:
    ``epsilon``; SD 2.x at 768 px: ``v_prediction``); SD 1.5's schedule when ``config`` is None."""
    from diffusers import DDPMScheduler

    if config is None:
        return _scheduler()
    return DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def build_from_configs(src: str | Path, device: str | torch.device = "meta", revision: str | None = None) -> SDComponents:
    """Any diffusers SD snapshot's architecture (SD 1.x, 2.x, the pocket model, ...) from its configs,
    random (or, on ``meta``, unallocated) weights: parameter counts and costs without the weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = _configs(src, revision)
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(strip(cfg["unet"]))
        vae = AutoencoderKL.from_config(strip(cfg["vae"]))
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items()
                                               if k not in ("architectures", "transformers_version")}))
    return SDComponents(unet, vae, text, None, training_scheduler(cfg["scheduler"]), "random",
                        f"architecture of {src} (no weights)")


def build_tiny(corpus: Iterable[str], tokenizer_dir: str | Path, seed: int = 0) -> SDComponents:
    """A tiny random Stable Diffusion (same classes, a few hundred thousand parameters) and a
    local tokenizer whose vocabulary covers ``corpus``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nbsupport.sd.tokenizer import load_tiny_tokenizer

    tok = load_tiny_tokenizer(corpus, tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY["unet"])
    vae = AutoencoderKL(**TINY["vae"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                        **TINY["text"]))
    return SDComponents(unet, vae, text, tok, _scheduler(), "random", "tiny random Stable Diffusion")


def load_pretrained(hub_id: str = SD15_HUB_ID, revision: str | None = None,
                    local_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and the training scheduler of any diffusers Stable
    Diffusion snapshot (SD 1.x, 2.x, ...) from the hub (``hub_id@revision``) or a local folder.

    The scheduler comes from the snapshot's ``scheduler/scheduler_config.json``: its noise schedule
    and ``prediction_type`` (``epsilon`` or ``v_prediction``) decide the training loss.

    Raises:
        WeightsUnavailableError: naming the repository and the fixes.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if local_dir is None and "@" in hub_id:
        hub_id, revision = hub_id.split("@", 1)
    if revision is None and hub_id == SD15_HUB_ID:
        revision = SD15_REVISION          # the pinned default applies to the default model only
    src = str(Path(str(local_dir)).expanduser()) if local_dir else hub_id
    kw: dict[str, Any] = {"revision": revision} if (revision and not local_dir) else {}
    try:
        tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        text = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=dtype, use_safetensors=True, **kw)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype, use_safetensors=True, **kw)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, use_safetensors=True, **kw)
        scheduler_cfg = _configs(src, revision)["scheduler"]
    except (OSError, ValueError, RuntimeError, ConnectionError) as exc:
        raise WeightsUnavailableError(
            f"could not load Stable Diffusion from {src!r}{'@' + revision if revision else ''} "
            f"({exc.__class__.__name__}: {str(exc)[:300]}). Offline? Fixes: a local copy of the repository "
            "(unet/, vae/, text_encoder/, tokenizer/, scheduler/ with safetensors; in a chapter: -p sd_weights /path), "
            "or the smoke profile (-p profile smoke: a tiny random pipeline). A token, if the repository needs "
            "one, is read from the HF_TOKEN environment variable.") from exc
    if local_dir:
        label = f"local:{local_dir}"
    else:                                 # the commit the files came from, not just the branch asked for
        from nbsupport.core.hub import loaded_revision

        commit = loaded_revision(hub_id, ["unet/config.json", "model_index.json"], revision)
        label = f"pretrained:{hub_id}@{commit or revision or 'default'}"
    comp = SDComponents(unet, vae, text, tok, training_scheduler(scheduler_cfg), label, f"Stable Diffusion ({src})")
    if scheduler_cfg is None:
        comp.extra["notice"] = f"{src} has no scheduler/scheduler_config.json: SD 1.5's schedule (epsilon) is used"
    return comp


def load_for_profile(profile: Any, captions: Iterable[str] = (), tokenizer_dir: str | Path | None = None,
                     seed: int = 0, weights: str | Path | None = None) -> SDComponents:
    """The Stable Diffusion a profile works with (``profile.sd_model``), freshly loaded.

    - ``tiny``: :func:`build_tiny` (random by design; its tokenizer covers ``captions``);
    - ``pocket``: :func:`nbsupport.sd.pocket.load_pocket` (the shipped weights, hash-checked, or the
      file ``weights`` names);
    - ``sd15``: :func:`load_pretrained` (the pinned SD 1.5 hub id; or ``weights``: a local snapshot
      folder or another hub id with an optional ``@revision``, e.g. an SD 2.x model).

    Raises:
        WeightsUnavailableError: when the weights cannot be had, naming the fixes.
        ValueError: for an unknown ``sd_model``.
    """
    import tempfile

    from nbsupport.core.profiles import get_profile

    prof = get_profile(profile)
    if prof.sd_model == "tiny":
        if weights is not None:
            raise ValueError(f"profile {prof.name!r} uses a tiny random Stable Diffusion; weights={weights!r} "
                             "needs a profile with sd_model 'pocket' or 'sd15' (e.g. profile='cpu')")
        tok_dir = tokenizer_dir if tokenizer_dir is not None else Path(tempfile.mkdtemp()) / "tokenizer"
        return build_tiny(list(captions), tok_dir, seed=seed)
    if prof.sd_model == "pocket":
        from nbsupport.sd.pocket import check_prompts, load_pocket

        comp = load_pocket(weights)
        check_prompts(captions, stacklevel=3)
        return comp
    if prof.sd_model == "sd15":
        if weights is not None and not Path(str(weights)).expanduser().exists():
            return load_pretrained(str(weights))           # a hub id, with an optional @revision
        return load_pretrained(local_dir=weights)
    raise ValueError(f"profile {prof.name!r}: sd_model={prof.sd_model!r} is not one of 'tiny', 'pocket', 'sd15'")
