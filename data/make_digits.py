#!/usr/bin/env python3
"""Writes data/digits.csv: the 1,797 8×8 images of scikit-learn's "digits" set (the UCI
optical-recognition-of-handwritten-digits test set), one image per line as 64 integers 0–16
in row-major order, no header. Run once; the product reads the committed file and never
downloads anything. Needs scikit-learn (`pip install scikit-learn`)."""

from pathlib import Path

from sklearn.datasets import load_digits

images = load_digits().data.astype(int)
out = Path(__file__).with_name("digits.csv")
out.write_text("".join(",".join(str(v) for v in row) + "\n" for row in images))
print(f"{out}: {images.shape[0]} images of {images.shape[1]} pixels")
