"""kc-devenv's command surface: `invoke --list` shows the tasks, `invoke --help TASK` their flags.

Each task reads the settings, calls one helper from the kcdev package, and reports.
"""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from kcdev import images
from kcdev.cli import one_line_errors, say
from kcdev.compose import ComposeProject, check_backend
from kcdev.docker_cli import Docker
from kcdev.settings import load_settings

BACKEND_HELP = "llamacpp, vllm or none (Redis alone); default: LLM_BACKEND from .env"


def _project(backend: str | None) -> ComposeProject:
    """Validate the input first, then check Docker: bad flags fail fast even without a daemon."""
    settings = load_settings()
    chosen = check_backend(backend or settings.llm_backend)
    docker = Docker()
    docker.ensure_daemon()
    return ComposeProject(settings, chosen, docker)


@task(help={"backend": BACKEND_HELP, "no_cache": "rebuild every layer from scratch"})
@one_line_errors
def build(c: Context, backend: str | None = None, no_cache: bool = False) -> None:
    """Build the stack's images, from local Debian base images where no registry is reachable."""
    project = _project(backend)
    images.ensure_images(project, rebuild=True, no_cache=no_cache, say=say)
    say(
        f"images ready: {', '.join(images.image_names(project.settings, project.backend).values())}"
    )
