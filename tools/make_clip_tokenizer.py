"""Build the CLIP tokenizer files (vocab.json, merges.txt) that Easel ships.

The source is OpenAI's CLIP BPE vocabulary, ``bpe_simple_vocab_16e6.txt.gz``, which
ships inside the PyPI package ``open-clip-torch``. The token ids follow CLIP's own
construction (byte symbols, then byte symbols + ``</w>``, then merges, then the two
special tokens), so they equal the ids of ``openai/clip-vit-large-patch14``.

Usage: python tools/make_clip_tokenizer.py PATH/TO/bpe_simple_vocab_16e6.txt.gz OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2 style BPE, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build(gz_path: Path, out_dir: Path) -> None:
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
