"""Thumbnail atlases: every key at its cell, grey for a missing or unreadable image, each atlas written as soon as
its images are decoded."""
import numpy as np
from PIL import Image

from omniart.extract import decoder
from omniart.extract.reader import list_images
from omniart.pipeline.thumbnails import write_atlases

COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220), (220, 30, 220),
           (10, 10, 10), (250, 250, 250), (120, 60, 0)]


def test_atlases_place_every_key_and_are_written_as_they_fill(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for index, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 30), colour).save(images / f"k{index}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    listed = list_images(images)  # keys without the extension, as a table of paths would give them
    items = {item.key.split(".")[0]: item._replace(key=item.key.split(".")[0]) for item in listed}
    # 11 rows, 4 cells an atlas (cell 1024 of 2048): atlas 0 k0-k3, atlas 1 k4, broken, k5, k6, atlas 2 k7, gone, k8
    keys = ["k0", "k1", "k2", "k3", "k4", "broken", "k5", "k6", "k7", "gone", "k8"]
    real_loader, seen = decoder.make_loader, []

    def one_at_a_time(*args, **kwargs):  # single-image batches; note which atlases exist before the last one
        batches = [decoder.Batch(keys=[key], images=batch.images[i:i + 1], failures=[])
                   for batch in real_loader(*args, **kwargs) for i, key in enumerate(batch.keys)]
        failures = [decoder.Batch(keys=[], images=batch.images[:0], failures=[failure])
                    for batch in real_loader(*args, **kwargs) for failure in batch.failures]
        ordered = sorted(batches + failures, key=lambda b: keys.index((b.keys or [b.failures[0][0]])[0]))
        for index, batch in enumerate(ordered):
            if index == len(ordered) - 1:
                seen.extend(sorted(path.name for path in out.glob("atlas-*.jpg")))
            yield batch

    monkeypatch.setattr(decoder, "make_loader", one_at_a_time)
    out = tmp_path / "site"
    out.mkdir()
    atlas = write_atlases(keys, items, out, cell=1024, workers=0, progress=False)
    assert atlas == {"cell": 1024, "per_side": 2, "files": ["atlas-000.jpg", "atlas-001.jpg", "atlas-002.jpg"],
                     "missing": 2}
    assert seen == ["atlas-000.jpg", "atlas-001.jpg"], "the first two atlases were written before the last image"
    expected = {"k0": COLOURS[0], "k1": COLOURS[1], "k2": COLOURS[2], "k3": COLOURS[3], "k4": COLOURS[4],
                "broken": (200, 200, 200), "k5": COLOURS[5], "k6": COLOURS[6], "k7": COLOURS[7],
                "gone": (200, 200, 200), "k8": COLOURS[8]}
    pixels = [np.asarray(Image.open(out / name).convert("RGB")).astype(int) for name in atlas["files"]]
    assert pixels[2].shape == (2048, 2048, 3)  # 3 cells: two rows of cells
    for row, key in enumerate(keys):
        index, at = divmod(row, 4)
        top, left = (at // 2) * 1024, (at % 2) * 1024
        centre = pixels[index][top + 512, left + 512]
        assert np.abs(centre - np.array(expected[key])).max() <= 12, (key, centre)
