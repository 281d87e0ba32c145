"""Generate the tiny multimodal CPT corpus: images of varied aspect ratios, multichannel signals (.npy and
.csv) and interleaved jsonl samples.  Usage: python examples/mm_cpt/make_data.py OUT_DIR [NUM_SAMPLES]"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}


def make_image(path: str, rng: np.random.Generator) -> str:
    w, h = [(56, 56), (112, 56), (56, 112), (168, 56), (90, 70)][int(rng.integers(5))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img = Image.new("RGB", (w, h), (245, 245, 245))
    d = ImageDraw.Draw(img)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(w // 2, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4)], fill=COLOURS[colour])
    img.save(path)
    return f"a {colour} {shape} on a {w}x{h} canvas"


def make_series(path: str, rng: np.random.Generator) -> tuple[str, float]:
    sr = float([10, 50, 100, 250][int(rng.integers(4))])
    length = int(rng.integers(20, 400))
    channels = int(rng.integers(1, 4))
    freq = float(rng.uniform(0.5, 5.0))
    t = np.arange(length) / sr
    x = np.stack([np.sin(2 * np.pi * freq * t + c) + 0.1 * rng.standard_normal(length) for c in range(channels)], 1)
    if path.endswith(".csv"):
        header = ",".join(f"ch{c}" for c in range(channels))
        np.savetxt(path, x, delimiter=",", header=header, comments="")
    else:
        np.save(path, x.astype(np.float32))
    return f"a {channels}-channel oscillation at {freq:.1f} Hz sampled at {sr:g} Hz", sr


def main(out: str, n: int = 48, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "series"), exist_ok=True)
    path = os.path.join(out, "samples.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            content = [{"text": "Observation %d." % i}]
            kind = i % 3
            if kind in (0, 2):
                img = f"images/{i}.png"
                desc = make_image(os.path.join(out, img), rng)
                content += [{"image": img}, {"text": f" The picture shows {desc}."}]
            if kind in (1, 2):
                ts = f"series/{i}.{'csv' if i % 2 else 'npy'}"
                desc, sr = make_series(os.path.join(out, ts), rng)
                content += [{"timeseries": ts, "sampling_rate": sr}, {"text": f" The signal is {desc}."}]
            f.write(json.dumps({"content": content}) + "\n")
    return path


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 48))
