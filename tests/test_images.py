"""Image data: an image folder or a manifest, decoded, resized, centre-cropped and laid out by the
`image` step the way torchvision's PIL transforms do it; a changed image changes the cache key."""

from __future__ import annotations

import types

import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image", reason="the image step needs Pillow")

from deploycheck.data.ops import Image, _image  # noqa: E402
from deploycheck.data.sources import _images, _manifest  # noqa: E402


def photo(path, size, color):
    """A solid image of ``size`` (width, height) with a 2-pixel white square at its centre."""
    im = PIL.new("RGB", size, color)
    w, h = size
    for dx in range(2):
        for dy in range(2):
            im.putpixel((w // 2 - 1 + dx, h // 2 - 1 + dy), (255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture
def folder(tmp_path):
    photo(tmp_path / "imgs" / "cat" / "b.png", (30, 20), (200, 10, 10))
    photo(tmp_path / "imgs" / "cat" / "a.png", (20, 30), (190, 20, 10))
    photo(tmp_path / "imgs" / "dog" / "c.png", (25, 25), (10, 10, 220))
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


SPEC = types.SimpleNamespace(path="")


def spec_in(d):
    return types.SimpleNamespace(path=str(d / "spec.yaml"))


def test_an_image_folder_gives_paths_and_sorted_class_labels(folder):
    x, y = _images("imgs", spec_in(folder))
    assert [p.split("imgs/")[1] for p in x] == ["cat/a.png", "cat/b.png", "dog/c.png"]
    assert y.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"images:imgs/cat: no images in class subfolders \(expected"):
        _images("imgs/cat", spec_in(folder))


def test_the_image_step_resizes_the_shorter_side_crops_the_centre_and_lays_out_channels(folder):
    x, _ = _images("imgs", spec_in(folder))
    out = _image(x, Image(resize=10, crop=8), SPEC)
    assert out.shape == (3, 3, 8, 8) and out.dtype == np.float32
    # the same transform by hand with Pillow: resize so the shorter side is 10, crop 8 at the centre
    with PIL.open(x[1]) as im:  # 30x20 -> 15x10
        ref = im.convert("RGB").resize((15, 10), PIL.Resampling.BILINEAR).crop((4, 1, 12, 9))
    assert np.array_equal(out[1], np.asarray(ref, dtype=np.float32).transpose(2, 0, 1) / np.float32(255))
    assert out[2, 2, 0, 0] == pytest.approx(220 / 255)  # a blue corner, channel 2 in RGB
    bgr = _image(x, Image(resize=10, crop=8, channels="bgr", layout="hwc"), SPEC)
    assert bgr.shape == (3, 8, 8, 3) and bgr[2, 0, 0, 0] == pytest.approx(220 / 255)
    assert _image(x, Image(resize=10, crop=(6, 8), channels="gray"), SPEC).shape == (3, 1, 6, 8)


def test_unreadable_or_unstackable_images_fail_naming_the_file_or_the_sizes(folder):
    x, _ = _images("imgs", spec_in(folder))
    with pytest.raises(ValueError, match=r"different sizes after the image step .*give `crop`"):
        _image(x, Image(resize=10), SPEC)
    bad = folder / "imgs" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    x, _ = _images("imgs", spec_in(folder))
    with pytest.raises(ValueError, match=r"cannot read image .*broken.png: UnidentifiedImageError"):
        _image(x, Image(resize=10, crop=8), SPEC)
    with pytest.raises(ValueError, match=r"crop 40x40 is larger than the image"):
        _image(x[:1], Image(crop=40), SPEC)


def test_a_manifest_lists_images_with_labels_and_names_a_bad_row(folder):
    (folder / "m.csv").write_text("path,label\nimgs/cat/a.png,3\nimgs/dog/c.png,1\n")
    x, y = _manifest("m.csv", spec_in(folder))
    assert [p.split("imgs/")[1] for p in x] == ["cat/a.png", "dog/c.png"] and y.tolist() == [3, 1]
    (folder / "m.jsonl").write_text('{"path": "imgs/cat/b.png", "label": 0}\n')
    assert _manifest("m.jsonl", spec_in(folder))[1].tolist() == [0]
    for text, why in [
        ("file,label\na.png,1\n", "manifest:m.csv: the CSV header must name `path` and `label`"),
        ("path,label\nimgs/cat/a.png,cat\n", "manifest:m.csv:2: label 'cat' is not an integer"),
        ("path,label\nimgs/cat/zzz.png,1\n", "manifest:m.csv:2: no image "),
    ]:
        (folder / "m.csv").write_text(text)
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            _manifest("m.csv", spec_in(folder))
        assert str(e.value).startswith(why), str(e.value)


CNN = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():  # red images -> class 0, blue -> class 1
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[1, 2, 1, 1] = 1.0
            self.conv.bias.zero_()
            self.fc.bias.zero_()
            self.fc.weight.zero_()
            self.fc.weight[0, 0] = 1.0
            self.fc.weight[1, 1] = 1.0

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
"""

IMAGE_SPEC = """\
deploycheck: 1
name: pics
model:
  factory: vision:Net
  inputs: {shape: [1, 3, 8, 8]}
data:
  source: images:imgs
  split: {test_fraction: 0.5, seed: 0}
  preprocess:
    - image: {resize: 10, crop: 8, interpolation: bilinear}
    - normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
metric: accuracy
formats: [torchscript]
variants:
  baseline: {}
thresholds:
  metric: {min: 1.0}
snapshot: {enabled: false}
"""


def test_a_spec_reads_an_image_folder_and_a_changed_image_is_rebuilt(project):
    for i in range(4):
        photo(project.path / "imgs" / "red" / f"{i}.png", (12 + i, 10), (200 + 10 * i, 0, 0))
        photo(project.path / "imgs" / "tblue" / f"{i}.png", (10, 12 + i), (0, 0, 200 + 10 * i))
    project.tester.makepyfile(vision=CNN)
    project.write(IMAGE_SPEC, name="pics")
    res = project.run("-k", "metric")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*reused 0 built variants*"])
    res = project.run("-k", "metric")
    res.stdout.fnmatch_lines(["*reused 1 built variants*"])
    photo(project.path / "imgs" / "red" / "0.png", (12, 10), (0, 0, 255))  # now a blue image labelled red
    res = project.run("-k", "metric")
    res.stdout.fnmatch_lines(["accuracy 0.75 < min 1", "*reused 0 built variants*"])
