"""The course ships its T5 prompt embeddings as a `torch.save`d dict {prompt: tensor}. This writes
a small file of that form, and the same values as safetensors, so the Rust test can check that
`dp if --embeddings x.pth` reads exactly what torch saved (tests need no Python, only these files).

    pip install torch safetensors
    python3 tests/reference/embeddings_pth.py     # writes tests/fixtures/deepfloyd/embeddings/

Width 8 instead of T5-XXL's 4096 keeps the files small; the reader does not depend on the width.
The cases a real file has: f16 [1, 77, W] (the course's), the null prompt "", an f32 [77, W]
entry, and a tensor that is a view into a larger storage at an offset (torch.save keeps views).
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "deepfloyd", "embeddings")
W = 8


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(3, 77, W, generator=g).half()
    d = {
        "an oil painting of a snowy mountain village": torch.randn(1, 77, W, generator=g).half(),
        "": torch.randn(1, 77, W, generator=g).half() * 0.1,
        "a photo of a dog. with a full stop": torch.randn(77, W, generator=g).float(),
        "a view into a shared storage": shared[1:2],  # storage offset 77 * W, shared with the next
        "its neighbour": shared[2],
    }
    torch.save(d, os.path.join(OUT, "prompts.pth"))
    save_file({k: v.clone() for k, v in d.items()}, os.path.join(OUT, "prompts.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
