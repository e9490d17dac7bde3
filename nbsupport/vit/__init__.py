"""Vision Transformers: backbones, adapters (DVPT, VPT, SSF, AdaptFormer), the method registry,
training, metrics and the classification experiment."""
