"""The JEAN model: an audio- and expression-conditioned head NeRF composited over a torso layer and a background plate.

Rendering a pixel:
    1. the ray's frame is known from its camera (`times`, or camera metadata supplied by a renderer);
    2. the frame's audio code (from its audio windows) and expression code (from its expression sequence) condition
       the head field through region attention; proposal sampling sees the same codes;
    3. the head's colour and opacity are alpha-composited over the image-space torso layer and the background plate,
       both looked up at the pixel the ray projects to in its frame's camera.

Conditioning is always per ray: nerfstudio batches mix rays of many frames, and `get_outputs_for_camera` gives every
ray camera index 0, so nothing here is keyed on camera indices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, UniformSampler
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn
from torch.nn import Parameter

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.source import build_audio_source
from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.expression.inputs import expression_inputs
from jean_nerfstudio.expression.objective import ridge_r2
from jean_nerfstudio.expression.source import build_expression_source
from jean_nerfstudio.fields.jean_field import ConditionedProposalField, JeanHeadField
from jean_nerfstudio.fields.torso_field import TorsoField
from jean_nerfstudio.metrics.image import psnr_tensor, ssim_tensor
from jean_nerfstudio.models.conditioning import AudioConditioner, ExpressionConditioner
from jean_nerfstudio.models.viewer_controls import JeanViewerControls, TrainingView


_OBJECTIVE_PREFIX = "expression_objective/"
"""Output keys of the expression objective's terms (computed in the forward pass, turned into losses after it)."""


@dataclass
class JeanModelConfig(ModelConfig):
    """Configuration of the JEAN talking-head model."""

    _target: Type = field(default_factory=lambda: JeanModel)
    """Target class to instantiate."""
    # ----- head field -----
    implementation: Literal["auto", "tcnn", "triton", "torch"] = "auto"
    """Hash grid backend of every grid (head, proposal, torso); all share one parameter layout, so checkpoints move
    between them. 'auto' on CUDA: tinycudann if its one-time subprocess self-check passed, else Triton, else torch;
    on a CPU: torch (see fields/grid_backends.py)."""
    num_levels: int = 16
    """Levels of the canonical head grid."""
    base_resolution: int = 16
    """Coarsest resolution of the head grid."""
    max_resolution: int = 1024
    """Finest resolution of the head grid (over the scene box)."""
    log2_hashmap_size: int = 19
    """log2 of the entries per level of the head grid."""
    coarse_levels: int = 6
    """Levels of the small grid that drives region attention and deformation."""
    hidden_dim: int = 64
    """Width of the head field's MLPs."""
    max_deformation: float = 0.15
    """Bound of the conditioned deformation, in scene units (1 unit = 10 cm by default)."""

    # ----- sampling -----
    num_proposal_samples_per_ray: Tuple[int, ...] = (96, 48)
    """Samples per ray for each proposal network."""
    num_nerf_samples_per_ray: int = 32
    """Samples per ray for the head field."""
    proposal_levels: Tuple[int, ...] = (5, 5)
    """Grid levels of each proposal network."""
    proposal_max_resolution: Tuple[int, ...] = (128, 256)
    """Finest grid resolution of each proposal network."""
    proposal_update_every: int = 5
    """Proposal networks are updated every this many steps after warm-up."""
    proposal_warmup: int = 2000
    """Steps over which the proposal update interval grows to `proposal_update_every`."""
    use_single_jitter: bool = True
    """One jitter per ray instead of per sample."""
    use_proposal_weight_anneal: bool = True
    """Anneal proposal weights before PDF sampling."""
    proposal_weights_anneal_slope: float = 10.0
    """Slope of the annealing."""
    proposal_weights_anneal_max_num_iters: int = 1000
    """Steps over which the annealing runs."""
    cpu_eval_num_rays_per_chunk: int = 512
    """On the CPU, render at most this many rays per chunk (0: `eval_num_rays_per_chunk` as is). Per ray, the hash
    grids' temporaries (8 corner indices and weights per level and sample) of a GPU-sized chunk outgrow the caches
    and the allocator's reuse: on a 2-core CPU 8192-ray chunks rendered 1.5-2x slower per ray than 1024-ray ones,
    and 512 was the fastest of 128-4096 (about 5% ahead of 1024; 128 and 2048 were 20-35% slower)."""

    # ----- conditioning -----
    audio_code_dim: int = 32
    """Size of the per-ray audio code."""
    expression_code_dim: int = 32
    """Size of the per-ray expression code."""
    audio_encoder_checkpoint: Optional[Path] = Path("shipped")
    """The stage-1 lip-aligned audio encoder: `shipped` (pre-trained on many speakers, in the package), a checkpoint
    of `jean-train-audio`, or `none` for a per-subject mel-window net trained here from this clip alone."""
    audio_encoder_mode: Literal["frozen", "finetune"] = "frozen"
    """Keep the stage-1 encoder frozen (keeps its lip alignment for unseen voices) or fine-tune it."""
    audio_smoothing_frames: int = 4
    """Each audio code attends over this many neighbouring frames on each side."""
    audio_mouth_loss_mult: float = 0.0
    """Weight of 1 - R^2 of a ridge readout, from the audio codes of random training frames, of their speech-driven
    mouth geometry (the clip's high-pass inner-lip gaps and mouth width); 0: off. The frozen stage-1 features predict
    that geometry on a speaker they never heard (cross-fitted R^2 0.21 on obama_2), but the head, left to the
    photometric loss, does not pick it up in a thousand steps. With 0.02 (and the expression jitter) silence moved the
    mouth less than speech (spread 0.022 vs 0.030) and LMD-mouth improved (2.51 vs 2.69 px), but the 3 s lip-sync
    number is inside its chance band and held-out mouth PSNR fell 0.3 dB: not yet a default (docs/benchmarks.md).
    No parameters: the readout is solved in closed form on each step's frames."""
    audio_mouth_frames: int = 256
    """Training frames (drawn at random each step) whose audio codes that readout is fitted on."""
    audio_through_mouth_geometry: bool = True
    """Route the audio through the speech-driven mouth geometry (the clip's high-pass inner-lip gaps and mouth width):
    the head is trained on each frame's measured geometry, and any audio (held-out frames, new speech, silence) reaches
    it through a ridge readout of that geometry from the frozen stage-1 features, fitted when the model is built
    (`models/conditioning.MouthReadout`). The learned audio path acts as a frame code that new speech does not move
    (obama_2: rendered opening vs unseen speech r 0.00 at lag +3, muted mouth moving as much); this one lip-syncs it
    (r 0.54 / 0.36 at lag 0, real video 0.44; docs/benchmarks.md). Applies with a frozen stage-1 audio encoder; a
    trainable one (`audio_encoder_checkpoint none`, or `audio_encoder_mode finetune`) uses the learned path."""
    mouth_geometry_predicted_fraction: float = 0.0
    """With `audio_through_mouth_geometry`, the share of training rays whose code is the readout's out-of-fold
    prediction of their frame's geometry rather than the measured one (0: measured only). Shown the prediction
    (obama_2, 1.0) the head kept held-out mouth PSNR but took the mouth from the expression code again: muted, the
    mouth moved as much as with speech, and sync fell to r 0.27 at lag -3 (docs/benchmarks.md). Kept for ablations."""
    mouth_geometry_restore_spread: bool = False
    """With `audio_through_mouth_geometry`, scale the readout so its predictions spread as much as the measured
    geometry (ridge shrinks them toward the mean where the audio is ambiguous). On: the mouth opens as far as the
    speaker's, but where the readout errs the head draws a wide, wrong mouth (obama_2: held-out mouth PSNR 1 dB
    lower); off: the expected geometry given the audio, the mouth still opening 1.5x more with speech than muted."""
    mouth_readout_prior: bool = True
    """With `audio_through_mouth_geometry`, shrink the clip's readout towards the audio checkpoint's corpus map (its
    features -> mouth geometry, fitted by `jean-pretrain` on every pre-training clip) instead of towards zero, as far
    as cross-validation on the clip says. On six clips of speakers outside pre-training the readout's lip-gap R^2
    was unchanged on clips of 20-30 s and rose on clips of 5-10 s (0.02 -> 0.12, -0.01 -> 0.20;
    `benchmarks/pooled_mouth_readout.py`). False: the clip's own map only, shrunk towards zero."""
    mouth_shape_components: int = 0
    """With `audio_through_mouth_geometry`, add this many principal components of the clip's high-pass lip landmark
    offsets (fitted on the training frames) to the geometry the head is trained on and the readout predicts from the
    audio (0: the three inner-lip gaps and the mouth width only). Those four columns are most of a small mouth's speech
    motion but not of a wide one's (obama_2: rendered from its measured four columns alone, with the expression code
    kept off the mouth, the head's mouth was 1.7 dB below the default's); the rest then comes from the expression code,
    which new speech does not move (see `mouth_expression_shuffle_fraction`). Off: with 4 and the batch-wide shuffle,
    obama_2's held-out mouth still fell 1.1 dB (its third component, a fifth of its lip motion, is one the audio does
    not predict); kept for ablations (docs/benchmarks.md)."""
    expression_encoder: Literal["transformer", "mlp"] = "transformer"
    """'transformer': long-window transformer disentangled from speech; 'mlp': per-frame MLP of non-speech channels."""
    expression_encoder_checkpoint: Optional[Path] = Path("shipped")
    """The pre-trained transformer expression encoder: `shipped` (in the package; a clip of another landmark layout
    falls back to training from scratch), a checkpoint of `jean-train-expression`, or `none` to train it here from
    scratch, end to end."""
    expression_encoder_mode: Literal["frozen", "finetune"] = "frozen"
    """Freeze the pre-trained expression encoder or fine-tune it with the head (and its objective). Fine-tuned end to
    end, the encoder whose pre-training removed the mouth (probe leak R^2 +0.02) re-learns it from the photometric
    loss, and the looped expression sequence then drives the mouth of a head rendered from new speech; frozen, the
    mouth follows the audio (obama_2, with the mouth-geometry audio path: Chinese r 0.54 vs 0.38 fine-tuned, muted
    mouth 0.030 vs 0.034 spread) at equal held-out quality (docs/benchmarks.md)."""
    expression_objective_mult: float = 0.1
    """Weight of the expression encoder's self-supervised disentanglement objective while it trains with the head."""
    expression_objective_every: int = 4
    """Evaluate that objective every this many steps (it encodes the whole clip; the codes change slowly)."""
    expression_jitter_seconds: float = 0.0
    """In training, each ray's expression code is that of a random frame up to this far from its own (0: off), so
    the code cannot act as a frame index that memorizes each frame's mouth. Off by default: on obama_2 (1,000 steps)
    0.12 s did not make silence stop moving the mouth (opening spread 0.016 vs 0.018 with speech) and cost 0.6 dB of
    held-out PSNR; the viewer test's 120-step head then also let muting change the upper face more than the mouth.
    Kept for ablations (docs/benchmarks.md)."""
    mouth_expression_shuffle_fraction: float = 0.0
    """In training, this share of the mouth region's rays take the expression code of another random frame of their
    batch (the rest of the face keeps its own; 0: off). The head then cannot draw a frame's mouth from its expression
    code, which acts as a frame index even when the encoder leaves the mouth out, and must take it from the audio;
    otherwise the clip's looped expression sequence moves the mouth of a head driven by new speech, out of step with
    it. The mouth region then also ignores another clip's expressions (expression transfer). Off: at 1.0 (1,000
    steps) the german head followed new French speech at r 0.43 instead of 0.27 (0.77x the real video), but held-out
    mouth PSNR fell 0.3 dB, and on obama_2 it fell 1.2 dB and sync was lost (French -0.09 vs 0.39): four geometry
    columns do not describe that speaker's mouth, whose remaining shape the expression code carried
    (docs/benchmarks.md). Kept for ablations."""
    mouth_expression_shuffle_seconds: float = 0.0
    """With `mouth_expression_shuffle_fraction`, the shuffled mouth rays take the code of a random frame at most this
    many seconds from their own instead of any frame of the batch (0). Speech moves the mouth at 3-8 Hz and expressions
    slowly: a code from up to half a second away still says how the mouth is held (a smile, a frown), but no longer
    which syllable it is on, so the head keeps the expression on the mouth and must take the syllable from the audio.
    Off: at 0.5 (with 4 `mouth_shape_components`, 1,000 steps) obama_2 kept its held-out mouth on two seeds while
    muting the track moved its mouth a quarter less, but german's French sync fell on both of its seeds and obama_3
    lost 0.5 dB of mouth and sync on all three tracks; without the components it cost 0.35-0.40 dB of mouth on
    obama_2 and german (docs/benchmarks.md)."""
    # ----- torso -----
    torso_levels: int = 12
    """Levels of the 2D torso grid."""
    torso_max_resolution: int = 1024
    """Finest resolution of the torso grid (over the image)."""

    # ----- losses -----
    mouth_rgb_weight: float = 4.0
    """Extra photometric weight on mouth-region pixels (mouth detail is what lip sync is judged on)."""
    head_mask_loss_mult: float = 0.05
    """Head opacity vs the head mask."""
    torso_mask_loss_mult: float = 0.05
    """Torso opacity vs the torso mask where the head does not cover it."""
    interlevel_loss_mult: float = 1.0
    """Proposal loss."""
    distortion_loss_mult: float = 0.002
    """Distortion loss (compact weights along rays)."""
    deformation_loss_mult: float = 1.0
    """Keeps the conditioned deformation small (mean squared offset, in scene units)."""
    audio_attention_loss_mult: float = 0.01
    """Penalizes audio attention on head pixels outside the mouth region (audio acts on the mouth)."""
    expression_mouth_attention_loss_mult: float = 0.0
    """Penalizes expression attention on mouth-region pixels (the mirror of the audio term). Off: at 0.01 it froze the
    mouth altogether on obama_2 (rendered opening spread 0.008 against 0.031 without it, docs/benchmarks.md), since
    the audio did not take over what the expression code gave up; kept for ablations."""


class JeanModel(Model):
    """The JEAN talking-head model (see module docstring)."""

    config: JeanModelConfig

    # ------------------------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------------------------
    def populate_modules(self) -> None:
        # (The base class would add a near/far collider; rays are clipped to the dataset's head box instead, below.)
        clip = (self.kwargs.get("metadata") or {}).get(C.DATAPARSER_CLIP)
        if not isinstance(clip, ProcessedClip):
            raise ValueError(f"JeanModel needs the `jean-data` dataparser (metadata {C.DATAPARSER_CLIP!r} missing).")
        self.clip = clip
        self.num_frames = clip.num_frames
        self.fps = clip.fps

        # Frame-indexed tensors of the training clip (recomputed from the dataset at load, so not in checkpoints).
        c2w = torch.from_numpy(clip.camera_to_worlds())  # [N, 3, 4]
        self.register_buffer("clip_camera_to_worlds", c2w, persistent=False)
        camera = clip.intrinsics
        self.register_buffer("intrinsics", torch.tensor([camera.fx, camera.fy, camera.cx, camera.cy]), persistent=False)
        self.image_width, self.image_height = camera.width, camera.height
        background = torch.from_numpy(clip.background()).permute(2, 0, 1).contiguous()  # [3, H, W]
        self.register_buffer("background", background, persistent=False)
        pose_features = head_pose_features(c2w)
        self.register_buffer("pose_mean", pose_features.mean(0), persistent=False)
        self.register_buffer("pose_std", pose_features.std(0).clamp_min(1e-3), persistent=False)

        # ----- the two sources: audio/ and expression/ build them, the conditioners hold them -----
        audio = build_audio_source(clip, self.config.audio_encoder_checkpoint)
        # A per-subject encoder learns here; a stage-1 encoder stays frozen unless asked to fine-tune.
        train_audio_encoder = (not audio.pretrained) or self.config.audio_encoder_mode == "finetune"
        # The mouth-geometry path reads fixed features; a trainable encoder has none, and takes the learned path.
        through_mouth_geometry = self.config.audio_through_mouth_geometry and not train_audio_encoder
        mouth_geometry, mouth_columns = (
            speech_mouth_geometry_columns(clip, self.config.mouth_shape_components) if through_mouth_geometry
            else (None, None)
        )
        self.audio = AudioConditioner(
            audio,
            code_dim=self.config.audio_code_dim,
            smoothing_frames=self.config.audio_smoothing_frames,
            train_encoder=train_audio_encoder,
            mouth_targets=mouth_geometry,
            train_frames=torch.as_tensor(clip.train_indices, dtype=torch.long),
            predicted_fraction=self.config.mouth_geometry_predicted_fraction,
            restore_mouth_spread=self.config.mouth_geometry_restore_spread,
            mouth_columns=mouth_columns,
            use_mouth_prior=self.config.mouth_readout_prior,
        )

        # The speech-driven mouth shape of every frame, which the audio code must be able to read out (see
        # `audio_mouth_loss_mult`). Only when that term is on: it rebuilds the clip's whole expression inputs, which
        # every load (render, export, viewer) would otherwise pay for nothing.
        if self.config.audio_mouth_loss_mult > 0:
            self.register_buffer("mouth_targets", speech_mouth_geometry(clip), persistent=False)
            self.register_buffer(
                "mouth_readout_frames", torch.as_tensor(clip.train_indices, dtype=torch.long), persistent=False
            )

        expression = build_expression_source(
            clip,
            kind=self.config.expression_encoder,
            checkpoint=self.config.expression_encoder_checkpoint,
        )
        train_expression = expression.trainable or self.config.expression_encoder_mode == "finetune"
        self.expression = ExpressionConditioner(
            expression,
            code_dim=self.config.expression_code_dim,
            train_encoder=train_expression,
        )
        # A model attribute (not the conditioner's): its parameters are `expression_objective.*` in every checkpoint.
        self.expression_objective = expression.objective if train_expression else None

        # ----- fields -----
        aabb = self.scene_box.aabb
        self.field = JeanHeadField(
            aabb,
            audio_dim=self.config.audio_code_dim,
            expression_dim=self.config.expression_code_dim,
            num_levels=self.config.num_levels,
            log2_hashmap_size=self.config.log2_hashmap_size,
            base_resolution=self.config.base_resolution,
            max_resolution=self.config.max_resolution,
            coarse_levels=self.config.coarse_levels,
            hidden_dim=self.config.hidden_dim,
            max_offset=self.config.max_deformation,
            implementation=self.config.implementation,
        )
        cond_dim = self.config.audio_code_dim + self.config.expression_code_dim
        self.proposal_networks = nn.ModuleList(
            [
                ConditionedProposalField(
                    aabb,
                    cond_dim=cond_dim,
                    num_levels=self.config.proposal_levels[min(i, len(self.config.proposal_levels) - 1)],
                    max_resolution=self.config.proposal_max_resolution[
                        min(i, len(self.config.proposal_max_resolution) - 1)
                    ],
                    implementation=self.config.implementation,
                )
                for i in range(len(self.config.num_proposal_samples_per_ray))
            ]
        )
        self.torso = TorsoField(
            num_levels=self.config.torso_levels,
            max_resolution=self.config.torso_max_resolution,
            implementation=self.config.implementation,
        )

        def update_schedule(step: int) -> float:
            return float(
                np.clip(np.interp(step, [0, self.config.proposal_warmup], [0, self.config.proposal_update_every]), 1,
                        self.config.proposal_update_every)
            )

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=self.config.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=self.config.num_proposal_samples_per_ray,
            num_proposal_network_iterations=len(self.config.num_proposal_samples_per_ray),
            single_jitter=self.config.use_single_jitter,
            update_sched=update_schedule,
            initial_sampler=UniformSampler(single_jitter=self.config.use_single_jitter),
        )
        self.collider = AABBBoxCollider(self.scene_box, near_plane=0.0)
        self.step = 0

        self.viewer_controls = JeanViewerControls(
            num_frames=self.num_frames,
            edit_names=self.expression.control_names,
            training_view=TrainingView(
                camera_to_worlds=c2w.double(),
                look_at=self.scene_box.aabb.double().mean(0),
                fy=camera.fy,
                image_height=self.image_height,
            ),
        )

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        trainable = lambda module: [p for p in module.parameters() if p.requires_grad]  # noqa: E731
        groups = {
            "fields": trainable(self.field) + trainable(self.torso),
            "proposal_networks": trainable(self.proposal_networks),
            "conditioning": trainable(self.audio) + trainable(self.expression),
        }
        if self.expression_objective is not None:
            groups["conditioning"] += trainable(self.expression_objective)
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = []

        def set_step(step: int) -> None:
            self.step = step
            if self.config.use_proposal_weight_anneal:
                frac = np.clip(step / self.config.proposal_weights_anneal_max_num_iters, 0, 1)
                slope = self.config.proposal_weights_anneal_slope
                self.proposal_sampler.set_anneal(slope * frac / ((slope - 1) * frac + 1))

        callbacks.append(
            TrainingCallback(where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], update_every_num_iters=1, func=set_step)
        )
        callbacks.append(
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.proposal_sampler.step_cb,
            )
        )
        return callbacks

    # ------------------------------------------------------------------------------------------------------------------
    # per-ray conditioning
    # ------------------------------------------------------------------------------------------------------------------
    def ray_frame_indices(self, ray_bundle: RayBundle) -> Int[Tensor, "rays"]:
        """Each ray's frame of the training clip: from camera metadata if a renderer set it, else from `times`."""
        metadata = ray_bundle.metadata or {}
        num_rays = ray_bundle.origins.shape[0]
        if C.META_FRAME_INDEX in metadata:
            index = metadata[C.META_FRAME_INDEX].reshape(num_rays, -1)[:, 0]
            return index.round().long().clamp(0, self.num_frames - 1)
        if ray_bundle.times is not None:
            return C.time_to_frame(ray_bundle.times.reshape(num_rays, -1)[:, 0], self.num_frames)
        return torch.zeros(num_rays, dtype=torch.long, device=ray_bundle.origins.device)

    def audio_codes_for_frames(self, frames: Int[Tensor, "n"]) -> Float[Tensor, "n code"]:
        """Audio codes of training-clip frames."""
        return self.audio.frame_codes(frames)

    def expression_codes_for_frames(self, frames: Int[Tensor, "n"]) -> Float[Tensor, "n code"]:
        """Expression codes of training-clip frames."""
        return self.expression.frame_codes(frames)

    def ray_conditioning(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """Audio code, expression code, head-pose features and normalized pixel position of every ray."""
        num_rays = ray_bundle.origins.shape[0]
        metadata = ray_bundle.metadata or {}
        frames = self.ray_frame_indices(ray_bundle)
        needs_frame_codes = C.META_AUDIO_CODE not in metadata or C.META_EXPRESSION_CODE not in metadata
        if needs_frame_codes:
            unique, inverse = torch.unique(frames, return_inverse=True)
        if C.META_AUDIO_CODE in metadata:
            audio = metadata[C.META_AUDIO_CODE].reshape(num_rays, -1).float()
        else:
            audio = self.audio_codes_for_frames(unique)[inverse]
        if C.META_EXPRESSION_CODE in metadata:
            expression = metadata[C.META_EXPRESSION_CODE].reshape(num_rays, -1).float()
        else:
            shown, shown_inverse = unique, inverse  # the frames whose expression each ray sees
            if self.training and self.config.expression_jitter_seconds > 0:
                max_offset = round(self.config.expression_jitter_seconds * self.fps)
                shown, shown_inverse = torch.unique(jitter_frames(frames, max_offset, self.num_frames), return_inverse=True)
            shown_codes = self.expression_codes_for_frames(shown)
            expression = shown_codes[shown_inverse]
            share = self.config.mouth_expression_shuffle_fraction
            if self.training and share > 0 and C.META_MOUTH_RAY in metadata:
                mouth = metadata[C.META_MOUTH_RAY].reshape(num_rays) > 0.5
                chosen = mouth & (torch.rand(num_rays, device=mouth.device) < share)
                seconds = self.config.mouth_expression_shuffle_seconds
                if seconds > 0:  # a frame near the ray's own: the mouth's slow posture stays, its speech motion goes
                    near = jitter_frames(frames[chosen], max(1, round(seconds * self.fps)), self.num_frames)
                    near_unique, near_inverse = torch.unique(near, return_inverse=True)
                    expression = expression.clone()
                    expression[chosen] = self.expression_codes_for_frames(near_unique)[near_inverse]
                else:
                    expression = shuffled_on(chosen, expression, shown_codes)
        if C.META_POSE in metadata:
            c2w = metadata[C.META_POSE].reshape(num_rays, 3, 4).float()
        else:
            c2w = self.clip_camera_to_worlds[frames]
        pose = (head_pose_features(c2w) - self.pose_mean) / self.pose_std
        uv = project_directions(ray_bundle.directions, c2w, self.intrinsics, self.image_width, self.image_height)
        return {"audio": audio, "expression": expression, "pose": pose, "uv": uv, "frames": frames}

    # ------------------------------------------------------------------------------------------------------------------
    # rendering
    # ------------------------------------------------------------------------------------------------------------------
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor | List]:
        cond = self.ray_conditioning(ray_bundle)
        audio, expression = cond["audio"], cond["expression"]
        proposal_cond = torch.cat([audio, expression], dim=-1).detach()
        density_fns = [functools.partial(net.density_fn, cond=proposal_cond) for net in self.proposal_networks]
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(ray_bundle, density_fns=density_fns)

        positions = ray_samples.frustums.get_positions()  # [R, S, 3]
        field_out = self.field(
            positions,
            ray_samples.frustums.directions,
            audio[:, None, :],  # per ray: the field broadcasts them over the samples
            expression[:, None, :],
        )
        weights = ray_samples.get_weights(field_out["density"])  # [R, S, 1]
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)

        head_rgb = (weights * field_out["rgb"]).sum(dim=-2)
        accumulation = weights.sum(dim=-2).clamp(0.0, 1.0)
        midpoints = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
        depth = (weights * midpoints).sum(dim=-2) / accumulation.clamp_min(1e-6)

        torso_rgb, torso_alpha = self.torso(cond["uv"], cond["pose"])
        background = sample_image(self.background, cond["uv"])
        rgb = composite_layers(head_rgb, accumulation, torso_rgb, torso_alpha, background)

        safe_acc = accumulation.clamp_min(1e-6)
        outputs: Dict[str, Tensor | List] = {
            "rgb": rgb,
            "rgb_head": head_rgb + (1.0 - accumulation) * background,
            "accumulation": accumulation,
            "depth": depth,
            "torso_alpha": torso_alpha,
            "audio_attention": (weights * field_out["audio_attention"]).sum(-2) / safe_acc * (accumulation > 1e-3),
            "expression_attention": (weights * field_out["expression_attention"]).sum(-2) / safe_acc * (accumulation > 1e-3),
        }
        if self.training:
            outputs["weights_list"] = weights_list
            outputs["ray_samples_list"] = ray_samples_list
            outputs["deformation_sq"] = (weights.detach() * field_out["offset"].pow(2).sum(-1, keepdim=True)).sum(-2)
            outputs["audio_attention_raw"] = (weights.detach() * field_out["audio_attention"]).sum(-2)
            outputs["expression_attention_raw"] = (weights.detach() * field_out["expression_attention"]).sum(-2)
            # The expression objective runs here, inside the model's forward, and get_loss_dict only reads it: under
            # DistributedDataParallel, parameters used outside forward are marked ready twice (every rank failed on
            # step 0 with the transformer encoder when the objective ran in get_loss_dict). Only in a forward that
            # trains (grad enabled): a render of a model in training mode (the viewer during ns-train, the demo's
            # timing frame) goes through nerfstudio's chunked rendering, which cannot concatenate scalar terms.
            if torch.is_grad_enabled():
                outputs.update(self._expression_objective_terms())
                outputs.update(self._audio_mouth_terms())
        return outputs

    def _audio_mouth_terms(self) -> Dict[str, Tensor]:
        """R^2 of the closed-form ridge readout of the speech mouth shape from the audio codes of a random sample of
        training frames (a batch's own few frames are too few for a readout of a 32-d code)."""
        if self.config.audio_mouth_loss_mult <= 0:
            return {}
        pool = self.mouth_readout_frames
        count = min(pool.numel(), max(4 * self.config.audio_code_dim, self.config.audio_mouth_frames))
        if count < 2 * self.config.audio_code_dim:
            return {}  # a clip this short: any code would read out its few frames perfectly
        frames = pool[torch.randperm(pool.numel(), device=pool.device)[:count]]
        codes = self.audio_codes_for_frames(frames)
        targets = self.mouth_targets[frames]
        return {"audio_mouth_r2": ridge_r2(codes - codes.mean(0), targets - targets.mean(0), ridge=1e-2)}

    def _expression_objective_terms(self) -> Dict[str, Tensor]:
        """The expression encoder's self-supervised objective terms on the steps it runs (every few steps), else {}."""
        every = max(1, self.config.expression_objective_every)
        if self.expression_objective is None or self.config.expression_objective_mult <= 0 or self.step % every:
            return {}
        terms = self.expression_objective(self.expression.encoder, self.expression.inputs)
        return {f"{_OBJECTIVE_PREFIX}{name}": value for name, value in terms.items()}

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:
        """Render a camera. Its frame's codes are computed once here (or taken from the viewer controls when moved from
        their defaults) and carried in its metadata, instead of being re-encoded for every chunk of rays."""
        camera = self.viewer_controls.apply(camera, self.audio, self.expression)
        return super().get_outputs_for_camera(camera, obb_box=obb_box)

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """nerfstudio's chunked rendering, in CPU-sized chunks on the CPU (see `cpu_eval_num_rays_per_chunk`)."""
        configured = self.config.eval_num_rays_per_chunk
        cpu_chunk = self.config.cpu_eval_num_rays_per_chunk
        if self.device.type != "cpu" or cpu_chunk <= 0 or configured <= cpu_chunk:
            return super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        self.config.eval_num_rays_per_chunk = cpu_chunk
        try:
            return super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        finally:
            self.config.eval_num_rays_per_chunk = configured

    # ------------------------------------------------------------------------------------------------------------------
    # losses and metrics
    # ------------------------------------------------------------------------------------------------------------------
    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(self.device)[..., :3]
        metrics = {"psnr": psnr_tensor(outputs["rgb"], image)}
        labels = batch_labels(batch, self.device)
        if labels is not None:
            mouth = labels == C.LABEL_MOUTH
            if mouth.any():
                metrics["psnr_mouth"] = psnr_tensor(outputs["rgb"][mouth], image[mouth])
        if self.training:
            metrics["distortion"] = distortion_loss(outputs["weights_list"], outputs["ray_samples_list"])
        return metrics

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(self.device)[..., :3]
        labels = batch_labels(batch, self.device)
        rgb = outputs["rgb"]
        per_ray = (rgb - image).pow(2).mean(dim=-1)
        losses: Dict[str, Tensor] = {}
        if labels is None:
            losses["rgb_loss"] = per_ray.mean()
        else:
            mouth = (labels == C.LABEL_MOUTH).float()
            head = ((labels == C.LABEL_HEAD) | (labels == C.LABEL_MOUTH)).float()
            torso = (labels == C.LABEL_TORSO).float()
            weight = 1.0 + self.config.mouth_rgb_weight * mouth
            losses["rgb_loss"] = (weight * per_ray).sum() / weight.sum()
            acc = outputs["accumulation"][:, 0]
            losses["head_mask_loss"] = self.config.head_mask_loss_mult * (acc - head).pow(2).mean()
            torso_alpha = outputs["torso_alpha"][:, 0]
            not_head = 1.0 - head
            losses["torso_mask_loss"] = self.config.torso_mask_loss_mult * (
                ((torso_alpha - torso).pow(2) * not_head).sum() / not_head.sum().clamp_min(1.0)
            )
            if self.training:
                off_mouth = head * (1.0 - mouth)
                losses["audio_attention_loss"] = self.config.audio_attention_loss_mult * (
                    (outputs["audio_attention_raw"][:, 0] * off_mouth).sum() / off_mouth.sum().clamp_min(1.0)
                )
                losses["expression_mouth_attention_loss"] = self.config.expression_mouth_attention_loss_mult * (
                    (outputs["expression_attention_raw"][:, 0] * mouth).sum() / mouth.sum().clamp_min(1.0)
                )
        if self.training:
            losses["interlevel_loss"] = self.config.interlevel_loss_mult * interlevel_loss(
                outputs["weights_list"], outputs["ray_samples_list"]
            )
            assert metrics_dict is not None and "distortion" in metrics_dict
            losses["distortion_loss"] = self.config.distortion_loss_mult * metrics_dict["distortion"]
            losses["deformation_loss"] = self.config.deformation_loss_mult * outputs["deformation_sq"].mean()
            if "audio_mouth_r2" in outputs:  # computed in get_outputs, like the expression objective
                losses["audio_mouth_loss"] = self.config.audio_mouth_loss_mult * (1.0 - outputs["audio_mouth_r2"])
            for output_key, value in outputs.items():  # computed in get_outputs (see there for why)
                if output_key.startswith(_OBJECTIVE_PREFIX):
                    name = output_key[len(_OBJECTIVE_PREFIX):]
                    key = name if name.startswith("expression") else f"expression_{name}"
                    losses[key] = self.config.expression_objective_mult * value
        return losses

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        image = batch["image"].to(self.device)[..., :3]
        rgb = outputs["rgb"].clamp(0.0, 1.0)
        metrics = {"psnr": float(psnr_tensor(rgb, image)), "ssim": float(ssim_tensor(rgb, image))}
        labels = batch_labels(batch, self.device)
        if labels is not None:
            mouth = labels == C.LABEL_MOUTH
            if mouth.any():
                metrics["psnr_mouth"] = float(psnr_tensor(rgb[mouth], image[mouth]))
            head = (labels == C.LABEL_HEAD) | mouth
            if head.any():
                metrics["psnr_head"] = float(psnr_tensor(rgb[head], image[head]))
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "audio_attention": colormaps.apply_colormap(outputs["audio_attention"]),
        }
        return metrics, images


# ----------------------------------------------------------------------------------------------------------------------
# small pure functions (tested on their own)
# ----------------------------------------------------------------------------------------------------------------------
def head_pose_features(c2w: Float[Tensor, "*bs 3 4"]) -> Float[Tensor, "*bs 9"]:
    """Head pose (canonical head -> camera) as its first two rotation columns and translation."""
    rotation = c2w[..., :3, :3].transpose(-1, -2)  # world->camera rotation
    translation = -(rotation @ c2w[..., :3, 3:4])[..., 0]
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1], translation], dim=-1)


def speech_mouth_geometry(clip: ProcessedClip) -> Float[Tensor, "frames columns"]:
    """The clip's speech-driven mouth geometry per frame: the high-pass inner-lip gaps and mouth width of the
    expression inputs' leak targets (computed from landmarks, so every landmark layout has them). The blendshape and
    lip-landmark columns are left out: pooled over ~150 of them, tracking noise outweighs the mouth."""
    return speech_mouth_geometry_columns(clip)[0]


def speech_mouth_geometry_columns(
    clip: ProcessedClip, shape_components: int = 0
) -> Tuple[Float[Tensor, "frames columns"], List[str]]:
    """`speech_mouth_geometry` and the names of its columns; with `shape_components` K > 0, followed by the first K
    principal components of the high-pass lip landmark offsets (`mouth_shape_components`, named `hp:shape:k`)."""
    inputs = expression_inputs(clip)
    names = inputs.layout.speech_target_names
    columns = [i for i, name in enumerate(names) if name.startswith("hp:geom:")] or list(range(len(names)))
    geometry, geometry_names = inputs.speech_targets[:, columns].float(), [names[i] for i in columns]
    if shape_components <= 0:
        return geometry, geometry_names
    # The lip outline in the image plane; depth is mostly tracking noise (as in the expression inputs' landmark axes).
    lips = [i for i, name in enumerate(names) if name.startswith("hp:lm:lips_") and name.endswith((":x", ":y"))]
    if not lips:
        CONSOLE.print(
            f"{clip.root}: mouth_shape_components {shape_components} ignored: this clip's landmark layout has no lip "
            "outline; the mouth geometry keeps its lip gaps and width."
        )
        return geometry, geometry_names
    train = torch.as_tensor(clip.train_indices, dtype=torch.long)
    shape = mouth_shape_components(inputs.speech_targets[:, lips].float(), train, shape_components)
    return torch.cat([geometry, shape], dim=1), geometry_names + [f"hp:shape:{k}" for k in range(shape.shape[1])]


def mouth_shape_components(
    offsets: Float[Tensor, "frames coordinates"], train_frames: Int[Tensor, "n"], count: int
) -> Float[Tensor, "frames components"]:
    """Every frame's scores on the first `count` principal components of the lip landmark offsets of the training
    frames (fewer when the lips have fewer coordinates). Three lip gaps and the width leave out what else a speaking
    mouth does (rounding, spreading, asymmetry, the jaw's wide openings); the components name it in as few numbers as
    the clip allows. Each component's sign is fixed (its largest loading positive), so the same clip always gives the
    same columns."""
    train = offsets[train_frames].double()
    mean = train.mean(0)
    _, _, basis = torch.linalg.svd(train - mean, full_matrices=False)  # rows: components, by falling variance
    basis = basis[: min(count, basis.shape[0])]
    largest = basis.abs().argmax(dim=1)
    basis = basis * torch.sign(basis[torch.arange(basis.shape[0]), largest])[:, None]
    return ((offsets.double() - mean) @ basis.T).float()


def shuffled_on(
    rays: Bool[Tensor, "rays"], codes: Float[Tensor, "rays code"], choices: Float[Tensor, "options code"]
) -> Float[Tensor, "rays code"]:
    """`codes` with each of `rays` given a row of `choices` drawn uniformly at random (independently per ray)."""
    picks = torch.randint(0, choices.shape[0], (int(rays.sum()),), device=codes.device)
    shuffled = codes.clone()
    shuffled[rays] = choices[picks]
    return shuffled


def jitter_frames(frames: Int[Tensor, "rays"], max_offset: int, num_frames: int) -> Int[Tensor, "rays"]:
    """Each frame index moved by a uniform random offset in [-max_offset, max_offset], kept inside the clip."""
    if max_offset <= 0:
        return frames
    offsets = torch.randint(-max_offset, max_offset + 1, frames.shape, device=frames.device)
    return (frames + offsets).clamp(0, num_frames - 1)


def project_directions(
    directions: Float[Tensor, "rays 3"],
    c2w: Float[Tensor, "rays 3 4"],
    intrinsics: Float[Tensor, "4"],
    width: int,
    height: int,
) -> Float[Tensor, "rays 2"]:
    """Normalized pixel position ([0, 1]^2, x right, y down) where a ray's direction lands in its frame's camera.

    Independent of the resolution the camera is rendered at, so the viewer's low-resolution previews and full
    renders look up the same torso and background.
    """
    d_cam = (c2w[:, :3, :3].transpose(-1, -2) @ directions[:, :, None])[..., 0]  # OpenGL camera axes
    depth = (-d_cam[:, 2]).clamp_min(1e-6)
    fx, fy, cx, cy = intrinsics
    u = cx + fx * d_cam[:, 0] / depth
    v = cy - fy * d_cam[:, 1] / depth
    return torch.stack([u / width, v / height], dim=-1)


def composite_layers(
    head_rgb: Float[Tensor, "*rays 3"],
    accumulation: Float[Tensor, "*rays 1"],
    torso_rgb: Float[Tensor, "*rays 3"],
    torso_alpha: Float[Tensor, "*rays 1"],
    background: Float[Tensor, "*rays 3"],
) -> Float[Tensor, "*rays 3"]:
    """The picture's three layers, front to back: the head (premultiplied colour and its opacity) over the torso
    (straight colour, alpha) over the background plate. The one rule the forward pass and every renderer use."""
    under = torso_alpha * torso_rgb + (1.0 - torso_alpha) * background
    return head_rgb + (1.0 - accumulation) * under


def sample_image(image: Float[Tensor, "3 H W"], uv: Float[Tensor, "rays 2"]) -> Float[Tensor, "rays 3"]:
    """Bilinear lookup of an image at normalized pixel positions (edge pixels repeat outside)."""
    grid = (uv * 2.0 - 1.0)[None, :, None, :].to(image.dtype)  # [1, R, 1, 2]
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].transpose(0, 1).to(uv.dtype)


def batch_labels(batch: Dict[str, Tensor], device) -> Optional[Int[Tensor, "*rays"]]:
    labels = batch.get("labels")
    if labels is None:
        return None
    labels = labels.to(device)
    return labels[..., 0] if labels.shape[-1] == 1 else labels
