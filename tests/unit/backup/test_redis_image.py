"""The Redis image's name says what is inside, and the stack hands it the password as a file."""

from __future__ import annotations

import re

from kcdev.paths import DOCKER_DIR
from kcdev.stack import images

COMPOSE = DOCKER_DIR / "docker-compose.yml"


def redis_service() -> str:
    """The `redis:` service's block of the compose file, as text."""
    text = COMPOSE.read_text()
    block = re.search(r"^  redis:\n((?:    .*\n|\s*\n)+)", text, re.MULTILINE)
    assert block is not None
    return block[1]


def test_the_tag_the_dockerfile_and_compose_agree_on_the_redis_series() -> None:
    dockerfile = (DOCKER_DIR / "Dockerfile.redis").read_text()
    series = re.search(r"^ARG REDIS_SERIES=(\S+)$", dockerfile, re.MULTILINE)
    base = re.search(r"^ARG REDIS_BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert series is not None and series[1] == images.REDIS_SERIES
    assert base is not None and base[1] == images.REDIS_BASE
    by_hand = images.BY_HAND["REDIS_IMAGE"]
    assert f"kc-devenv/redis:{images.REDIS_SERIES}" == by_hand
    assert images.REDIS_IMAGE.startswith(f"{by_hand}-")  # invoke's tag adds the inputs' digest
    service = redis_service()
    assert f"image: ${{REDIS_IMAGE:-{by_hand}}}\n" in service
    assert f"REDIS_BASE_IMAGE: ${{REDIS_BASE_IMAGE:-{images.REDIS_BASE}}}\n" in service


def test_the_password_reaches_redis_as_a_secret_file_not_an_environment_variable() -> None:
    service = redis_service()
    assert not re.search(r"^\s*(- )?REDIS_PASSWORD[:=]", service, re.MULTILINE)  # no variable
    assert "      - source: redis_password\n        target: redis_password\n" in service
    assert "\nsecrets:\n  redis_password:\n    environment: REDIS_PASSWORD\n" in COMPOSE.read_text()
