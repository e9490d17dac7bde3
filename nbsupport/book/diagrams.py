"""The book's diagrams, drawn by code (matplotlib) so they live in the repository as source.

Each function returns a matplotlib figure; the chapters display it where a reader would rather
look than read. Boxes say what a part is and the tensor shape it produces; colours say who trains:
grey is frozen, orange is trained by the method, blue is data.

>>> diagrams.dvpt_module()          # chapter 02
>>> diagrams.vit_block_methods()    # chapter 01
>>> diagrams.sd_pipeline()          # chapter 05
>>> diagrams.evaluation_protocol()  # chapters 07 and 08
"""

from __future__ import annotations

from typing import Any

__all__ = ["dvpt_module", "vit_block_methods", "sd_pipeline", "evaluation_protocol"]

FROZEN, TRAINED, DATA, OUTPUT = "#e6e6e6", "#fdd9a8", "#cfe3f6", "#d9f0d3"
FONT_SCALE = 1.25   # every font size below is multiplied by this: a page shows a 10 in figure at ~8 in


class _Canvas:
    """A figure in data coordinates (``width x height`` units) with boxes and arrows."""

    def __init__(self, width: float, height: float, scale: float = 0.75, title: str | None = None) -> None:
        import matplotlib.pyplot as plt

        self.fig, self.ax = plt.subplots(figsize=(width * scale, height * scale))
        self.ax.set(xlim=(0, width), ylim=(0, height), aspect="equal")
        self.ax.axis("off")
        if title:
            self.ax.set_title(title, fontsize=11 * FONT_SCALE, loc="left")

    def box(self, x: float, y: float, w: float, h: float, text: str, colour: str = FROZEN,
            size: float = 8.5, style: str = "round,pad=0.02,rounding_size=0.12", ls: str = "-") -> tuple[float, ...]:
        """A box with its lower-left corner at ``(x, y)``; returns ``(x, y, w, h)``."""
        from matplotlib.patches import FancyBboxPatch

        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=colour, ec="#555555", lw=1.0, ls=ls))
        self.ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size * FONT_SCALE)
        return (x, y, w, h)

    def arrow(self, a: tuple[float, float], b: tuple[float, float], text: str = "", colour: str = "#333333",
              ls: str = "-", size: float = 7.5, rad: float = 0.0, offset: tuple[float, float] = (0.0, 0.12)) -> None:
        """An arrow from point ``a`` to point ``b`` with an optional label at its middle."""
        self.ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.1, ls=ls,
                                                              shrinkA=1, shrinkB=1,
                                                              connectionstyle=f"arc3,rad={rad}"))
        if text:
            self.ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, ha="center",
                         va="bottom", fontsize=size * FONT_SCALE, color="#333333")

    def note(self, x: float, y: float, text: str, size: float = 8.0, colour: str = "#333333", **kw: Any) -> None:
        self.ax.text(x, y, text, fontsize=size * FONT_SCALE, color=colour, **kw)

    def legend(self, x: float, y: float, items: list[tuple[str, str]]) -> None:
        """Colour swatches with their meaning, left to right from ``(x, y)``."""
        for colour, text in items:
            self.box(x, y, 0.35, 0.25, "", colour, style="square,pad=0")
            self.note(x + 0.45, y + 0.02, text, size=8)
            x += 0.6 + 0.11 * len(text)

    def path(self, points: list[tuple[float, float]], colour: str = "#666666", ls: str = "--") -> None:
        """A polyline through ``points`` with an arrow head at the last one."""
        xs, ys = zip(*points)
        self.ax.plot(xs[:-1] + (xs[-1],), ys[:-1] + (ys[-1],), color=colour, ls=ls, lw=1.0)
        self.arrow(points[-2], points[-1], colour=colour)

    @staticmethod
    def right(b: tuple[float, ...]) -> tuple[float, float]:
        return (b[0] + b[2], b[1] + b[3] / 2)

    @staticmethod
    def left(b: tuple[float, ...]) -> tuple[float, float]:
        return (b[0], b[1] + b[3] / 2)

    @staticmethod
    def top(b: tuple[float, ...]) -> tuple[float, float]:
        return (b[0] + b[2] / 2, b[1] + b[3])

    @staticmethod
    def bottom(b: tuple[float, ...]) -> tuple[float, float]:
        return (b[0] + b[2] / 2, b[1])

    def done(self) -> Any:
        self.fig.tight_layout()
        return self.fig


def dvpt_module() -> Any:
    """DVPT's module as :mod:`nbsupport.vit.adapters.dvpt` builds it (``inject="tokens"``)."""
    c = _Canvas(13.0, 6.2, title="One DVPT module (parallel to a block's MLP; shared by group_size consecutive blocks)")
    x_in = c.box(0.2, 2.2, 1.9, 1.0, "frozen tokens\nLN(x)  [B, N, D]", DATA)
    down = c.box(2.7, 2.2, 1.8, 1.0, "bottleneck\nGELU(down(x))\nD → r", TRAINED)
    kv = c.box(5.1, 2.2, 1.9, 1.0, "H  [B, N, r]\n→ keys, values,\ntoken queries", TRAINED)
    prompts = c.box(2.5, 4.4, 2.25, 1.0, "learnable prompts\n[P, r]\n→ queries", TRAINED)
    xattn1 = c.box(7.3, 4.0, 3.0, 1.3, "cross-attention 1\nprompts read the tokens\n→ dynamic prompts\n[B, P, r]",
                   TRAINED)
    xattn2 = c.box(7.3, 2.2, 3.0, 1.2, "cross-attention 2\ntokens read the prompts\n→ [B, N, r]", TRAINED)
    up = c.box(10.6, 2.2, 1.0, 1.0, "up\nr → D", TRAINED)
    gate = c.box(11.85, 2.2, 1.0, 1.0, "× gate\n(0 at\nstart)", TRAINED)
    mlp = c.box(7.3, 0.2, 3.0, 1.0, "the block's MLP (frozen)\n[B, N, D]", FROZEN)
    plus = c.box(11.95, 0.35, 0.8, 0.7, "+", OUTPUT, size=12)
    c.arrow(c.right(x_in), c.left(down))
    c.arrow(c.right(down), c.left(kv))
    c.arrow(c.right(prompts), c.left(xattn1), "queries Q")
    c.arrow((kv[0] + kv[2], kv[1] + 0.8), (xattn1[0], xattn1[1] + 0.3), "keys, values", rad=0.0, offset=(-0.75, -0.1))
    c.arrow(c.right(kv), c.left(xattn2))                  # the token queries (the box says so; a label would sit on edges)
    c.arrow(c.bottom(xattn1), c.top(xattn2), "keys, values", offset=(0.7, -0.1))
    c.arrow(c.right(xattn2), c.left(up))
    c.arrow(c.right(up), c.left(gate))
    c.arrow(c.bottom(gate), c.top(plus))
    c.arrow((x_in[0] + x_in[2] / 2, x_in[1]), (mlp[0], mlp[1] + mlp[3] / 2), rad=0.15)
    c.arrow(c.right(mlp), c.left(plus))
    c.note(0.2, 0.05, "MLP(LN(x)) + gate · up(…) is the frozen\nMLP branch's output while gate = 0", size=8.5)
    c.legend(0.2, 5.55, [(DATA, "data"), (FROZEN, "frozen"), (TRAINED, "trained"), (OUTPUT, "sum")])
    return c.done()


def vit_block_methods() -> Any:
    """One pre-norm ViT block and where each method of the book trains or inserts parameters."""
    c = _Canvas(13.0, 7.4, title="A ViT block and where each method adds or trains parameters")
    x0, w = 4.0, 3.7
    tokens = c.box(x0, 0.2, w, 0.8, "tokens [B, 1 + N, D]\n(class token + patches)", DATA)
    ln1 = c.box(x0, 1.4, w, 0.6, "LayerNorm", FROZEN)
    attn = c.box(x0, 2.4, w, 0.9, "multi-head self-attention\nqkv: D → 3D,  proj: D → D", FROZEN)
    add1 = c.box(x0 + w / 2 - 0.3, 3.6, 0.6, 0.5, "+", OUTPUT, size=11)
    ln2 = c.box(x0, 4.4, w, 0.6, "LayerNorm", FROZEN)
    mlp = c.box(x0, 5.4, w, 0.9, "MLP\nfc1: D → 4D, GELU, fc2: 4D → D", FROZEN)
    add2 = c.box(x0 + w / 2 - 0.3, 6.6, 0.6, 0.5, "+", OUTPUT, size=11)
    for a, b in ((tokens, ln1), (ln1, attn), (attn, add1), (add1, ln2), (ln2, mlp), (mlp, add2)):
        c.arrow(c.top(a), c.bottom(b))
    xr = x0 + w + 0.45                                                 # residual connections
    c.path([(x0 + w, 0.6), (xr, 0.6), (xr, 3.85), (x0 + w / 2 + 0.3, 3.85)])
    c.path([(x0 + w / 2 + 0.3, 3.95), (xr, 3.95), (xr, 6.85), (x0 + w / 2 + 0.3, 6.85)])
    c.note(xr + 0.08, 2.0, "residual", size=7.5, colour="#666666", rotation=90)
    left = [(0.2, 0.25, "VPT-shallow: P prompt tokens\njoin the input (first block only)"),
            (0.2, 1.25, "VPT-deep: new prompt tokens\nat every block's input"),
            (0.2, 2.45, "LoRA: W + B·A on qkv\n(rank r; B = 0 at start)"),
            (0.2, 4.35, "SSF: scale γ and shift β after\nevery op (folded in afterwards)"),
            (0.2, 5.45, "BitFit: every bias\n(qkv, proj, fc1, fc2, LN)")]
    for x, y, text in left:
        c.box(x, y, 3.2, 0.8, text, TRAINED, size=7.8)
    c.arrow((3.4, 0.65), (x0, 0.6), colour="#b35900")
    c.arrow((3.4, 1.65), (x0, 0.8), colour="#b35900")
    c.arrow((3.4, 2.85), (x0, 2.85), colour="#b35900")
    c.arrow((3.4, 4.75), (x0, 4.7), colour="#b35900")
    c.arrow((3.4, 5.85), (x0, 5.85), colour="#b35900")
    right = [(8.7, 5.45, "AdaptFormer: s · up(ReLU(down))\nin parallel to the MLP"),
             (8.7, 4.35, "DVPT: gated bottleneck + prompts\nas queries, parallel to the MLP;\none module per group of blocks")]
    for x, y, text in right:
        c.box(x, y, 3.6, 0.9 if "DVPT" not in text else 1.0, text, TRAINED, size=7.8)
    c.arrow((8.7, 5.9), (x0 + w, 5.85), colour="#b35900")
    c.arrow((8.7, 4.85), (x0 + w, 5.6), colour="#b35900")
    c.box(8.7, 2.4, 3.6, 1.3, "Linear probe: only the head\n(on the last block's class token)\nFull fine-tuning: everything",
          TRAINED, size=7.8)
    c.legend(8.7, 0.4, [(DATA, "data"), (FROZEN, "frozen"), (TRAINED, "trained")])
    return c.done()


def sd_pipeline() -> Any:
    """Stable Diffusion's training step (top) and sampling loop (bottom), with the parts each
    fine-tuning method trains."""
    c = _Canvas(13.2, 6.6, title="Latent diffusion: one training step (top) and sampling (bottom)")
    img = c.box(0.2, 4.6, 1.6, 0.9, "image\n[B, 3, S, S]", DATA)
    enc = c.box(2.15, 4.6, 2.0, 0.9, "VAE encoder\n÷8 (pocket: ÷4)", FROZEN)
    z0 = c.box(4.45, 4.6, 1.75, 0.9, "z₀ · scale\n[B, 4, S/8, S/8]", DATA)
    noisy = c.box(6.45, 4.5, 2.35, 1.1, "z_t = √ᾱ_t z₀\n+ √(1-ᾱ_t) ε\nε ~ N(0, I), t ~ U", DATA, size=7.5)
    unet = c.box(9.05, 4.1, 2.1, 1.9, "UNet\nResNet blocks +\ncross-attention\n(LoRA, DoRA,\nBitFit, DiffFit,\nfull)",
                 TRAINED, size=7.8)
    loss = c.box(11.55, 4.6, 1.5, 0.9, "loss\n‖ε̂ − ε‖²\n(pocket: v)", OUTPUT)
    cap = c.box(4.1, 3.0, 2.3, 0.9, "caption → tokenizer\n→ ids [B, 77]", DATA, size=8)
    text = c.box(6.7, 3.0, 2.1, 0.9, "CLIP text encoder\n→ [B, 77, 768]", FROZEN, size=8)
    for a, b in ((img, enc), (enc, z0), (z0, noisy), (noisy, unet), (unet, loss)):
        c.arrow(c.right(a), c.left(b))
    c.arrow(c.right(cap), c.left(text))
    c.arrow(c.right(text), (unet[0], unet[1] + 0.3), "keys, values", offset=(-0.75, 0.05))
    c.note(9.1, 3.65, "ε̂ = UNet(z_t, t, text)", size=8)
    zt = c.box(0.2, 0.7, 1.6, 0.9, "z_T ~ N(0, I)", DATA)
    loop = c.box(2.3, 0.4, 3.6, 1.5, "for t = T … 1 (DDIM, 25-50 steps):\nUNet: ε̂ = ε̂(∅) + w (ε̂(text) − ε̂(∅))\n"
                 "(classifier-free guidance, w = 7.5)\nz_t → z_{t−1}", FROZEN, size=7.8)
    zz = c.box(6.4, 0.7, 1.4, 0.9, "z₀", DATA)
    dec = c.box(8.2, 0.7, 2.0, 0.9, "VAE decoder\n×8 (pocket: ×4)", FROZEN)
    out = c.box(10.6, 0.7, 2.0, 0.9, "generated image\n[B, 3, S, S]", OUTPUT)
    for a, b in ((zt, loop), (loop, zz), (zz, dec), (dec, out)):
        c.arrow(c.right(a), c.left(b))
    c.note(0.2, 2.35, "Full fine-tuning may also train the text encoder and the VAE (chapter 06 tries each).", size=8)
    c.legend(0.2, 6.0, [(DATA, "data"), (FROZEN, "frozen"), (TRAINED, "trained by a method"), (OUTPUT, "output")])
    return c.done()


def evaluation_protocol() -> Any:
    """Which real images each evaluation uses, and which model judges what (chapters 07 and 08)."""
    c = _Canvas(13.2, 7.4, title="Evaluating a fine-tuned generator: disjoint real splits, independent judges")
    held = c.box(0.2, 5.6, 2.4, 0.9, "real: held out\n(the judge's training)", DATA)
    judge = c.box(3.3, 5.6, 2.2, 0.9, "alignment classifier\n(fully fine-tuned)", TRAINED)
    align = c.box(9.3, 5.6, 3.6, 0.9, "alignment: does the image\nshow the prompted grade?", OUTPUT, size=8)
    gen_train = c.box(0.2, 4.2, 2.4, 0.9, "real: the generator's\ntraining images", DATA)
    gen = c.box(3.3, 4.2, 2.2, 0.9, "fine-tuned\ngenerator", TRAINED)
    fake = c.box(6.2, 4.2, 2.3, 0.9, "generated images\n(prompts × seeds)", OUTPUT)
    feat = c.box(6.0, 2.3, 2.7, 1.1, "feature extractor\n(pocket ViT / Inception)\none preprocessing path", FROZEN,
                 size=7.8)
    fid = c.box(9.3, 2.8, 3.7, 1.1, "FID, KID vs real test\n(+ real-vs-real noise floor)\nVendi: diversity", OUTPUT, size=8)
    test = c.box(0.2, 1.4, 2.4, 0.9, "real: test images", DATA)
    use = c.box(9.3, 0.6, 3.7, 1.7, "usefulness (chapter 8):\na classifier trained on scarce real,\nreal + synthetic, synthetic only\n"
                "→ scored on real test", OUTPUT, size=7.8)
    c.arrow(c.right(held), c.left(judge), "train")
    c.arrow(c.right(judge), c.left(align), "judges")
    c.arrow(c.right(gen_train), c.left(gen))              # the box says "fine-tuned"; a label would not fit
    c.arrow(c.right(gen), c.left(fake), "sample")
    c.arrow((fake[0] + fake[2], fake[1] + 0.7), (align[0], align[1] + 0.2), rad=0.15)
    c.arrow(c.bottom(fake), c.top(feat))
    c.arrow(c.right(test), (feat[0], feat[1] + 0.3), rad=0.1)
    c.arrow(c.right(feat), c.left(fid))
    c.arrow((fake[0] + fake[2], fake[1] + 0.1), (use[0], use[1] + use[3] - 0.2), rad=-0.15)
    c.arrow((test[0] + test[2], test[1] + 0.15), (use[0], use[1] + 0.4), rad=0.05)
    c.note(0.2, 0.1, "No real image is in two of the three splits; the judge of alignment starts from the\n"
           "extractor's weights but is fully fine-tuned (every weight moves), and never saw the generator's training images.", size=8)
    c.legend(3.3, 6.85, [(DATA, "real data"), (FROZEN, "frozen"), (TRAINED, "trained"), (OUTPUT, "result")])
    return c.done()
