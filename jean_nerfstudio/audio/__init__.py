"""Audio: the front end (waveform -> per-frame windows) and JEAN's self-supervised, lip-aligned audio encoder.

Kept free of imports so that plugin discovery stays light; import the submodules you need:
`frontend` (compute_frame_windows, FrontEndSpec), `checkpoint` (load_audio_encoder), `source` (build_audio_source: the
NeRF model's audio source, and the per-subject MelWindowNet), `train` / `train_cli`.
"""
