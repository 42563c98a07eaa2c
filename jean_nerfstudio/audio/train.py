"""Training of the lip-aligned audio encoder (JEAN stage 1), on one process or many (torchrun + DDP).

One step: a batch of anchor frames from many clips (speakers). For each anchor, its audio window (clean or a noisy
copy, then a random mel-axis stretch and frequency mask) goes through the audio tower; the mouth windows of the same
clip at every offset -R..R go through the mouth tower. Losses:
  * InfoNCE audio -> mouth over those 2R+1 offsets (hard negatives: teaches sync) and the other anchors' true mouth
    windows (other speakers and moments: teaches content);
  * InfoNCE mouth -> audio over the batch (the CLIP direction);
  * upper-face disentanglement of the audio feature (brows, eyes, blinks): a batch dependence penalty (linear
    cross-correlation + kernel CKA; default) or an adversary behind a gradient reversal (see DisentangleConfig).

Under `torchrun` every process trains on its DistributedSampler share of the anchors; DDP averages the gradients, so
all ranks hold identical weights after every step (checked at the end: each rank's weight checksum goes into the
checkpoint). Rank 0 alone evaluates and writes the checkpoint, atomically.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from jean_nerfstudio.audio.checkpoint import save_checkpoint
from jean_nerfstudio.audio.data import (
    AugmentSettings,
    MouthFeatureSettings,
    SyncCorpus,
    augment_windows,
    build_corpus,
    choose_sources,
    open_clips,
)
from jean_nerfstudio.audio.encoder import AudioEncoder, MouthEncoder, SyncModelConfig, UpperFaceAdversary
from jean_nerfstudio.audio.evaluate import EvaluationReport, embed_corpus, estimate_clip_offsets, evaluate, sync_retrieval
from jean_nerfstudio.audio.frontend import FrontEndSpec, resolve_frontend
from jean_nerfstudio.audio.losses import (
    ramp_schedule,
    cross_correlation_penalty,
    grad_reverse,
    kernel_dependence,
    symmetric_info_nce,
    sync_info_nce,
)
from jean_nerfstudio.contract import DatasetError
from jean_nerfstudio.errors import UserError


@dataclass
class AudioTrainConfig:
    """`jean-train-audio`: train the lip-aligned audio encoder on processed clips of one or more speakers."""

    datasets: List[Path] = field(default_factory=list)
    """Processed clip folders to train on (`jean-process` outputs; ideally many speakers)."""
    output: Path = Path("audio_encoder.ckpt")
    """Where the checkpoint goes (written atomically)."""
    eval_datasets: List[Path] = field(default_factory=list)
    """Whole clips held out from training: sync retrieval, offset estimation and the upper-face probe run on them."""
    max_steps: int = 1200
    """Optimizer steps."""
    batch_size: int = 64
    """Anchor frames per step and process (each brings 2 * max_offset + 1 mouth windows)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 5%)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    temperature: float = 0.07
    """InfoNCE softmax temperature."""
    symmetric_weight: float = 0.5
    """Weight of the mouth -> audio InfoNCE term."""
    regression_weight: float = 1.0
    """Weight of predicting the true mouth window from the audio feature (MSE, normalized mouth features); 0: off."""
    max_offset: int = 15
    """Hard negatives at every offset in [-max_offset, max_offset] frames (also the retrieval task's range)."""
    frontend: FrontEndSpec = field(default_factory=FrontEndSpec)
    """Audio front end: log-mel (default) or a frozen wav2vec2/hubert backbone."""
    model: SyncModelConfig = field(default_factory=SyncModelConfig)
    """Tower sizes and the upper-face disentanglement."""
    mouth_features: MouthFeatureSettings = field(default_factory=MouthFeatureSettings)
    """How mouth motion is described."""
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    """Audio augmentation."""
    clean_audio_only: bool = False
    """Train on clean audio only."""
    offset_shifts: Tuple[int, ...] = (-6, -3, 0, 3, 6)
    """Audio shifts (frames) of the offset-estimation check on held-out clips."""
    eval_every: int = 0
    """Log held-out retrieval every this many steps (0: only at the end). Logging only: nothing is selected by it."""
    seed: int = 0
    """Seed of weights, sampling and augmentation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (one GPU per process under torchrun)."""
    threads: Optional[int] = None
    """CPU threads per process (default: torch's choice, divided among local torchrun processes)."""


@dataclass
class TrainResult:
    checkpoint: Path
    report: EvaluationReport
    train_seconds: float
    total_seconds: float
    steps: int
    world_size: int
    final_loss: float
    rank_checksums: List[str]


class SyncModel(nn.Module):
    """Both towers (and the adversary, if that is the disentanglement method) in one module, as DDP wraps it:
    forward returns the losses."""

    def __init__(
        self,
        audio: AudioEncoder,
        mouth: MouthEncoder,
        disentangle: str,
        adversary: Optional[UpperFaceAdversary] = None,
        regression: bool = False,
    ) -> None:
        super().__init__()
        self.audio = audio
        self.mouth = mouth
        # Audio feature -> the true mouth window (normalized): dense supervision that a small corpus can generalize from,
        # where the contrastive loss alone memorizes. Training only; not saved.
        self.mouth_head = (
            nn.Linear(audio.output_dim, mouth.config.window * mouth.config.in_features) if regression else None
        )
        self.disentangle = disentangle
        self.adversary = adversary
        # Moving average of the feature/upper-face correlation (decorrelation methods); set on the first batch.
        self.running_correlation: Optional[Tensor] = None

    def forward(
        self,
        audio_windows: Tensor,  # [B, W, C]
        mouth_windows: Tensor,  # [B, K, T, F]
        upper: Tensor,  # [B, U]
        valid: Tensor,  # [B, B] bool
        positive_index: int,
        temperature: float,
        symmetric_weight: float,
        disentangle_weight: float,
        regression_weight: float = 0.0,
    ) -> Dict[str, Tensor]:
        features = self.audio(audio_windows)  # [B, D]
        audio_emb = self.audio.project(features)  # [B, E]
        mouth_emb = self.mouth(mouth_windows)  # [B, K, E]
        nce = sync_info_nce(audio_emb, mouth_emb, positive_index, temperature, valid)
        sym = symmetric_info_nce(audio_emb, mouth_emb[:, positive_index], temperature, valid)
        losses = {"nce": nce, "symmetric": sym}
        total = nce + symmetric_weight * sym
        if self.mouth_head is not None:
            target = (mouth_windows[:, positive_index] / self.mouth.feature_scale).flatten(1)
            regression = torch.nn.functional.mse_loss(self.mouth_head(features), target)
            losses["regression"] = regression
            total = total + regression_weight * regression
        if self.disentangle == "adversary" and self.adversary is not None:
            prediction = self.adversary(grad_reverse(features, disentangle_weight))
            adv = torch.nn.functional.mse_loss(prediction, upper)
            losses["adversary"] = adv
            total = total + adv
        elif self.disentangle in ("decorrelation", "hsic"):
            corr, self.running_correlation = cross_correlation_penalty(features, upper, self.running_correlation)
            losses["decorrelation"] = corr
            total = total + disentangle_weight * corr
            if self.disentangle == "hsic":
                cka = kernel_dependence(features, upper)
                losses["kernel_cka"] = cka
                total = total + disentangle_weight * cka
        losses["loss"] = total
        return losses


class _Anchors(Dataset):
    def __init__(self, anchors: Tensor) -> None:
        self.anchors = anchors

    def __len__(self) -> int:
        return int(self.anchors.numel())

    def __getitem__(self, index: int) -> Tensor:
        return self.anchors[index]


# ---------------------------------------------------------------------------------------------------------------------
# Distributed set-up
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device_choice: str) -> DistContext:
    """Join the process group torchrun describes in the environment (nccl on CUDA, gloo on CPU)."""
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise TrainInputError("--device cuda, but CUDA is not available here; use --device cpu (or auto)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world <= 1:
        return DistContext(device=device)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, backend=backend, device=device)


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in name order (equal across ranks iff the weights are bit-identical)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TrainInputError(UserError, ValueError):
    """A training input or option that cannot work (unwritable output, ...). One-line message."""


def towers(model: SyncModel) -> nn.Module:
    """The two saved towers as one module (state-dict keys audio.*, mouth.*), e.g. for `weights_checksum`."""
    return nn.ModuleDict({"audio": model.audio, "mouth": model.mouth})


def check_output_writable(output: Path) -> None:
    """Refuse an output we could not write at the end of training (before spending the training time)."""
    output = Path(output)
    if output.is_dir():
        raise TrainInputError(f"{output}: is a directory; give a checkpoint file name such as {output / 'audio_encoder.ckpt'}")
    parent = output.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrainInputError(f"{output}: cannot write there ({existing} is not a writable folder); choose another --output")
    if output.exists() and not os.access(output, os.W_OK):
        raise TrainInputError(f"{output}: exists and is not writable; choose another --output")


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _clip_summary(corpus: SyncCorpus) -> List[Dict[str, Any]]:
    return [{"name": e.name, "path": str(e.root), "num_frames": e.num_frames, "fps": e.fps} for e in corpus.entries]


def prepare(config: AudioTrainConfig):
    """Validate the inputs (every rank, before any process group exists, so all fail alike) and open the clips."""
    if not config.datasets:
        raise DatasetError("no training datasets given; pass one or more `jean-process` output folders")
    check_output_writable(config.output)
    clips = open_clips(config.datasets)
    heldout = open_clips(config.eval_datasets)
    train_roots = {c.root.resolve() for c in clips}
    for clip in heldout:
        if clip.root.resolve() in train_roots:
            raise DatasetError(f"{clip.root}: is both a training and a held-out dataset; held-out clips must be unseen")
    fps = {round(c.fps, 6) for c in clips + heldout}
    if len(fps) > 1:
        raise DatasetError(f"datasets at different frame rates {sorted(fps)}; process them at one --fps")
    reach = config.max_offset + config.mouth_features.window // 2
    for clip in clips:
        inside = np.zeros(clip.num_frames, dtype=bool)
        inside[clip.train_indices] = True
        ok = any(inside[t - reach : t + reach + 1].all() for t in range(reach, clip.num_frames - reach))
        if not ok:
            need = (2 * reach + 1) / clip.fps
            raise DatasetError(
                f"{clip.root}: too short for the sync windows ({len(clip.train_indices)} train frames, needs "
                f"{2 * reach + 1} consecutive = {need:.1f} s); use a longer clip or a smaller --max-offset"
            )
    for clip in heldout:
        if clip.num_frames < 2 * config.max_offset + 1:
            raise DatasetError(
                f"{clip.root}: too short to evaluate ({clip.num_frames} frames, needs {2 * config.max_offset + 1})"
            )
    return clips, heldout


def train(
    config: AudioTrainConfig,
    progress: Optional[Callable[[int, int, Dict[str, float]], None]] = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train, evaluate and write the checkpoint. Returns the result on every rank (the report only on rank 0)."""
    start_total = time.perf_counter()
    clips, heldout = prepare(config)
    ctx = setup_distributed(config.device)
    try:
        return _train(config, clips, heldout, ctx, progress, log, start_total)
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(config, clips, heldout, ctx: DistContext, progress, log, start_total) -> TrainResult:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ctx.distributed and ctx.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    torch.manual_seed(config.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    spec = resolve_frontend(config.frontend)
    with_blend, upper_source = choose_sources(list(clips) + list(heldout), config.mouth_features)
    augment = None if config.clean_audio_only else config.augment
    corpus = build_corpus(clips, spec, config.mouth_features, with_blend, upper_source, augment, seed=config.seed + ctx.rank)
    held_corpus = (
        build_corpus(heldout, spec, config.mouth_features, with_blend, upper_source, None) if (heldout and ctx.is_main) else None
    )
    reach = config.max_offset + config.mouth_features.window // 2
    anchors = corpus.train_anchors(reach)

    audio_cfg = replace(config.model.audio, in_channels=int(spec.feature_dim), window=int(spec.window_frames))
    mouth_cfg = replace(
        config.model.mouth,
        in_features=config.mouth_features.feature_dim(with_blend),
        window=config.mouth_features.window,
        embed_dim=audio_cfg.embed_dim,
    )
    audio = AudioEncoder(audio_cfg)
    mouth = MouthEncoder(mouth_cfg)
    train_frames = torch.cat([corpus.local(e, e.train_frames) for e in corpus.entries])
    mouth.feature_scale.copy_(corpus.mouth[train_frames].std(dim=0).clamp_min(1e-4))
    method = config.model.disentangle.method
    adversary = (
        UpperFaceAdversary(audio_cfg.output_dim, corpus.upper.shape[1], config.model.disentangle.adversary_hidden)
        if method == "adversary"
        else None
    )
    model = SyncModel(audio, mouth, method, adversary, regression=config.regression_weight > 0).to(ctx.device)
    wrapped: nn.Module = model
    if ctx.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.warmup_steps, config.max_steps)
    )

    dataset = _Anchors(anchors)
    per_rank = len(dataset) // ctx.world_size
    batch_size = max(2, min(config.batch_size, per_rank))
    if batch_size < config.batch_size and ctx.is_main:
        log(f"note: only {per_rank} anchor frames per process; batch size {batch_size} instead of {config.batch_size}")
    sampler = (
        DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True)
        if ctx.distributed
        else RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed))
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    offsets = torch.arange(-config.max_offset, config.max_offset + 1)
    generator = torch.Generator().manual_seed(config.seed * 1000 + ctx.rank + 1)
    copies = corpus.audio.shape[0]

    if ctx.is_main:
        speakers = ", ".join(e.name for e in corpus.entries)
        log(
            f"training the audio encoder on {len(corpus.entries)} clips ({speakers}): {len(dataset)} anchor frames, "
            f"{spec.describe()}, {copies - 1} noisy copies, upper-face disentanglement {method} ({upper_source}), "
            f"world size {ctx.world_size} on {ctx.device}"
        )

    step, epoch = 0, 0
    last: Dict[str, float] = {}
    model.train()
    train_start = time.perf_counter()
    while step < config.max_steps:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        for frames in loader:
            if step >= config.max_steps:
                break
            copy_index = torch.randint(0, copies, frames.shape, generator=generator)
            audio_windows = corpus.audio_windows(frames, copy_index)
            if augment is not None:
                audio_windows = augment_windows(audio_windows, augment, generator, warp=spec.kind == "mel")
            mouth_windows = corpus.mouth_windows(frames, offsets)
            clip_of = corpus.clip_index[frames]
            valid = ~((clip_of[:, None] == clip_of[None, :]) & (frames[:, None] == frames[None, :]))
            weight = ramp_schedule(step / max(config.max_steps - 1, 1), config.model.disentangle.weight)
            losses = wrapped(
                audio_windows.to(ctx.device),
                mouth_windows.to(ctx.device),
                corpus.upper[frames].to(ctx.device),
                valid.to(ctx.device),
                config.max_offset,
                config.temperature,
                config.symmetric_weight,
                weight,
                config.regression_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            step += 1
            last = {k: float(v.detach()) for k, v in losses.items()}
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"training diverged at step {step} (loss {last['loss']}); lower --learning-rate")
            if progress is not None and ctx.is_main:
                progress(step, config.max_steps, last)
            if config.eval_every and step % config.eval_every == 0 and ctx.is_main:
                _log_retrieval(step, model, corpus, held_corpus, config.max_offset, log)
        epoch += 1
    train_seconds = time.perf_counter() - train_start

    # Every rank's checksum goes to rank 0: identical weights are DDP's promise, and the checkpoint records the proof.
    checksum = weights_checksum(model)
    tower_checksum = weights_checksum(towers(model))
    checksums, tower_checksums = [checksum], [tower_checksum]
    if ctx.distributed:
        gathered: List[Optional[Tuple[str, str]]] = [None] * ctx.world_size
        dist.all_gather_object(gathered, (checksum, tower_checksum))
        checksums = [str(c[0]) for c in gathered]  # type: ignore[index]
        tower_checksums = [str(c[1]) for c in gathered]  # type: ignore[index]
    report = EvaluationReport(None, None, [], None)
    path = Path(config.output)
    if ctx.is_main:
        model.eval()
        report = evaluate(
            model.audio, model.mouth, spec, corpus, held_corpus, heldout, config.offset_shifts, config.max_offset
        )
        training = {
            "datasets": _clip_summary(corpus),
            "eval_datasets": _clip_summary(held_corpus) if held_corpus is not None else [],
            "settings": _plain(asdict(config)),
            "steps": step,
            "train_seconds": train_seconds,
            "batch_size_per_process": batch_size,
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "rank_weight_sha256": checksums,
            "rank_tower_sha256": tower_checksums,
            "final_losses": last,
            "upper_face_channels": corpus.upper_names,
        }
        save_checkpoint(
            path, spec, model.audio, model.mouth, config.mouth_features, with_blend, upper_source, training, _plain(report.to_dict())
        )
    if ctx.distributed:
        dist.barrier()
    return TrainResult(
        checkpoint=path,
        report=report,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start_total,
        steps=step,
        world_size=ctx.world_size,
        final_loss=last.get("loss", float("nan")),
        rank_checksums=checksums,
    )


def _log_retrieval(step, model: SyncModel, corpus, held_corpus, max_offset, log) -> None:
    model.eval()
    parts = []
    emb = embed_corpus(model.audio, model.mouth, corpus)
    split = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, corpus.eval_split_anchors(max_offset), max_offset)
    if split.num_anchors:
        parts.append(f"eval-split {split.accuracy:.1%} (+-1: {split.within_one:.1%})")
    if held_corpus is not None:
        emb = embed_corpus(model.audio, model.mouth, held_corpus)
        anchors = held_corpus.whole_clip_anchors(max_offset)
        held = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, anchors, max_offset)
        own = estimate_clip_offsets(emb, held_corpus, max_offset, split="all")
        shift = own[held_corpus.clip_index[anchors]]  # anchors sit max_offset inside their clip, |own| <= max_offset
        calibrated = sync_retrieval(emb.audio_embeddings, emb.mouth_embeddings, anchors, max_offset, shift)
        parts.append(
            f"held-out clips {held.accuracy:.1%} (+-1: {held.within_one:.1%}; own offsets "
            f"{own.tolist()} removed: {calibrated.accuracy:.1%}, +-1: {calibrated.within_one:.1%})"
        )
    log(f"step {step}: sync retrieval " + ", ".join(parts or ["(no held-out frames)"]))
    model.train()


def _plain(value: Any) -> Any:
    """Only plain types in checkpoints (weights_only loading): paths -> str, tuples -> lists, numpy -> python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value
