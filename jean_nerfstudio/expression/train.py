"""Pre-training of the expression encoder on processed clips (the library behind `jean-train-expression`).

Each step draws a batch of random crops (`crop_seconds`) from the clips' *training* frames (the eval split stays
unseen, so the probes can score on it), pads them to one length, and minimizes the objective of `objective.py`.
All clips are brought to one frame rate first (linear interpolation), which the checkpoint records; the window is in
seconds, so the encoder then runs at any other rate via `ExpressionEncoder.set_fps`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from jean_nerfstudio.expression.encoder import ExpressionEncoder, ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import ExpressionInputs, ExpressionLayoutError
from jean_nerfstudio.expression.objective import ExpressionObjective, ExpressionObjectiveConfig
from jean_nerfstudio.expression.probes import probe_table


@dataclass
class ExpressionTrainConfig:
    """Pre-training settings."""

    encoder: ExpressionEncoderConfig = field(default_factory=ExpressionEncoderConfig)
    """The encoder to build."""
    objective: ExpressionObjectiveConfig = field(default_factory=ExpressionObjectiveConfig)
    """Loss weights and masking."""
    max_steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 8
    """Crops per step."""
    crop_seconds: float = 12.0
    """Length of each crop; shorter clips contribute whole (padded)."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    fps: Optional[float] = None
    """Common frame rate; None: the first clip's."""
    seed: int = 0
    """Seed of initialization, crops and masks."""


@dataclass
class TrainedExpressionEncoder:
    """What pre-training returns."""

    encoder: ExpressionEncoder
    objective: ExpressionObjective
    history: List[Dict[str, float]]
    """Per-logged-step losses and stats."""
    seconds: float
    """Wall time of the optimization."""


def check_same_layout(clips: Sequence[ExpressionInputs]) -> None:
    """All clips must share one input layout (same landmark backend and channels); one-line error otherwise."""
    first = clips[0]
    for clip in clips[1:]:
        try:
            clip.layout.check_compatible(first.layout.signature(), what=clip.source or "a clip")
        except ExpressionLayoutError as err:
            raise ExpressionLayoutError(f"{err} (first clip: {first.source})") from None


def training_frames(clip: ExpressionInputs) -> ExpressionInputs:
    """The clip's training rows as one contiguous sequence (the contract's eval split is the clip's tail)."""
    if clip.train_frames is None:
        return clip
    frames = sorted(clip.train_frames)
    if frames != list(range(frames[0], frames[0] + len(frames))):
        raise ValueError(f"{clip.source}: training frames are not contiguous; expected the eval split at the end.")
    return clip.frames(slice(frames[0], frames[-1] + 1))


def _batch(
    clips: Sequence[ExpressionInputs],
    audio: Optional[Sequence[Optional[Tensor]]],
    crop: int,
    batch_size: int,
    gen: torch.Generator,
) -> Dict[str, Optional[Tensor]]:
    lengths = torch.tensor([c.num_frames for c in clips], dtype=torch.float64)
    picks = torch.multinomial(lengths, batch_size, replacement=True, generator=gen).tolist()
    pieces = []
    for i in picks:
        n = clips[i].num_frames
        size = min(crop, n)
        start = int(torch.randint(0, n - size + 1, (1,), generator=gen))
        pieces.append((i, start, size))
    longest = max(p[2] for p in pieces)
    f, s = clips[0].input_dim, clips[0].speech_targets.shape[1]
    values = torch.zeros(batch_size, longest, f)
    speech = torch.zeros(batch_size, longest, s)
    valid = torch.zeros(batch_size, longest, dtype=torch.bool)
    use_audio = audio is not None and all(a is not None for a in audio)
    audio_dim = audio[0].shape[1] if use_audio else 0  # type: ignore[index,union-attr]
    audio_batch = torch.zeros(batch_size, longest, audio_dim) if use_audio else None
    for b, (i, start, size) in enumerate(pieces):
        values[b, :size] = clips[i].values[start : start + size]
        speech[b, :size] = clips[i].speech_targets[start : start + size]
        valid[b, :size] = True
        if audio_batch is not None:
            audio_batch[b, :size] = audio[i][start : start + size]  # type: ignore[index]
    return {"values": values, "speech": speech, "valid": valid, "audio": audio_batch}


def train_expression_encoder(
    clips: Sequence[ExpressionInputs],
    config: ExpressionTrainConfig,
    audio_embeddings: Optional[Sequence[Optional[Tensor]]] = None,
    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> TrainedExpressionEncoder:
    """Pre-train an encoder (and its objective's decoder) on the training frames of `clips`.

    Args:
        clips: `expression_inputs(...)` of each clip, all at the same fps (see `ExpressionInputs.resampled`).
        config: settings.
        audio_embeddings: per clip, the stage-1 audio embeddings [N, A] of all its frames (None: no audio term).
        on_step: called after every step with (step, stats) for progress display.
    """
    if not clips:
        raise ValueError("no clips to train on")
    check_same_layout(clips)
    fps = clips[0].fps
    if any(abs(c.fps - fps) > 1e-6 for c in clips):
        raise ValueError("clips must share one fps; resample them first (ExpressionInputs.resampled)")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train_clips = [training_frames(c) for c in clips]
    train_audio = None
    if audio_embeddings is not None and all(a is not None for a in audio_embeddings):
        train_audio = []
        for clip, emb in zip(clips, audio_embeddings):
            frames = sorted(clip.train_frames) if clip.train_frames is not None else list(range(clip.num_frames))
            train_audio.append(emb[frames[0] : frames[-1] + 1].float())  # type: ignore[index]

    encoder = config.encoder.setup(input_dim=clips[0].input_dim, fps=fps)
    encoder.fit_input_normalization(torch.cat([c.values for c in train_clips]))
    objective = config.objective.setup(layout=clips[0].layout, code_dim=encoder.output_dim)
    params = list(encoder.parameters()) + list(objective.parameters())
    optim = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return config.learning_rate * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))

    crop = max(2, int(round(config.crop_seconds * fps)))
    history: List[Dict[str, float]] = []
    encoder.train()
    objective.train()
    start = time.perf_counter()
    for step in range(config.max_steps):
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        batch = _batch(train_clips, train_audio, crop, config.batch_size, gen)
        losses = objective(
            encoder, batch["values"], batch["speech"], audio_embeddings=batch["audio"], valid=batch["valid"],
            generator=gen,
        )
        total = sum(losses.values())
        optim.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        stats = {k: float(v.detach()) for k, v in losses.items()}
        stats.update(objective.last_stats)
        stats["total"] = float(total.detach())  # type: ignore[union-attr]
        if step % 25 == 0 or step == config.max_steps - 1:
            history.append({"step": float(step), **stats})
        if on_step is not None:
            on_step(step, stats)
    encoder.eval()
    objective.eval()
    return TrainedExpressionEncoder(encoder, objective, history, time.perf_counter() - start)


@torch.no_grad()
def encode(encoder: ExpressionEncoder, values: Tensor) -> np.ndarray:
    """Codes of one whole sequence (eval mode), as numpy."""
    was_training = encoder.training
    encoder.eval()
    codes = encoder(values).numpy()
    encoder.train(was_training)
    return codes


def reference_features(clip: ExpressionInputs, raw_blendshapes: Optional[np.ndarray]) -> np.ndarray:
    """The 'no encoder' baseline: all blendshapes of the clip (or, without blendshapes, all encoder inputs)."""
    if raw_blendshapes is not None and raw_blendshapes.size:
        return raw_blendshapes
    return clip.values.numpy()


def split_rows(clip: ExpressionInputs, part: str) -> slice:
    """Rows of `part` ("train", "eval" or "all") of a clip; the eval split is the clip's tail."""
    if part == "all" or clip.train_frames is None:
        return slice(0, clip.num_frames)
    end = max(clip.train_frames) + 1
    return slice(0, end) if part == "train" else slice(end, clip.num_frames)


def probe_targets(clip: ExpressionInputs, rows: slice) -> Dict[str, np.ndarray]:
    """The probe target sets of a clip's rows (the first column of each is its key column for terciles)."""
    names = clip.layout.speech_target_names
    key = [i for i, n in enumerate(names) if n == "hp:bs:jawOpen"]
    mouth_bs = key + [i for i, n in enumerate(names) if n.startswith("hp:bs:") and i not in key]
    gaps = [i for i, n in enumerate(names) if n.startswith("hp:geom:lip_gap")][:1]
    mouth_geom = gaps + [i for i, n in enumerate(names) if n.startswith(("hp:geom", "hp:lm")) and i not in gaps]
    upper = clip.layout.upper_target_names
    brows_eyes = [i for i, n in enumerate(upper) if not n.startswith(("bs:cheek", "bs:nose"))]
    out = {
        "mouth, high-pass (blendshapes)": clip.speech_targets[rows][:, mouth_bs].numpy(),
        "mouth, high-pass (lip landmarks)": clip.speech_targets[rows][:, mouth_geom].numpy(),
        "brows+eyes": clip.upper_targets[rows][:, brows_eyes].numpy(),
        "upper face (all)": clip.upper_targets[rows].numpy(),
        "expressive mouth (slow)": clip.expressive_targets[rows].numpy(),
    }
    if len(brows_eyes) == len(upper):
        del out["upper face (all)"]  # landmarks-only layout: the same set
    return out


def run_probes(
    encoder: ExpressionEncoder,
    train_clips: Sequence[ExpressionInputs],
    held_out: Sequence[ExpressionInputs] = (),
    raw_blendshapes: Optional[Dict[str, np.ndarray]] = None,
    mlp: bool = True,
) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """Probe scores of the codes and of reference feature sets.

    Probes are fitted on the training frames of `train_clips` and scored on (a) their eval-split frames
    ("eval_split") and (b) every frame of the `held_out` clips, which the encoder never saw ("held_out").

    Args:
        encoder: the trained encoder (its fps must match the clips').
        train_clips: clips the encoder trained on (their `train_frames` mark the split).
        held_out: clips never seen.
        raw_blendshapes: clip source -> raw [N, 52] blendshapes for the baseline row (else the encoder inputs).
        mlp: also run the MLP probes.

    Returns:
        {test set: {feature set: {target set: scores}}}.
    """
    raw_blendshapes = raw_blendshapes or {}
    layout = train_clips[0].layout
    slow_speech = [
        i for i, (n, r) in enumerate(zip(layout.channel_names, layout.channel_regions))
        if n.startswith("slow:") and r == "slow_mouth"
    ]
    baseline = "raw blendshapes" if raw_blendshapes else "raw landmarks+inputs"

    def features(clip: ExpressionInputs, rows: slice) -> Dict[str, np.ndarray]:
        # Codes of the whole clip, then cut: a frame's code sees its full window, as when the NeRF uses it.
        codes = encode(encoder, clip.values)[rows]
        return {
            "codes": codes,
            "codes, time-shifted (chance)": np.roll(codes, max(1, len(codes) // 2), axis=0),
            baseline: reference_features(clip, raw_blendshapes.get(clip.source))[rows],
            "encoder inputs": clip.values[rows].numpy(),
            # The floor: the low-passed speech inputs alone. The Gaussian low- and high-pass overlap in their
            # transition band (~0.5-2 Hz), so these explain a few % of the "high-pass" mouth shape by construction.
            "low-passed speech inputs only": clip.values[rows][:, slow_speech].numpy(),
        }

    def collect(members: Sequence[Tuple[ExpressionInputs, str]]):  # noqa: ANN202
        feats = [features(c, split_rows(c, part)) for c, part in members]
        targs = [probe_targets(c, split_rows(c, part)) for c, part in members]
        return feats, targs

    train_feats, train_targs = collect([(c, "train") for c in train_clips])
    tests = {
        "eval_split": [(c, "eval") for c in train_clips if c.train_frames is not None],
        "held_out": [(c, "all") for c in held_out],
    }
    results: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    for test_name, members in tests.items():
        members = [(c, p) for c, p in members if len(range(*split_rows(c, p).indices(c.num_frames))) > 2]
        if not members:
            continue
        test_feats, test_targs = collect(members)
        feature_sets = {n: ([f[n] for f in train_feats], [f[n] for f in test_feats]) for n in train_feats[0]}
        target_sets = {n: ([t[n] for t in train_targs], [t[n] for t in test_targs]) for n in train_targs[0]}
        results[test_name] = probe_table(feature_sets, target_sets, mlp=mlp)
    return results
