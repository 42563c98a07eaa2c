"""Metrics of `jean-eval` (see docs/evaluation.md): image (`image`), face geometry (`face`), identity (`identity`),
lip sync (`sync`). Each module is usable on its own with plain arrays; optional models (LPIPS backbone, dlib) are
reported as unavailable with a reason instead of failing."""
