"""Honest measurements of the lip-sync audio encoder.

* Sync retrieval: for a held-out audio window of frame t, pick the true mouth window among the same clip's windows
  at offsets -15..+15 frames (31 candidates; chance 1/31). Reported exact and within +-1 frame.
* Offset estimation: delay (or advance) a held-out clip's waveform by k frames, run the front end on the shifted
  audio, and recover k as the offset that maximizes the mean audio-mouth similarity over the clip.
* Upper-face probe: how much upper-face motion (brows, eyes, blinks) a fresh linear probe can read from the audio
  feature the NeRF model consumes: cross-validated ridge R^2, and tertile accuracy against the majority-class chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jean_nerfstudio.audio.data import SyncCorpus, clip_waveform
from jean_nerfstudio.audio.encoder import AudioEncoder, MouthEncoder
from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
from jean_nerfstudio.constants import AUDIO_SAMPLE_RATE
from jean_nerfstudio.contract import ProcessedClip


@dataclass
class CorpusEmbeddings:
    """Per-frame outputs of both towers over a corpus (clean audio)."""

    audio_features: Float[Tensor, "frames output_dim"]
    audio_embeddings: Float[Tensor, "frames embed_dim"]
    mouth_embeddings: Float[Tensor, "frames embed_dim"]
    """Mouth window centred on each frame (clamped at the clip's ends)."""


@torch.no_grad()
def embed_corpus(audio: AudioEncoder, mouth: MouthEncoder, corpus: SyncCorpus, batch: int = 512) -> CorpusEmbeddings:
    audio_was, mouth_was = audio.training, mouth.training
    audio.eval(), mouth.eval()
    device = next(audio.parameters()).device
    feats, embs, mouths = [], [], []
    zero = torch.zeros(1, dtype=torch.long)
    for start in range(0, corpus.num_frames, batch):
        frames = torch.arange(start, min(corpus.num_frames, start + batch))
        f = audio(corpus.audio_windows(frames).to(device))
        feats.append(f.cpu())
        embs.append(audio.project(f).cpu())
        mouths.append(mouth(corpus.mouth_windows(frames, zero)[:, 0].to(device)).cpu())
    audio.train(audio_was), mouth.train(mouth_was)
    return CorpusEmbeddings(torch.cat(feats), torch.cat(embs), torch.cat(mouths))


@dataclass
class RetrievalResult:
    accuracy: float
    """Fraction of anchors whose true mouth window scores highest among the 2R+1 offsets."""
    within_one: float
    """Fraction whose best-scoring offset is within +-1 frame of the truth."""
    chance: float
    """1 / (2R+1)."""
    mean_abs_offset: float
    """Mean |best offset| in frames (0 is perfect)."""
    num_anchors: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def sync_retrieval(
    audio_embeddings: Float[Tensor, "frames dim"],
    mouth_embeddings: Float[Tensor, "frames dim"],
    anchors: Int[Tensor, "n"],
    max_offset: int = 15,
    audio_shift: Optional[Int[Tensor, "n"]] = None,
) -> RetrievalResult:
    """Audio window of each anchor frame vs the mouth windows at anchor + d, d in [-max_offset, max_offset].

    The anchors must have every candidate inside their own clip (`SyncCorpus.*_anchors(max_offset)`). `audio_shift`
    (per anchor) takes the audio of frame anchor + shift instead: the clip's own audio/video offset removed.
    """
    offsets = torch.arange(-max_offset, max_offset + 1)
    if anchors.numel() == 0:
        return RetrievalResult(float("nan"), float("nan"), 1.0 / len(offsets), float("nan"), 0)
    audio_index = anchors if audio_shift is None else anchors + audio_shift
    candidates = mouth_embeddings[anchors[:, None] + offsets[None, :]]  # [n, K, E]
    scores = torch.einsum("ne,nke->nk", audio_embeddings[audio_index], candidates)
    best = offsets[scores.argmax(dim=1)]
    return RetrievalResult(
        accuracy=float((best == 0).float().mean()),
        within_one=float((best.abs() <= 1).float().mean()),
        chance=1.0 / len(offsets),
        mean_abs_offset=float(best.abs().float().mean()),
        num_anchors=int(anchors.numel()),
    )


def shift_waveform(waveform: np.ndarray, frames: int, sample_rate: int, fps: float) -> np.ndarray:
    """Delay the audio by `frames` video frames (advance it when negative), keeping its length; silence fills in."""
    shift = int(round(frames * sample_rate / fps))
    out = np.zeros_like(waveform)
    if shift >= 0:
        out[shift:] = waveform[: len(waveform) - shift] if shift < len(waveform) else 0
    else:
        out[: len(waveform) + shift] = waveform[-shift:]
    return out


def offset_scores(
    audio_embeddings: Float[Tensor, "frames dim"], mouth_embeddings: Float[Tensor, "frames dim"], max_offset: int = 15
) -> Float[Tensor, "offsets"]:
    """Mean similarity of audio frame t + d with mouth frame t over the clip, for d in [-max_offset, max_offset]."""
    n = audio_embeddings.shape[0]
    t = torch.arange(max_offset, n - max_offset)
    return torch.stack(
        [(audio_embeddings[t + d] * mouth_embeddings[t]).sum(-1).mean() for d in range(-max_offset, max_offset + 1)]
    )


@dataclass
class OffsetResult:
    clip: str
    true_offset: int
    """k: frames the audio was shifted by (positive: delayed)."""
    estimated_offset: int
    """The offset that maximizes the mean audio-mouth similarity over the shifted clip."""
    clip_offset: int
    """The estimate on the unshifted clip: the recording's own audio/video offset as the model sees it."""

    @property
    def error(self) -> int:
        """|estimate - k|: against the recording taken as perfectly in sync."""
        return abs(self.estimated_offset - self.true_offset)

    @property
    def relative_error(self) -> int:
        """|(estimate - clip_offset) - k|: how well the shift itself is measured, whatever the recording's own offset."""
        return abs(self.estimated_offset - self.clip_offset - self.true_offset)


@torch.no_grad()
def offset_estimation(
    audio: AudioEncoder,
    mouth: MouthEncoder,
    spec: FrontEndSpec,
    clip: ProcessedClip,
    mouth_embeddings: Float[Tensor, "frames dim"],
    shifts: Sequence[int] = (-6, -3, 0, 3, 6),
    max_offset: int = 15,
) -> List[OffsetResult]:
    """Shift the clip's waveform by each k frames, recompute its windows with the front end, estimate k back."""
    was = audio.training
    audio.eval()
    device = next(audio.parameters()).device
    waveform = clip_waveform(clip)
    estimates = {}
    for k in sorted(set(int(k) for k in shifts) | {0}):
        shifted = shift_waveform(waveform, k, AUDIO_SAMPLE_RATE, clip.fps)
        windows = compute_frame_windows(spec, shifted, AUDIO_SAMPLE_RATE, clip.num_frames, clip.fps)
        emb = audio.project(audio(windows.to(device))).cpu()
        estimates[k] = int(offset_scores(emb, mouth_embeddings, max_offset).argmax()) - max_offset
    audio.train(was)
    return [OffsetResult(clip.root.name, int(k), estimates[int(k)], estimates[0]) for k in shifts]


def estimate_clip_offsets(
    emb: CorpusEmbeddings, corpus: SyncCorpus, max_shift: int, split: str = "train"
) -> Int[Tensor, "clips"]:
    """Each clip's audio/video offset as the model sees it: the d in [-max_shift, max_shift] maximizing the mean
    similarity of audio frame t + d with mouth frame t over the clip's `split` frames ("train" or "all")."""
    offsets = []
    for entry in corpus.entries:
        frames = entry.train_frames if split == "train" else np.arange(entry.num_frames)
        frames = frames[(frames >= max_shift) & (frames < entry.num_frames - max_shift)]
        if frames.size == 0:
            offsets.append(0)
            continue
        t = torch.as_tensor(frames + entry.start)
        scores = torch.stack(
            [(emb.audio_embeddings[t + d] * emb.mouth_embeddings[t]).sum(-1).mean() for d in range(-max_shift, max_shift + 1)]
        )
        offsets.append(int(scores.argmax()) - max_shift)
    return torch.tensor(offsets, dtype=torch.long)



@dataclass
class ProbeResult:
    r2_mean: float
    """Cross-validated R^2 averaged over the upper-face channels (0: nothing readable; 1: fully determined)."""
    r2_max: float
    """The best channel's R^2."""
    binned_accuracy: float
    """Tertile classification accuracy of a linear probe, averaged over channels."""
    binned_chance: float
    """Accuracy of always answering the training folds' majority tertile."""
    channels: List[str]
    r2_per_channel: List[float]
    num_frames: int

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


PROBE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
"""Ridge strengths tried by the probe's inner cross-validation (features are standardized)."""


def _ridge_path(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """Ridge predictions [len(alphas), n_test, outputs] for every alpha at once (one SVD; intercept unpenalized)."""
    mx, my = x_train.mean(0), y_train.mean(0)
    u, sv, vt = np.linalg.svd(x_train - mx, full_matrices=False)
    uty = u.T @ (y_train - my)  # [r, outputs]
    proj = (x_test - mx) @ vt.T  # [n_test, r]
    out = [proj @ ((sv / (sv**2 + a))[:, None] * uty) + my for a in alphas]
    return np.stack(out)


def _fit_predict(x_train, y_train, x_test, fold_train: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Ridge predictions for x_test with each output's alpha chosen by leave-one-block-out CV inside the training set
    (`fold_train`: the block of every training row)."""
    blocks = np.unique(fold_train)
    errors = np.zeros((len(alphas), y_train.shape[1]))
    for b in blocks if len(blocks) > 1 else ():
        inner_test = fold_train == b
        path = _ridge_path(x_train[~inner_test], y_train[~inner_test], x_train[inner_test], alphas)
        errors += ((path - y_train[inner_test][None]) ** 2).sum(axis=1)
    best = errors.argmin(axis=0)  # [outputs]
    path = _ridge_path(x_train, y_train, x_test, alphas)  # [A, n_test, outputs]
    return np.take_along_axis(path, best[None, None, :], axis=0)[0]


def upper_face_probe(
    features: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    groups: np.ndarray | Tensor,
    channel_names: Sequence[str],
    folds: int = 5,
    alphas: Sequence[float] = PROBE_ALPHAS,
) -> ProbeResult:
    """Blocked, nested cross-validation of linear probes from `features` to the upper-face `targets`.

    Each clip (`groups`) is cut into `folds` contiguous blocks; fold f tests on block f of every clip and trains on the
    rest, so neighbouring, nearly identical frames never sit on both sides. Each probe's ridge strength is chosen by
    an inner leave-one-block-out cross-validation on the training blocks only, so an R^2 near 0 means "nothing
    readable", not "a badly regularized probe".
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    g = np.asarray(groups)
    fold_of = np.zeros(len(x), dtype=np.int64)
    for clip in np.unique(g):
        idx = np.flatnonzero(g == clip)
        fold_of[idx] = np.minimum((np.arange(len(idx)) * folds) // max(len(idx), 1), folds - 1)
    pred = np.zeros_like(y)
    correct = np.zeros(y.shape[1])
    chance = np.zeros(y.shape[1])
    for f in range(folds):
        test, train = fold_of == f, fold_of != f
        if test.sum() == 0 or train.sum() < 2:
            continue
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
        pred[test] = _fit_predict(xtr, y[train], xte, fold_of[train], alphas)
        for c in range(y.shape[1]):
            edges = np.quantile(y[train, c], [1 / 3, 2 / 3])
            btr, bte = np.digitize(y[train, c], edges), np.digitize(y[test, c], edges)
            guess = _fit_predict(xtr, np.eye(3)[btr], xte, fold_of[train], alphas).argmax(1)
            correct[c] += (guess == bte).sum()
            chance[c] += (bte == np.bincount(btr, minlength=3).argmax()).sum()
    sst = ((y - y.mean(0)) ** 2).sum(0)
    r2 = np.where(sst > 1e-9, 1.0 - ((y - pred) ** 2).sum(0) / np.maximum(sst, 1e-9), 0.0)
    moving = sst > 1e-9
    return ProbeResult(
        r2_mean=float(r2[moving].mean()) if moving.any() else 0.0,
        r2_max=float(r2[moving].max()) if moving.any() else 0.0,
        binned_accuracy=float((correct[moving] / len(x)).mean()) if moving.any() else float("nan"),
        binned_chance=float((chance[moving] / len(x)).mean()) if moving.any() else float("nan"),
        channels=list(channel_names),
        r2_per_channel=[float(v) for v in r2],
        num_frames=int(len(x)),
    )


@dataclass
class EvaluationReport:
    """Everything the CLI prints and the checkpoint records."""

    heldout_clips: Optional[RetrievalResult]
    """Sync retrieval on whole clips not used for training, as recorded (the headline number)."""
    eval_split: Optional[RetrievalResult]
    """Sync retrieval on the eval split of the training clips."""
    offsets: List[OffsetResult]
    probe: Optional[ProbeResult]
    heldout_calibrated: Optional[RetrievalResult] = None
    """Held-out retrieval after removing each clip's own audio/video offset (one scalar per clip, estimated by the
    model on that clip: see `clip_offsets`)."""
    clip_offsets: Dict[str, int] = field(default_factory=dict)
    """Held-out clips' own audio/video offsets as the model estimates them (frames; 0 = in sync as recorded)."""
    probe_audio_input: Optional[ProbeResult] = None
    """Reference: the same probe on the raw front-end windows (mean and spread over time of each channel): how much
    upper-face information the audio itself carries, before any encoder."""

    def to_dict(self) -> Dict[str, object]:
        return {
            "heldout_clips": self.heldout_clips.to_dict() if self.heldout_clips else None,
            "heldout_calibrated": self.heldout_calibrated.to_dict() if self.heldout_calibrated else None,
            "heldout_clip_offsets": dict(self.clip_offsets),
            "eval_split": self.eval_split.to_dict() if self.eval_split else None,
            "offsets": [
                {
                    "clip": o.clip,
                    "true": o.true_offset,
                    "estimated": o.estimated_offset,
                    "clip_offset": o.clip_offset,
                    "error": o.error,
                    "relative_error": o.relative_error,
                }
                for o in self.offsets
            ],
            "offset_max_error": max((o.error for o in self.offsets), default=None),
            "offset_max_relative_error": max((o.relative_error for o in self.offsets), default=None),
            "probe": self.probe.to_dict() if self.probe else None,
            "probe_audio_input": self.probe_audio_input.to_dict() if self.probe_audio_input else None,
        }


def evaluate(
    audio: AudioEncoder,
    mouth: MouthEncoder,
    spec: FrontEndSpec,
    train_corpus: Optional[SyncCorpus],
    heldout_corpus: Optional[SyncCorpus],
    heldout_clips: Sequence[ProcessedClip] = (),
    shifts: Sequence[int] = (-6, -3, 0, 3, 6),
    max_offset: int = 15,
) -> EvaluationReport:
    """Retrieval on held-out clips and on the training clips' eval split, offset estimation on the held-out clips,
    and the upper-face probe on the held-out frames (held-out clips, or the eval split when there are none)."""
    split_result, held_result, calibrated, clip_offsets, offsets, probe, probe_input = None, None, None, {}, [], None, None
    if train_corpus is not None:
        emb = embed_corpus(audio, mouth, train_corpus)
        anchors = train_corpus.eval_split_anchors(max_offset)
        if anchors.numel():
            split_result = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, anchors, max_offset)
    if heldout_corpus is not None:
        emb = embed_corpus(audio, mouth, heldout_corpus)
        anchors = heldout_corpus.whole_clip_anchors(max_offset)
        held_result = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, anchors, max_offset)
        for entry, clip in zip(heldout_corpus.entries, heldout_clips):
            frames = slice(entry.start, entry.start + entry.num_frames)
            if entry.num_frames > 2 * max_offset + 1:
                offsets += offset_estimation(audio, mouth, spec, clip, emb.mouth_embeddings[frames], shifts, max_offset)
        own = estimate_clip_offsets(emb, heldout_corpus, max_offset, split="all")
        clip_offsets = {e.name: int(o) for e, o in zip(heldout_corpus.entries, own)}
        shift = _keep_inside(anchors, own[heldout_corpus.clip_index[anchors]], heldout_corpus)
        calibrated = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, anchors, max_offset, shift)
        probe = upper_face_probe(
            emb.audio_features.numpy(), heldout_corpus.upper.numpy(), heldout_corpus.clip_index.numpy(), heldout_corpus.upper_names
        )
        windows = heldout_corpus.audio[0]
        raw = torch.cat([windows.mean(dim=1), windows.std(dim=1)], dim=1).numpy()
        probe_input = upper_face_probe(
            raw, heldout_corpus.upper.numpy(), heldout_corpus.clip_index.numpy(), heldout_corpus.upper_names
        )
    elif train_corpus is not None:
        emb = embed_corpus(audio, mouth, train_corpus)
        frames = torch.cat([train_corpus.local(e, e.eval_frames) for e in train_corpus.entries])
        if frames.numel() >= 30:
            probe = upper_face_probe(
                emb.audio_features[frames].numpy(),
                train_corpus.upper[frames].numpy(),
                train_corpus.clip_index[frames].numpy(),
                train_corpus.upper_names,
            )
    return EvaluationReport(held_result, split_result, offsets, probe, calibrated, clip_offsets, probe_input)


def _keep_inside(anchors: Int[Tensor, "n"], shift: Int[Tensor, "n"], corpus: SyncCorpus) -> Int[Tensor, "n"]:
    """Clamp anchor + shift to the anchor's clip (the audio of a frame past the end is the last frame's)."""
    clip = corpus.clip_index[anchors]
    index = torch.maximum(torch.minimum(anchors + shift, corpus.clip_last[clip]), corpus.clip_start[clip])
    return index - anchors
