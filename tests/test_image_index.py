"""Image sources keep their file names: each output folder of theirs has an index.csv that maps the
numbered output files to the source files they came from."""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np
from pipeline_helpers import eager_factory, write_images, write_video

from pipeline import Pipeline
from pipeline.config import FilesSinkConfig
from pipeline.results import DepthResult
from pipeline.sinks import FileSink, depth_to_png16


def read_index(folder) -> list[list[str]]:
    with open(os.path.join(folder, "index.csv"), newline="") as f:
        return list(csv.reader(f))


def run_to_files(source: dict, out, tiny_checkpoint, **files) -> list[DepthResult]:
    config = {
        "sources": [{"id": "imgs", **source}],
        "model": {"checkpoint": tiny_checkpoint},
        "outputs": {"files": {"directory": str(out), **files}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    results = list(pipe)
    assert pipe.summary().outcome == "finished"
    return results


def test_a_glob_over_two_folders_is_indexed_by_relative_path(tiny_checkpoint, tmp_path):
    """The same file name in two folders: the index tells them apart, and each row names the
    image whose depth is in that output file (max_frames: only the frames written are listed)."""
    write_images(str(tmp_path / "in" / "a"), 2, 96, 64)
    write_images(str(tmp_path / "in" / "b"), 2, 96, 64)
    out = tmp_path / "depth"
    source = {"uri": str(tmp_path / "in" / "*" / "*.png"), "max_frames": 3}
    got = run_to_files(source, out, tiny_checkpoint, layout="flat", npy=False)

    expected = [os.path.join(d, f"img_{i:03d}.png") for d in ("a", "b") for i in range(2)][:3]
    assert [r.header["position"]["file"] for r in got] == expected
    assert read_index(out) == [["png", "source"]] + [
        [f"{i:06d}.png", name] for i, name in enumerate(expected)
    ]
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png", "index.csv"]
    for r in got:  # the row's output file holds the depth of the row's image
        png = cv2.imread(str(out / f"{r.index:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, depth_to_png16(r.depth))


def test_an_earlier_runs_index_is_removed_with_its_files_replaced(tiny_checkpoint, tmp_path):
    """A video written into a folder that held an image run: the old index would name the
    sources of files this run replaced, so it goes; a video's frame numbers need none."""
    write_images(str(tmp_path / "in"), 2, 96, 64)
    out = tmp_path / "depth"
    run_to_files({"uri": str(tmp_path / "in")}, out, tiny_checkpoint, layout="flat")
    assert len(read_index(out)) == 3
    clip = write_video(str(tmp_path / "clip.avi"), 2, 96, 64, "MJPG")
    run_to_files({"uri": clip}, out, tiny_checkpoint, layout="flat")
    assert sorted(os.listdir(out)) == ["000000.npy", "000000.png", "000001.npy", "000001.png"]


def result(index: int, position) -> DepthResult:
    header = {"stream": "s", "index": index, "position": position}
    return DepthResult(header, np.full((4, 6), 1.5, np.float32))


def test_index_is_rewritten_whole_while_frames_come(tmp_path):
    """Every INDEX_INTERVAL_S (here: every frame) the whole index is written again, atomically:
    a run killed between frames leaves a complete index of what it wrote. Names that need CSV
    quoting survive; a position from a foreign peer that names no file adds no row."""
    sink = FileSink(FilesSinkConfig(str(tmp_path), png=False, layout="flat"))
    sink.INDEX_INTERVAL_S = 0.0
    names = ["a,b.png", 'new\nline "quoted".png', "plain.png"]
    sink.write(result(0, {"file": names[0]}))
    assert read_index(tmp_path) == [["npy", "source"], ["000000.npy", names[0]]]
    for i, position in enumerate([{"file": 7}, ["file"], None, {"frame": 3}], start=1):
        sink.write(result(i, position))
    sink.write(result(5, {"file": names[1]}))
    sink.write(result(6, {"file": names[2]}))
    rows = [["000000.npy", names[0]], ["000005.npy", names[1]], ["000006.npy", names[2]]]
    assert read_index(tmp_path) == [["npy", "source"], *rows]
    sink.close()
    assert read_index(tmp_path) == [["npy", "source"], *rows]
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_index_waits_for_the_end_of_the_stream_between_intervals(tmp_path):
    """Within an interval frames only add a row in memory (cheap); the stream's end writes it."""
    sink = FileSink(FilesSinkConfig(str(tmp_path), png=False))
    sink.write(result(0, {"file": "x.png"}))
    sink.write(result(1, {"file": "y.png"}))
    assert not os.path.exists(tmp_path / "s" / "index.csv")
    sink.end_stream("s")
    assert read_index(tmp_path / "s") == [["npy", "source"], ["000000.npy", "x.png"],
                                          ["000001.npy", "y.png"]]  # fmt: skip
