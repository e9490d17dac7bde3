"""The pocket Stable Diffusion: a small latent text-to-image model built from SD's own classes.

Same parts as Stable Diffusion v1.5, scaled for a laptop and for 64 px fundus photographs:

============  =====================================  ===========================================
part          class                                  pocket size
============  =====================================  ===========================================
VAE           ``diffusers.AutoencoderKL``            64 px <-> 4 x 16 x 16 latents (4x, SD: 8x); 0.7 M
UNet          ``diffusers.UNet2DConditionModel``     cross-attention down/up blocks as SD's; 3.2 M
text encoder  ``transformers.CLIPTextModel``         4 layers, width 128, local vocabulary; 0.9 M
scheduler     ``diffusers.DDPMScheduler``            SD's betas rescaled to zero terminal SNR,
                                                     v-prediction (as SD 2.x), trailing steps
============  =====================================  ===========================================

Because the classes are the same, every fine-tuning method of :mod:`nbsupport.sd.methods`
(``unet``, ``text_encoder``, ``vae``, their combinations, ``lora``, ``dora``, ``bitfit``,
``difffit``) applies unchanged. The tokenizer is CLIP's byte-level BPE over a vocabulary written
from :data:`POCKET_WORDS` (every word the fundus captions can use, and a few more): words it does not
know still tokenize (into characters) and :func:`check_prompts` warns about them.

The shipped weights (``nbsupport/weights/pocket-fundus-sd.safetensors``, fp16, one file with
``unet.``/``vae.``/``text_encoder.`` prefixes) are checked against their sha256 at every load;
``python -m nbsupport pretrain-sd`` reproduces them (:mod:`nbsupport.sd.pretrain`).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from nbsupport.sd.models import SDComponents, WeightsUnavailableError, training_scheduler

__all__ = ["POCKET_SD", "POCKET_WORDS", "POCKET_RESOLUTION", "POCKET_SD_FILE", "POCKET_SD_SHA256",
           "pocket_tokenizer", "build_pocket", "load_pocket", "check_prompts", "component_sizes", "shipped_record"]

POCKET_RESOLUTION = 64
POCKET_SD: dict[str, dict[str, Any]] = {
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                sample_size=POCKET_RESOLUTION, block_out_channels=(16, 32, 64),
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                norm_num_groups=8),
    "unet": dict(sample_size=POCKET_RESOLUTION // 4, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(32, 64, 128),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=128, attention_head_dim=4, norm_num_groups=16),
    "text": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=128),
    # SD's beta schedule rescaled to zero terminal SNR, with v-prediction and trailing sampling steps
    # (Lin et al., 2024, arXiv:2305.08891). With SD 1.5's schedule the last step still carries
    # sqrt(0.0047) of the image, enough for a model to read the optic disc's side from the noise
    # instead of the caption: the first pocket recipe learned to ignore "left"/"right" entirely.
    "scheduler": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                      clip_sample=False, steps_offset=1),
}

# Every word a fundus caption can use (grades, findings, eyes, cameras), plus common prompt words.
POCKET_WORDS: tuple[str, ...] = tuple(sorted(set("""
a an the of with and or no without in on at to for from by showing shows
colour color fundus photograph photo image picture retina retinal eye eyes left right
diabetic retinopathy non proliferative nonproliferative mild moderate severe healthy normal
microaneurysms microaneurysm haemorrhages haemorrhage hemorrhages hemorrhage hard exudates exudate
cotton wool spots spot neovascularisation neovascularization venous beading drusen pigment clumps
optic disc fovea macula vessels camera clinic bright warm dim bluish dark blurry sharp grade
""".split())))
POCKET_SD_FILE = "pocket-fundus-sd.safetensors"
POCKET_SD_SHA256: str | None = "aa87ead5160b169bfcc57fd533b3e74ba0ec8fe9cacd5cda345c2c3d127d19ef"   # nbsupport/weights/pocket-fundus-sd.json says how it was made

_WORD = re.compile(r"[a-z]+")


def pocket_tokenizer(directory: str | Path | None = None):
    """The pocket text encoder's ``CLIPTokenizer`` (vocabulary written from :data:`POCKET_WORDS`)."""
    from nbsupport.core.paths import cache_dir
    from nbsupport.sd.tokenizer import load_tiny_tokenizer

    directory = Path(directory) if directory is not None else cache_dir() / "pocket-sd-tokenizer"
    return load_tiny_tokenizer([" ".join(POCKET_WORDS)], directory)


def check_prompts(prompts: Iterable[str], known: Iterable[str] = POCKET_WORDS, stacklevel: int = 2) -> list[str]:
    """Warn (once, naming them) about prompt words outside the pocket vocabulary; return them.

    Such words still tokenize (byte-level BPE falls back to characters), but the pocket text
    encoder has never seen them, so they carry little meaning until the text encoder is tuned.
    """
    vocab = set(known)
    unknown = sorted({w for p in prompts for w in _WORD.findall(p.lower()) if w not in vocab})
    if unknown:
        warnings.warn(f"prompt words outside the pocket vocabulary: {unknown[:12]}{' ...' if len(unknown) > 12 else ''}; "
                      "they are tokenized into characters the text encoder was not trained on",
                      stacklevel=stacklevel)
    return unknown


def build_pocket(seed: int = 0, tokenizer_dir: str | Path | None = None) -> SDComponents:
    """The pocket architecture with random weights (what pretraining starts from)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = pocket_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**POCKET_SD["vae"])
    unet = UNet2DConditionModel(**POCKET_SD["unet"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                        **POCKET_SD["text"]))
    return SDComponents(unet, vae, text, tok, training_scheduler(POCKET_SD["scheduler"]), "random",
                        "pocket Stable Diffusion (random init)",
                        extra={"resolution": POCKET_RESOLUTION})


def component_sizes(components: SDComponents) -> dict[str, int]:
    """Parameters per component (``unet``, ``text_encoder``, ``vae``)."""
    return {k: sum(p.numel() for p in m.parameters()) for k, m in components.models().items()}


def _weights_path() -> Path:
    from nbsupport.vit.backbones import weights_dir

    return weights_dir() / POCKET_SD_FILE


def shipped_record() -> dict[str, Any]:
    """The record that ships beside the pocket SD's weights (recipe, device, time, loss curves, evaluations)."""
    path = _weights_path().with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record of the pocket Stable Diffusion in this installation; reinstall "
                                "nbsupport from a complete checkout, or reproduce it with "
                                "`python -m nbsupport pretrain-sd --export`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_pocket(weights_path: str | Path | None = None, expected_sha256: str | None = None) -> SDComponents:
    """The pocket Stable Diffusion with its pretrained weights, hash-checked.

    Args:
        weights_path: a file written by :func:`nbsupport.sd.pretrain.export_pocket` (default: the
            shipped one, checked against :data:`POCKET_SD_SHA256`).
        expected_sha256: the hash a non-default file must have (None: not checked, and the weights
            label says ``local:``).

    Raises:
        WeightsUnavailableError: missing file, wrong hash, or a file that does not fit the architecture,
            each naming the fix.
    """
    import safetensors.torch

    from nbsupport.vit.backbones import sha256_of

    shipped = weights_path is None
    path = _weights_path() if shipped else Path(weights_path).expanduser()
    expected = POCKET_SD_SHA256 if shipped else expected_sha256
    reproduce = (f"reproduce it with `python -m nbsupport pretrain-sd --export {path}` (a GPU in practice), "
                 "or use profile='smoke' (tiny random pipeline)")
    if shipped and POCKET_SD_SHA256 is None:
        raise WeightsUnavailableError(f"the pocket Stable Diffusion's weights are not shipped in this version of "
                                      f"nbsupport yet; {reproduce} and pass weights_path=")
    if not path.is_file():
        raise WeightsUnavailableError(f"pocket Stable Diffusion: weights file {path} is missing; {reproduce}")
    digest = sha256_of(path)
    if expected is not None and digest != expected:
        raise WeightsUnavailableError(f"pocket Stable Diffusion: {path} has sha256 {digest[:16]}..., expected "
                                      f"{expected[:16]}... (corrupted, truncated or replaced). Restore it with "
                                      f"`git checkout -- {path.name}` in nbsupport/weights, or {reproduce}")
    comp = build_pocket()
    state = safetensors.torch.load_file(str(path))
    meta = safetensors.safe_open(str(path), "pt").metadata() or {}
    for name, model in comp.models().items():
        part = {k[len(name) + 1:]: v.float() for k, v in state.items() if k.startswith(name + ".")}
        missing, unexpected = model.load_state_dict(part, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(f"pocket Stable Diffusion: {path} does not fit the pocket {name} "
                                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {reproduce}")
    if "vae_scaling_factor" in meta:
        comp.vae.register_to_config(scaling_factor=float(meta["vae_scaling_factor"]))
    for model in comp.models().values():
        model.eval()
    comp.weights = f"pretrained:pocket-fundus-sd@sha256:{digest[:16]}" if expected else f"local:{path}"
    comp.name = "pocket Stable Diffusion"
    comp.extra["record"] = json.loads(meta.get("record", "{}"))
    return comp
