"""Media files of the kinds phones and YouTube produce, generated with PyAV for the robustness matrix.

Every clip shows the same real face photo as `jean_nerfstudio.synthetic` (the astronaut, talking along a syllable
track whose envelope also drives the voice), but laid out and muxed the awkward ways real uploads are: variable frame
rate, 8 kHz / 44.1 kHz / 48 kHz, stereo and 5.1 audio, audio longer or shorter than the picture, frames without a face,
two faces, a tiny face in a big frame, portrait and 4K frames, and an audio-only file. `Clip` records what went in
(the frame times and the syllable track), so tests can check what came out against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from jean_nerfstudio.synthetic import SyllableTrack, make_syllables, synth_voice, talking_face_frames

FACE_SIZE = 256
"""Side of the talking-face picture (the face in it is about 85 px wide: above jean-process's 64 px minimum)."""
LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "5.1": 6}


@dataclass(frozen=True)
class Clip:
    """A generated file and what it holds."""

    path: Path
    track: SyllableTrack
    """The syllables that drive the mouth and the voice."""
    frame_times: np.ndarray
    """Presentation time (s) of every video frame (empty: no video stream)."""
    duration: float
    """End of the last video frame (its time plus its duration), s."""
    audio_seconds: float
    """Length of the audio track, s (0: none)."""
    audio_rate: int
    channels: int
    width: int = 0
    height: int = 0

    def envelope_at(self, times: np.ndarray) -> np.ndarray:
        return self.track.envelope(np.asarray(times, dtype=np.float64))


def face_at(track: SyllableTrack, times: Sequence[float], size: int = FACE_SIZE) -> list:
    """The talking face at each of `times` (s): frames drawn at 100 fps, each time taking the one at its 10 ms tick."""
    ticks = np.round(np.asarray(times) * 100.0).astype(int)
    frames = list(talking_face_frames(track, int(ticks.max()) + 1, 100.0, size))
    return [frames[t] for t in ticks]


def mux(
    path: Path,
    frames: Sequence[np.ndarray],
    frame_times: Sequence[float],
    last_duration: float,
    wave: Optional[np.ndarray],
    audio_rate: int = 16000,
    layout: str = "mono",
    preset: str = "veryfast",
) -> Path:
    """Write H.264 frames at the given presentation times (ms precision: variable rates are fine) and AAC audio.

    Args:
        wave: mono float [samples] in [-1, 1]; it is spread over the layout's channels (stereo: right at 0.8;
            5.1: the voice in the centre channel, a quieter copy in front left/right, nothing in the surrounds/LFE, as
            film mixes put dialogue), or None for no audio stream.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        vstream = None
        if len(frames):
            vstream = container.add_stream("libx264", rate=25)
            vstream.pix_fmt = "yuv420p"
            vstream.height, vstream.width = frames[0].shape[:2]
            vstream.codec_context.time_base = Fraction(1, 1000)
            vstream.time_base = Fraction(1, 1000)
            vstream.options = {"crf": "20", "preset": preset}
        astream = None
        if wave is not None:
            astream = container.add_stream("aac", rate=audio_rate, layout=layout)
        if vstream is not None:
            times_ms = np.round(np.asarray(frame_times) * 1000.0).astype(int)
            for frame, ms, next_ms in zip(frames, times_ms, list(times_ms[1:]) + [times_ms[-1] + round(1000 * last_duration)]):
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                out.pts = int(ms)
                out.time_base = Fraction(1, 1000)
                for packet in vstream.encode(out):
                    _mux_video(container, packet, times_ms, last_duration)
            for packet in vstream.encode():
                _mux_video(container, packet, times_ms, last_duration)
        if astream is not None:
            mono = np.clip(np.asarray(wave, dtype=np.float32), -1, 1)
            if layout == "mono":
                planes = mono[None]
            elif layout == "stereo":
                planes = np.stack([mono, 0.8 * mono])
            elif layout == "5.1":  # FL FR FC LFE BL BR
                zero = np.zeros_like(mono)
                planes = np.stack([0.3 * mono, 0.3 * mono, mono, zero, zero, zero])
            else:
                raise ValueError(layout)
            chunk = astream.codec_context.frame_size or 1024
            for start in range(0, planes.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, start : start + chunk]), format="fltp",
                                                   layout=astream.layout.name)
                piece.sample_rate = audio_rate
                piece.pts = start
                piece.time_base = Fraction(1, audio_rate)
                for packet in astream.encode(piece):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def _mux_video(container, packet, times_ms: np.ndarray, last_duration: float) -> None:
    """Give each packet its real display duration (the gap to the next frame), so the file's end time is exact."""
    if packet.pts is not None:
        index = int(np.searchsorted(times_ms, packet.pts))
        if index < len(times_ms) and times_ms[index] == packet.pts:
            following = times_ms[index + 1] if index + 1 < len(times_ms) else times_ms[index] + round(1000 * last_duration)
            packet.duration = int(following - times_ms[index])
    container.mux(packet)


def talking_clip(
    path: Path,
    duration: float = 2.4,
    fps: float = 25.0,
    frame_times: Optional[np.ndarray] = None,
    audio_rate: int = 16000,
    layout: str = "mono",
    audio_seconds: Optional[float] = None,
    canvas: Optional[Callable[[np.ndarray, int], np.ndarray]] = None,
    face_size: int = FACE_SIZE,
    seed: int = 0,
    preset: str = "veryfast",
    video: bool = True,
) -> Clip:
    """A talking-face clip.

    Args:
        frame_times: the frames' presentation times (variable frame rate); default: every 1/fps over `duration`.
        audio_seconds: length of the audio track (default: `duration`; longer or shorter than the picture on purpose);
            0: no audio stream.
        canvas: `canvas(face_frame, index) -> frame`: places the face in a larger frame, blanks it, duplicates it.
        video: False writes the audio alone (an .m4a given where a video is expected).
    """
    audio_seconds = duration if audio_seconds is None else audio_seconds
    track = make_syllables(max(duration, audio_seconds), seed=seed)
    if frame_times is None:
        frame_times = np.arange(int(round(duration * fps))) / fps
    frame_times = np.round(np.asarray(frame_times, dtype=np.float64), 3)
    last = float(duration - frame_times[-1]) if len(frame_times) else 0.0
    frames = []
    if video:
        frames = face_at(track, frame_times, face_size)
        if canvas is not None:
            frames = [canvas(frame, i) for i, frame in enumerate(frames)]
    wave = synth_voice(track, audio_seconds, audio_rate, seed=seed) if audio_seconds > 0 else None
    mux(path, frames, frame_times, last, wave, audio_rate, layout, preset)
    height, width = frames[0].shape[:2] if frames else (0, 0)
    return Clip(path=Path(path), track=track, frame_times=frame_times if video else np.zeros(0), duration=duration,
                audio_seconds=audio_seconds, audio_rate=audio_rate, channels=LAYOUT_CHANNELS[layout], width=width,
                height=height)


def variable_rate_times(duration: float) -> np.ndarray:
    """A phone's variable frame rate: 50 fps for the first 40%, then 12.5 fps (low light), then irregular 30-40 ms
    steps. Read as constant-rate, the picture would drift far out of sync with the sound."""
    times = list(np.arange(0.0, 0.4 * duration, 0.02))
    t = times[-1] + 0.02
    while t < 0.7 * duration:
        times.append(t)
        t += 0.08
    steps = [0.03, 0.04, 0.03, 0.04, 0.04]
    k = 0
    while t < duration - 0.03:
        times.append(t)
        t += steps[k % len(steps)]
        k += 1
    return np.round(np.array(times), 3)


def on_canvas(width: int, height: int, x: int, y: int, scale: float = 1.0, grey: int = 150):
    """A `canvas` placing the (optionally rescaled) face picture at (x, y) in a plain width x height frame."""
    import cv2

    def place(face: np.ndarray, _: int) -> np.ndarray:
        frame = np.full((height, width, 3), grey, np.uint8)
        if scale != 1.0:
            face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        h, w = face.shape[:2]
        frame[y : y + h, x : x + w] = face
        return frame

    return place


def side_by_side(gap: int = 32):
    """Two copies of the talking face next to each other (two people of the same size)."""

    def place(face: np.ndarray, _: int) -> np.ndarray:
        h, w = face.shape[:2]
        frame = np.full((h, 2 * w + gap, 3), 150, np.uint8)
        frame[:, :w] = face
        frame[:, w + gap :] = face[:, ::-1]
        return frame

    return place


def blank_frames(indices) -> Callable[[np.ndarray, int], np.ndarray]:
    """A `canvas` that replaces the given frames by a plain wall (the person stepped out of the picture)."""
    chosen = set(int(i) for i in indices)

    def place(face: np.ndarray, i: int) -> np.ndarray:
        return np.full_like(face, 150) if i in chosen else face

    return place


def envelope_rms(wave: np.ndarray, rate: int, num_frames: int, fps: float) -> np.ndarray:
    """RMS of `wave` in each video frame's interval: the loudness curve, comparable across sample rates."""
    bounds = np.round(np.arange(num_frames + 1) / fps * rate).astype(int)
    return np.array([np.sqrt(np.mean(np.square(wave[a:b], dtype=np.float64))) if b > a else 0.0
                     for a, b in zip(bounds[:-1], bounds[1:])])


# ---------------------------------------------------------------------------------------------------------------------
# The catalogue: every input of the matrix, generated once per test session on first use.
# ---------------------------------------------------------------------------------------------------------------------
PORTRAIT = dict(width=1080, height=1920, x=300, y=500, scale=2.0)
"""A phone's portrait frame; the face is ~170 px wide (a person a little away from the phone)."""
UHD = dict(width=3840, height=2160, x=1500, y=600, scale=3.0)
"""A 4K frame; the face is ~250 px wide (a medium shot: under 1/8 of the frame, too small for a whole-frame look)."""
TWO_FACES_GAP = 32


def _settings(name: str) -> dict:
    table = {
        "plain": {},
        "vfr": dict(frame_times=variable_rate_times(2.4)),
        "audio_8k": dict(audio_rate=8000),
        "audio_44k_stereo": dict(audio_rate=44100, layout="stereo"),
        "audio_48k": dict(audio_rate=48000),
        "audio_5_1": dict(audio_rate=48000, layout="5.1"),
        "audio_longer": dict(audio_seconds=3.4),
        "audio_shorter": dict(audio_seconds=1.6),
        "no_audio": dict(audio_seconds=0),
        "two_faces": dict(canvas=side_by_side(TWO_FACES_GAP)),
        "tiny_face": dict(canvas=on_canvas(640, 360, 300, 100, scale=0.6)),
        "some_no_face": dict(canvas=blank_frames(range(25, 33))),
        "most_no_face": dict(canvas=blank_frames(range(10, 50))),
        "all_no_face": dict(canvas=blank_frames(range(0, 60))),
        "portrait": dict(canvas=on_canvas(PORTRAIT["width"], PORTRAIT["height"], PORTRAIT["x"], PORTRAIT["y"],
                                          PORTRAIT["scale"])),
        "uhd": dict(duration=1.0, preset="ultrafast",
                    canvas=on_canvas(UHD["width"], UHD["height"], UHD["x"], UHD["y"], UHD["scale"])),
        "short": dict(duration=1.0),
    }
    return table[name]


_MADE: dict = {}


def media(name: str, root: Path) -> Clip:
    """The named input, written under `root` on first use (cached for the session)."""
    if name in _MADE and _MADE[name].path.exists():
        return _MADE[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if name == "audio_only":
        clip = talking_clip(root / "speech only.m4a", video=False)
    elif name in ("empty", "text", "truncated", "truncated_faststart"):
        clip = _broken(name, root)
    else:
        clip = talking_clip(root / f"{name}.mp4", **_settings(name))
    _MADE[name] = clip
    return clip


def _broken(name: str, root: Path) -> Clip:
    import av

    whole = media("plain", root)
    path = root / {"empty": "empty.mp4", "text": "meeting notes.mp4", "truncated": "truncated.mp4",
                   "truncated_faststart": "truncated_faststart.mp4"}[name]
    if name == "empty":
        path.write_bytes(b"")
    elif name == "text":
        path.write_text("these are my meeting notes, not a video\n" * 40)
    elif name == "truncated":  # an interrupted download: the index (moov, written last) never arrived
        path.write_bytes(whole.path.read_bytes()[: whole.path.stat().st_size // 2])
    else:  # a web-optimized (index first) file cut in the middle: readable, but half of it is missing
        faststart = root / "faststart.mp4"
        with av.open(str(whole.path)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
            streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.dts is not None:
                    packet.stream = streams[packet.stream.index]
                    dst.mux(packet)
        path.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    return Clip(path=path, track=whole.track, frame_times=whole.frame_times, duration=whole.duration,
                audio_seconds=whole.audio_seconds, audio_rate=whole.audio_rate, channels=whole.channels)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])
