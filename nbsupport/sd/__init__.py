"""Stable Diffusion v1.5 fine-tuning: models, methods, training, sampling.

Sub-modules: :mod:`~nbsupport.sd.models` (load from the hub, or build SD 1.5 / a tiny pipeline from
configs), :mod:`~nbsupport.sd.tokenizer` (a small local CLIP vocabulary), :mod:`~nbsupport.sd.methods`
(the eleven fine-tuning configurations plus DiffFit), :mod:`~nbsupport.sd.train` and
:mod:`~nbsupport.sd.sampling`. Importing this package imports none of them (diffusers is optional).
"""
