"""Build the CLIP BPE tokenizer files (vocab.json, merges.txt) offline.

SD1.x and SDXL use OpenAI's CLIP tokenizer. Its BPE table ships inside the MIT-licensed
`open_clip_torch` wheel, so we rebuild the Hugging Face files from it instead of downloading them:

    pip download --no-deps -d /tmp/oc open_clip_torch
    python models/build_tokenizer.py /tmp/oc/open_clip_torch-*.whl

The vocabulary order is CLIP's own (open_clip/tokenizer.py): 256 byte-unicode characters, the same
with ``</w>``, the 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).parent / "tokenizers" / "clip"
N_MERGES = 49152 - 256 - 2  # CLIP's merge count, as in open_clip's SimpleTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (open_clip/tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build(wheel: Path, out: Path = OUT) -> None:
    with zipfile.ZipFile(wheel) as zf:
        bpe = gzip.decompress(zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    merges = [tuple(line.split()) for line in bpe.split("\n")[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
