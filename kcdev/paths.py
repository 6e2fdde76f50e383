"""Where the project's files live: derived from this package's location, never machine-specific."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
MODELS_DIR = ROOT / "models"
GGUF_DIR = MODELS_DIR / "gguf"
HF_DIR = MODELS_DIR / "hf"
# Ignored by git: anything here can be rebuilt, and survives between runs in one clone.
CACHE_DIR = ROOT / ".cache"
ENV_FILE = ROOT / ".env"
ENV_SAMPLE = ROOT / ".env.sample"


def shown(path: Path) -> str:
    """A path as the user should read it: relative to the repo when inside it, else as given."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
