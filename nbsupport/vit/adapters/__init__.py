"""Hand-written adaptation modules that no library provides: VPT, AdaptFormer, SSF, DVPT.

LoRA and DoRA come from ``peft``; BitFit, linear probing and full fine-tuning only choose which
existing parameters train (see :mod:`nbsupport.vit.methods`).
"""
