"""A small CLIP tokenizer vocabulary written locally, for tiny offline text encoders.

CLIP's tokenizer is a byte-level BPE. The real vocabulary (49,408 tokens) comes with the hub
weights; offline we write a vocabulary with the 256 byte symbols (plus their end-of-word forms),
the two special tokens, and merges that build each word of a given corpus. Any text tokenizes
(unknown words fall back to characters); the corpus' words become one or a few tokens (BPE applies
merges by rank, so words sharing pieces may stop short of the whole word).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

__all__ = ["write_clip_vocabulary", "load_tiny_tokenizer"]

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_vocabulary(corpus: Iterable[str], directory: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a ``CLIPTokenizer`` that knows the corpus' words.

    Returns the directory (load it with ``CLIPTokenizer.from_pretrained(directory)``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_syms = list(_bytes_to_unicode().values())
    vocab: list[str] = byte_syms + [s + "</w>" for s in byte_syms]
    merges: list[str] = []
    seen = set(vocab)
    words = sorted({w for text in corpus for w in _WORD.findall(text.lower())})
    for word in words:
        symbols = list(word)
        symbols[-1] += "</w>"
        current = symbols[0]
        for nxt in symbols[1:]:
            merge = f"{current} {nxt}"
            merged = current + nxt
            if merged not in seen:
                merges.append(merge)
                vocab.append(merged)
                seen.add(merged)
            current = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def load_tiny_tokenizer(corpus: Iterable[str], directory: str | Path, max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` over :func:`write_clip_vocabulary`'s files."""
    from transformers import CLIPTokenizer

    path = write_clip_vocabulary(corpus, directory)
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length)
