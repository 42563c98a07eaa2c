"""Stage `avsync`: measure the recording's audio/video offset with the shipped lip-sync model, correct it if asked.

The media stage keeps the audio as recorded in `.stages/work/audio_recorded.wav` beside `audio.wav`; this stage
always starts from that copy, so running it again (or with another `--av-offset`) never shifts twice. It rewrites
`audio.wav` (atomically) and the features stage, which depends on it, recomputes the mel windows from the result.

`--av-offset auto`: measure; correct when the measurement is confident (`av_offset.MIN_CONFIDENCE`) and non-zero.
`--av-offset K`: the audio lags the video by K frames (negative: it leads); advance it by K, measure nothing.
`--av-offset 0`: keep the recording as it is.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from jean_nerfstudio import constants as C

RECORDED_AUDIO = "audio_recorded.wav"
"""The media stage's copy of the audio as recorded, in the stages' work folder."""


def _measure(ctx, waveform: np.ndarray, num_frames: int) -> Dict[str, Any]:
    """The estimate as a JSON-able dict, or {"skipped": reason} when it cannot be measured."""
    from jean_nerfstudio.audio.av_offset import FaceTrack, estimate_av_offset
    from jean_nerfstudio.audio.checkpoint import AudioCheckpointError
    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.weights import ShippedWeightsMissing, shipped_audio_encoder

    marks = ctx.result("landmarks")
    features = ctx.root / C.FEATURES_DIR
    face = FaceTrack(
        landmarks_canonical=np.load(features / C.FEATURE_FILES["landmarks_canonical"]),
        groups=LANDMARK_GROUPS[marks["backend"]],
        blendshapes=np.load(features / C.FEATURE_FILES["blendshapes"]),
        blendshape_names=list(marks["blendshape_names"]),
    )
    try:
        estimate = estimate_av_offset(shipped_audio_encoder(), waveform, face, num_frames, ctx.config.fps)
    except (AudioCheckpointError, ShippedWeightsMissing, ValueError) as err:
        return {"skipped": " ".join(str(err).split())}
    return estimate.to_dict()


def run_avsync(ctx) -> Dict[str, Any]:
    """Stage `avsync`: audio.wav from the recorded audio, shifted by the measured or given offset."""
    from jean_nerfstudio.audio.av_offset import MIN_CONFIDENCE, parse_av_offset, shift_audio
    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.audio.io import write_wav
    from jean_nerfstudio.process.errors import ProcessError

    cfg = ctx.config
    num_frames = int(ctx.result("media")["num_frames"])
    recorded = ctx.work_dir / RECORDED_AUDIO
    if not recorded.is_file():
        raise ProcessError(f"{ctx.root}: {recorded.name} missing (an older jean-process wrote this folder); re-run with --force.")
    try:
        mode = parse_av_offset(cfg.av_offset)
    except ValueError as err:
        raise ProcessError(str(err) + ".") from None
    ctx.progress.start("avsync", 2, unit="steps")
    waveform = decode_audio(recorded, sample_rate=C.AUDIO_SAMPLE_RATE).waveform
    measured: Dict[str, Any] = {}
    if mode == "auto":
        measured = _measure(ctx, waveform, num_frames)
        if "skipped" in measured:
            ctx.warn(f"{cfg.video}: audio/video offset not measured ({measured['skipped']}); the audio is kept as recorded.")
            applied = 0
        elif measured["offset_frames"] != 0 and measured["confidence"] >= MIN_CONFIDENCE:
            applied = int(measured["offset_frames"])
        else:
            applied = 0
    else:
        applied = int(mode)
    ctx.progress.advance("avsync")
    if applied:
        direction = "late" if applied > 0 else "early"
        how = f"measured, confidence {measured['confidence']:.1f}" if measured else "as given with --av-offset"
        ctx.progress.note(
            f"audio/video offset: the sound is {abs(applied)} frame(s) {direction} ({how}); corrected. "
            "Pass --av-offset 0 to keep the recording as it is."
        )
    elif measured and "skipped" not in measured:
        ctx.progress.note(
            f"audio/video offset: measured {measured['offset_frames']:+d} frame(s), confidence {measured['confidence']:.1f} "
            f"({'in sync' if measured['offset_frames'] == 0 else f'below {MIN_CONFIDENCE:g}, kept as recorded'})."
        )
    write_wav(ctx.root / C.AUDIO_FILE, shift_audio(waveform, applied, cfg.fps) if applied else waveform, C.AUDIO_SAMPLE_RATE)
    ctx.progress.advance("avsync")
    return {"mode": str(mode), "applied_frames": applied, "measured": measured or None}
