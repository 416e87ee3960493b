"""runtime.video.load_video on small videos made here with PyAV: which frames it samples (frame i is
a solid color of its own), their conversion to RGB, and its errors."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from runtime.video import load_video

WIDTH, HEIGHT = 32, 24


def color(index: int) -> tuple[int, int, int]:
    """The color of frame `index` (< 42), apart from every other's by 6 or more in each channel."""
    return 6 * index, 250 - 6 * index, 60 + 4 * index


def solid(index: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> np.ndarray:
    """uint8 [height, width, 3]: frame `index`."""
    return np.broadcast_to(np.array(color(index), np.uint8), (size[1], size[0], 3)).copy()


def write_video(
    path: Path,
    frames: list[np.ndarray],
    codec: str,
    pix_fmt: str,
    source_format: str = "rgb24",
    bit_rate: int = 2_000_000,
    **options: str,
) -> Path:
    """`frames` (uint8 [height, width, channels] in `source_format`) encoded with `codec` as `pix_fmt`;
    `options` are the container's (muxer's), `bit_rate` matters to lossy codecs only."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, pix_fmt, bit_rate
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format=source_format)))
        container.mux(stream.encode())
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    """uint8 [height, width, 3] of every frame PyAV decodes from `path`."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def expected(total: int, frames: int) -> list[int]:
    return np.linspace(0, total - 1, frames, dtype=int).tolist()


def nearest(image: Image.Image) -> int:
    """The index of the frame whose color is closest to the image's mean."""
    mean = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    return int(np.argmin([np.abs(mean - color(index)).sum() for index in range(42)]))


def assert_frames(images: list[Image.Image], indices: list[int]) -> None:
    assert [image.mode for image in images] == ["RGB"] * len(indices)
    for image, index in zip(images, indices):
        assert np.array_equal(np.asarray(image), solid(index, image.size)), f"not frame {index}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


# Lossless codecs in RGB: the pixels come back exactly.
LOSSLESS = {"mkv-ffv1": ("mkv", "ffv1", "bgr0"), "mov-png": ("mov", "png", "rgb24"), "avi-png": ("avi", "png", "rgb24")}


@pytest.mark.parametrize("name", LOSSLESS)
def test_video_file_frames_are_linspace_indices(name, videos):
    extension, codec, pix_fmt = LOSSLESS[name]
    path = write_video(videos / f"forty.{extension}", [solid(index) for index in range(40)], codec, pix_fmt)
    notes: list[str] = []
    images = load_video(path, 16, on_note=notes.append)
    assert_frames(images, expected(40, 16))
    assert expected(40, 16) == [0, 2, 5, 7, 10, 13, 15, 18, 20, 23, 26, 28, 31, 33, 36, 39]
    assert notes == [f"sampled 16 of 40 frames of video {path} (uniformly)"]


def test_lossy_mp4_decodes_the_sampled_frames(videos):
    path = write_video(videos / "lossy.mp4", [solid(index) for index in range(40)], "mpeg4", "yuv420p")
    images = load_video(str(path), 16)
    assert [nearest(image) for image in images] == expected(40, 16)
    decoded = decode_all(path)
    for image, index in zip(images, expected(40, 16)):
        assert np.array_equal(np.asarray(image), decoded[index])


def test_exactly_as_many_frames_as_sampled(videos):
    path = write_video(videos / "sixteen.mkv", [solid(index) for index in range(16)], "ffv1", "bgr0")
    notes: list[str] = []
    assert_frames(load_video(path, 16, on_note=notes.append), list(range(16)))
    assert notes == []


def test_animated_gif_is_a_video(videos):
    images = [Image.fromarray(solid(index)) for index in range(20)]
    images[0].save(videos / "twenty.gif", save_all=True, append_images=images[1:], duration=40)
    assert_frames(load_video(videos / "twenty.gif", 8), expected(20, 8))


def test_truncated_video_samples_the_frames_that_decode(videos):
    # mp4 with its index first: the header counts 40 frames, the cut file decodes fewer.
    noise = [np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8) for index in range(40)]
    whole = write_video(videos / "whole.mp4", noise, "mpeg4", "yuv420p", movflags="faststart").read_bytes()
    cut = videos / "cut.mp4"
    cut.write_bytes(whole[: len(whole) * 4 // 5])
    decoded = decode_all(cut)
    assert 16 <= len(decoded) < 40
    notes: list[str] = []
    images = load_video(cut, 16, on_note=notes.append)
    for image, index in zip(images, expected(len(decoded), 16), strict=True):
        assert np.array_equal(np.asarray(image), decoded[index])
    assert notes[0] == f"only {len(decoded)} of the 40 frames of video {cut} decode: it may be damaged or truncated"

    cut.write_bytes(whole[: len(whole) * 3 // 10])
    with pytest.raises(ValueError, match=r"only \d+ of the 40 frames .* decode: .* truncated; this export samples 16"):
        load_video(cut, 16)


def test_folder_frames_in_natural_order(tmp_path):
    names = [f"frame_{number}.png" for number in range(1, 21)]  # frame_2 before frame_10
    for index, name in random.Random(0).sample(list(enumerate(names)), len(names)):
        Image.fromarray(solid(index)).save(tmp_path / name)
    Image.fromarray(solid(41)).save(tmp_path / ".frame_0.png")  # hidden: skipped
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub").mkdir()
    notes: list[str] = []
    assert_frames(load_video(tmp_path, 8, on_note=notes.append), expected(20, 8))
    assert notes == [
        f"skipped 1 non-image file of folder {tmp_path}: notes.txt",
        f"sampled 8 of 20 frames of folder {tmp_path} (uniformly)",
    ]


def test_sequence_of_images():
    images = [Image.fromarray(solid(index)) for index in range(40)]
    notes: list[str] = []
    assert_frames(load_video(images, 16, on_note=notes.append), expected(40, 16))
    assert notes == ["sampled 16 of 40 frames of the video (uniformly)"]
    assert_frames(load_video(tuple(images[:4]), 4), [0, 1, 2, 3])


def test_rgba_and_gray_frames_become_rgb(tmp_path):
    """Alpha over white, as runtime.preprocess.to_rgb does for images; gray to equal channels."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., :3] = (0, 100, 200)
    rgba[:, : WIDTH // 2, 3] = 255  # left half opaque, right half transparent
    over_white = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    over_white[:, : WIDTH // 2] = (0, 100, 200)
    gray = np.full((HEIGHT, WIDTH), 77, np.uint8)

    sequence = [Image.fromarray(rgba), Image.fromarray(gray), Image.fromarray(rgba).convert("LA")]
    converted = load_video(sequence, 3)
    assert [image.mode for image in converted] == ["RGB"] * 3
    assert np.array_equal(np.asarray(converted[0]), over_white)
    assert np.array_equal(np.asarray(converted[1]), np.full((HEIGHT, WIDTH, 3), 77, np.uint8))
    assert (np.asarray(converted[2])[:, WIDTH // 2 :] == 255).all()  # LA: its transparent half white

    video = write_video(tmp_path / "alpha.mov", [rgba] * 3, "png", "rgba", source_format="rgba")
    assert all(np.array_equal(np.asarray(image), over_white) for image in load_video(video, 3))
    video = write_video(tmp_path / "gray.mkv", [gray] * 3, "ffv1", "gray", source_format="gray")
    assert all(np.array_equal(np.asarray(image), np.asarray(converted[1])) for image in load_video(video, 3))

    Image.fromarray(rgba).save(tmp_path / "0.png")
    Image.fromarray(gray).save(tmp_path / "1.png")
    from_folder = load_video(tmp_path, 2)
    assert all(np.array_equal(np.asarray(image), np.asarray(ours)) for image, ours in zip(from_folder, converted))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="video .*clip.mp4 does not exist"):
        load_video(tmp_path / "clip.mp4", 16)


@pytest.mark.parametrize(
    "content", [b"", b"hello\n" * 100, bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))]
)
def test_files_that_are_not_videos(tmp_path, content):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    message = "is empty" if not content else r"cannot read .*clip.mp4 as a video: Invalid data found"
    with pytest.raises(ValueError, match=message):
        load_video(path, 16)


def test_damaged_lossless_video(videos):
    whole = write_video(videos / "damaged.mov", [solid(index) for index in range(20)], "png", "rgb24").read_bytes()
    cut = videos / "damaged-cut.mov"
    cut.write_bytes(whole[: len(whole) // 2])  # a png frame cut in the middle
    with pytest.raises(ValueError, match="cannot read .*damaged-cut.mov as a video: "):
        load_video(cut, 16)


def test_audio_only_file(tmp_path):
    path = tmp_path / "speech.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match=r"speech.wav has no video stream \(audio\); `--video` takes a video file"):
        load_video(path, 16)


@pytest.mark.parametrize("extension", ["png", "jpg", "webp"])
def test_still_image_is_not_a_video(tmp_path, extension):
    path = tmp_path / f"photo.{extension}"
    Image.fromarray(solid(0)).save(path)
    message = r"photo\.\w+ is an image, not a video: this artifact answers about videos; `--video` takes a video"
    with pytest.raises(ValueError, match=message):
        load_video(path, 16)


def test_fewer_frames_than_sampled(tmp_path):
    path = write_video(tmp_path / "short.mkv", [solid(index) for index in range(5)], "ffv1", "bgr0")
    with pytest.raises(ValueError, match="video .*short.mkv has 5 frames, this export samples 16"):
        load_video(path, 16)
    with pytest.raises(ValueError, match="the video has 5 frames, this export samples 16"):
        load_video([Image.fromarray(solid(index)) for index in range(5)], 16)
    with pytest.raises(ValueError, match="the video has 0 frames, this export samples 16"):
        load_video([], 16)
    for index in range(5):
        Image.fromarray(solid(index)).save(tmp_path / f"{index}.png")
    with pytest.raises(ValueError, match="folder .* has 5 frames, this export samples 16"):
        load_video(tmp_path, 16)


def test_folder_without_images(tmp_path):
    with pytest.raises(ValueError, match="folder .* has no image files to read as frames; `--video`"):
        load_video(tmp_path, 16)
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match="has no image files"):
        load_video(tmp_path, 16)


def test_folder_with_a_damaged_image(tmp_path):
    for index in range(4):
        Image.fromarray(solid(index)).save(tmp_path / f"{index}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*3\.png"):
        load_video(tmp_path, 4)


@pytest.mark.parametrize("frames", [0, -1, 2.0, True, "16"])
def test_frames_must_be_a_positive_integer(frames):
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        load_video([Image.fromarray(solid(0))], frames)


def test_wrong_source_types():
    with pytest.raises(ValueError, match="the video must be a path .* or a sequence of PIL images, got bytes"):
        load_video(b"clip.mp4", 1)
    with pytest.raises(ValueError, match="frame 1 of the video is a ndarray, not a PIL image"):
        load_video([Image.fromarray(solid(0)), solid(1)], 1)


def test_not_a_regular_file():
    with pytest.raises(ValueError, match="video /dev/null is not a regular file or a folder"):
        load_video("/dev/null", 16)


def test_frames_too_elongated(tmp_path):
    """21:1 frames, above runtime.preprocess.MAX_ASPECT_RATIO, from each kind of source."""
    thin = [solid(index, (84, 4)) for index in range(4)]
    with pytest.raises(ValueError, match="each frame of video .*thin.mov is too elongated: 84 x 4 pixels"):
        load_video(write_video(tmp_path / "thin.mov", thin, "png", "rgb24"), 4)
    with pytest.raises(ValueError, match="frame 0 of the video is too elongated"):
        load_video([Image.fromarray(pixels) for pixels in thin], 4)
    for index, pixels in enumerate(thin):
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
    with pytest.raises(ValueError, match=r"image .*0\.png is too elongated"):
        load_video(tmp_path, 4)
