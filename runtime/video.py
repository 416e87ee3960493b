"""The video input of LLaVA-Video artifacts: `frames` frames sampled uniformly, as 8-bit RGB PIL images.

    video file ──count──> N ──decode all, keep those at linspace(0, N - 1, F)──> F x PIL RGB
    folder ──natural sort──> N image files ──load_image of the F sampled───────> F x PIL RGB
    sequence of N PIL images ──────────────────────────────pick the F sampled──> F x PIL RGB

The indices are LLaVA-Video's (`np.linspace(0, total - 1, frames, dtype=int)`). A video is read
twice: once to count its frames (the container's count, else its packets, demuxed without
decoding), once to decode them all and keep the sampled ones (once more, sampling over the frames
that decoded, where the count was off); at most `frames` decoded frames are held at a time. Each
frame passes `runtime.preprocess.check_size` and `to_rgb`.

No torch: PyAV (FFmpeg) and PIL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from runtime.preprocess import check_size, load_image, to_rgb

try:
    import av
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("loading videos needs PyAV: `pip install av==18.1.0`") from error

# FFmpeg's demuxers of still images: image2 (by file name) and the <codec>_pipe ones (by content:
# png_pipe, jpeg_pipe, webp_pipe, ...). GIF and APNG have demuxers of their own and read as videos.
_STILL_IMAGE_FORMAT = re.compile(r"image2|\w+_pipe")
# Hint of the messages that reject a source.
_VIDEO_HINT = "`--video` takes a video file or a folder of frames"


def load_video(
    source: str | os.PathLike[str] | Sequence[Image.Image],
    frames: int,
    *,
    on_note: Callable[[str], None] | None = None,
) -> list[Image.Image]:
    """`frames` frames of a video, sampled uniformly, each 8-bit RGB (PIL).

    `source` is one of:
      - a video file: any container and codec FFmpeg (PyAV's build) decodes: mp4, mkv, webm, mov,
        avi, gif, apng... Frames are counted as decoded, whatever their timestamps.
      - a folder of frames: its image files (by extension, those PIL opens) in natural order of their
        names (frame2 before frame10, case ignored). Hidden files and subfolders are skipped; other
        files are skipped with a note, so a stray notes.txt does not stop the run.
      - a sequence of PIL images, the frames in order.

    Of N frames those at `np.linspace(0, N - 1, frames, dtype=int)` are kept, the first and last
    included. `on_note(note)` hears one line on how the frames were chosen (e.g. "sampled 16 of 300
    frames of video clip.mp4 (uniformly)") and on skipped files; without `on_note` these go unsaid. An
    image file of a folder with several frames (GIF) gives its first, with load_image's note
    (a warning when `on_note` is None).

    Raises:
        FileNotFoundError: nothing at the path.
        ValueError: `frames` is not a positive integer; the path is not a file or folder, or the file
            is empty, unreadable, not a video FFmpeg decodes, damaged, holds no video stream (audio
            only) or is a still image; the folder has no image files, or one of them cannot be read;
            the video has fewer than `frames` frames; a frame is empty, too large or too elongated
            (`runtime.preprocess.check_size`); `source` has the wrong type.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _load_folder(path, frames, on_note)
        return _load_file(path, frames, on_note)
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return _load_images(source, frames, on_note)
    raise ValueError(
        f"the video must be a path (a video file or a folder of frames) or a sequence of PIL images, "
        f"got {type(source).__name__}"
    )


def _sample_indices(total: int, frames: int) -> np.ndarray:
    """int64 [frames]: LLaVA-Video's uniform sample of `frames` of `total` frames, 0 and total - 1 included."""
    return np.linspace(0, total - 1, frames, dtype=int)


def _check_count(total: int, frames: int, name: str) -> None:
    """Raise unless `total` frames are at least `frames`; `name` starts the message."""
    if total < frames:
        raise ValueError(
            f"{name} has {total} frame{'' if total == 1 else 's'}, this export samples {frames}: "
            f"give a video of at least {frames} frames"
        )


def _note_sampled(total: int, frames: int, name: str, on_note: Callable[[str], None] | None) -> None:
    if on_note is not None and total > frames:
        on_note(f"sampled {frames} of {total} frames of {name} (uniformly)")


def _load_images(
    images: Sequence[Image.Image], frames: int, on_note: Callable[[str], None] | None
) -> list[Image.Image]:
    """The sampled frames of a sequence of PIL images."""
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"frame {index} of the video is a {type(image).__name__}, not a PIL image")
    _check_count(len(images), frames, "the video")
    _note_sampled(len(images), frames, "the video", on_note)
    sampled = []
    for index in _sample_indices(len(images), frames):
        check_size(images[index].size, f"frame {index} of the video")
        sampled.append(to_rgb(images[index]))
    return sampled


def _load_folder(path: str, frames: int, on_note: Callable[[str], None] | None) -> list[Image.Image]:
    """The sampled frames of a folder of image files, in natural order of their names."""
    opened = {extension for extension, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    try:
        with os.scandir(path) as scan:
            entries = [entry for entry in scan if not entry.name.startswith(".") and entry.is_file()]
    except OSError as error:
        raise ValueError(f"folder {path} cannot be read ({error.strerror})") from None
    names = sorted(
        (entry.name for entry in entries if os.path.splitext(entry.name)[1].lower() in opened), key=_natural_key
    )
    skipped = sorted(entry.name for entry in entries if os.path.splitext(entry.name)[1].lower() not in opened)
    if not names:
        raise ValueError(f"folder {path} has no image files to read as frames; {_VIDEO_HINT}")
    if skipped and on_note is not None:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        plural = "" if len(skipped) == 1 else "s"
        on_note(f"skipped {len(skipped)} non-image file{plural} of folder {path}: {shown}")
    _check_count(len(names), frames, f"folder {path}")
    _note_sampled(len(names), frames, f"folder {path}", on_note)
    indices = _sample_indices(len(names), frames)
    return [to_rgb(load_image(os.path.join(path, names[index]), on_note)) for index in indices]


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key of a file name: digit runs compare as numbers (frame2 < frame10), the rest ignoring case."""
    # re.split with a group alternates text and digits, text first: the parts of two keys align by type.
    parts = re.split(r"(\d+)", name.casefold())
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), name


def _load_file(path: str, frames: int, on_note: Callable[[str], None] | None) -> list[Image.Image]:
    """The sampled frames of a video file: counted, then decoded (again where the count was off)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"video {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"video {path} is not a regular file or a folder")
    if os.path.getsize(path) == 0:
        raise ValueError(f"video file {path} is empty")
    try:
        total = _count_frames(path)
        _check_count(total, frames, f"video {path}")
        sampled, decoded = _decode(path, _sample_indices(total, frames))
        if decoded != total:
            # The count was off (a damaged or truncated file, an edit list): sample again over the frames
            # that decode.
            if decoded < total:
                damaged = f"only {decoded} of the {total} frames of video {path} decode: it may be damaged or truncated"
                if decoded < frames:
                    raise ValueError(f"{damaged}; this export samples {frames}")
                if on_note is not None:
                    on_note(damaged)
            total = decoded
            sampled, _ = _decode(path, _sample_indices(total, frames))
    except av.error.FFmpegError as error:
        raise ValueError(f"cannot read {path} as a video: {error.strerror or error}") from None
    _note_sampled(total, frames, f"video {path}", on_note)
    return sampled


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    """The first video stream of `container` (opened from `path`), its frame size checked from the header.

    Raises ValueError where the file is a still image or has no video stream.
    """
    if _STILL_IMAGE_FORMAT.fullmatch(container.format.name):
        raise ValueError(f"{path} is an image, not a video: this artifact answers about videos; {_VIDEO_HINT}")
    if not container.streams.video:
        kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "no streams"
        raise ValueError(f"{path} has no video stream ({kinds}); {_VIDEO_HINT}")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:  # 0 where only decoding tells
        check_size((width, height), f"each frame of video {path}")
    return stream


def _count_frames(path: str) -> int:
    """The frames of `path`'s first video stream: the container's count, else its packets (demuxed, not decoded)."""
    with av.open(path) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return stream.frames
        # One packet a frame; the empty packets that end a stream and those the demuxer marks to drop
        # (before an edit list's start) decode to no frame.
        return sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)


def _decode(path: str, indices: np.ndarray) -> tuple[list[Image.Image], int]:
    """The frames at `indices` of `path`'s first video stream, 8-bit RGB, and how many frames it decoded."""
    wanted = set(indices.tolist())
    sampled = []
    decoded = 0
    with av.open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            decoded += 1
            if index in wanted:
                check_size((frame.width, frame.height), f"frame {index} of video {path}")
                sampled.append(to_rgb(_to_image(frame)))
    return sampled, decoded


def _to_image(frame: av.VideoFrame) -> Image.Image:
    """PIL RGB, or RGBA where the frame has alpha or a palette (which may hold alpha)."""
    if frame.format.has_palette or any(component.is_alpha for component in frame.format.components):
        return Image.fromarray(frame.to_ndarray(format="rgba"))
    return Image.fromarray(frame.to_ndarray(format="rgb24"))
