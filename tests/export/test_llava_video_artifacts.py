"""tiny-llava-video exported end to end on both backends: one view of image tokens per frame (8 frames
of 4 x 4 pooled tokens) and the newline token, N = 129, through the family seam; parity against
eager (which equals transformers, tests/models/test_llava_video.py), the manifest, the runtime CLI
with a video file and a folder of frames, and the refusals of an image for a video artifact and the
reverse.

Here keep 14 (88.9 % pruning) on both backends; keeps 64 and 129, int4 and `--frames` in
test_llava_video_keeps.py (two modules, so that `make test`'s two workers share the exports).
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from export.manifest import read_manifest, verify_files
from models.tiny_llava import VIDEO_RECIPE
from runtime.__main__ import main as runtime_main
from runtime.show import main as show_main
from runtime.samples import sample_frames, sample_image
from tests.export.fixtures import exporter
from tests.export.parity_checks import assert_exact_parity

N = 129
FRAMES = 8
STEPS = 16


@pytest.fixture(scope="module")
def exported(tiny_video_dir, tmp_path_factory):
    """(keep, quantization) -> (artifact folder, parity report), exported on first use."""
    return exporter(VIDEO_RECIPE.name, tiny_video_dir, tmp_path_factory.mktemp("llava-video-artifacts"), STEPS)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 40-frame lossless video file of 160 x 120 random frames."""
    path = tmp_path_factory.mktemp("video") / "clip.mkv"
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "bgr0"
        for _ in range(40):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_float32_parity_at_88_9_percent_on_both_backends(exported):
    assert_exact_parity(exported(14)[1], ("onnx", "executorch"), STEPS)


def test_manifest_records_the_frames(exported):
    folder, _ = exported(14)
    manifest = read_manifest(folder)
    assert verify_files(folder) == []
    assert manifest["model"]["family"] == "llava_video"
    assert manifest["geometry"] == {
        "num_image_tokens": N,
        "grid": [[4, 4]] * FRAMES + [[1, 1]],
        "image_size": 112,
        "pixel_values_shape": [1, FRAMES, 3, 112, 112],
        "position_rows": 1,
        "frames": FRAMES,
    }
    preprocess = manifest["preprocess"]
    assert preprocess["frames"] == FRAMES and preprocess["resize"] == "stretch" and preprocess["sampling"] == "uniform"
    assert manifest["vision"]["flops"] > 0


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_runtime_cli_answers_about_a_video(exported, clip, backend, capfd):
    folder, _ = exported(14)
    code = runtime_main([str(folder), "--video", str(clip), "--prompt", "What happens?", "--backend", backend])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert out.strip() and f"[{backend}, keep 14, vlm-pruner, parity skipped" in err
    assert "sampled 8 of 40 frames" in err and "is stretched to 112 x 112" in err


def test_runtime_cli_takes_a_folder_of_frames(exported, tmp_path, capfd):
    folder, _ = exported(14)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(sample_frames(FRAMES)):
        frame.save(frames / f"frame_{i}.png")
    code = runtime_main([str(folder), "--video", str(frames), "--prompt", "What happens?"])
    assert code == 0, capfd.readouterr().err


def test_bad_inputs_are_refused_clearly(exported, clip, tmp_path, capfd):
    """An image for a video artifact, a video for an image artifact (by flag and by file), a video
    with too few frames, an unreadable video: exit status 2 and a message that says what is wrong."""
    folder, _ = exported(14)
    photo = tmp_path / "photo.png"
    sample_image().save(photo)
    short = tmp_path / "short"
    short.mkdir()
    for i, frame in enumerate(sample_frames(3)):
        frame.save(short / f"frame_{i}.png")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    cases = [
        ([str(folder), "--image", str(photo)], "answers about videos, not images: give --video"),
        ([str(folder), "--video", str(photo)], "is an image, not a video"),
        ([str(folder), "--video", str(short)], "has 3 frames, this export samples 8"),
        ([str(folder), "--video", str(broken)], "as a video"),
    ]
    for argv, message in cases:
        assert runtime_main([*argv, "--prompt", "What happens?"]) == 2
        assert message in capfd.readouterr().err


def test_show_refuses_a_video_artifact(exported, tmp_path, capfd):
    folder, _ = exported(14)
    photo = tmp_path / "photo.png"
    sample_image().save(photo)
    assert show_main([str(folder), "--image", str(photo), "-o", str(tmp_path / "kept.png")]) == 2
    assert "tiny-llava-video answers about videos" in capfd.readouterr().err


def test_a_video_is_refused_by_an_image_artifact(artifact_dirs, clip, capfd):
    folder = artifact_dirs[64]  # tiny-llava
    assert runtime_main([str(folder), "--video", str(clip), "--prompt", "What happens?"]) == 2
    assert "answers about images, not videos: give --image" in capfd.readouterr().err
    assert runtime_main([str(folder), "--image", str(clip), "--prompt", "What happens?"]) == 2
    assert "is a video; this artifact answers about images" in capfd.readouterr().err
