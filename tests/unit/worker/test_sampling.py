"""Damping repetition in each server's own names; neutral values are never sent."""

from __future__ import annotations

import pytest

from tests.unit.conftest import MakeSettings
from worker.sampling import Sampling

ALL = Sampling(repeat_penalty=1.2, repeat_last_n=64, frequency_penalty=0.5,
               presence_penalty=0.25, dry_multiplier=0.8)  # fmt: skip


def test_llama_server_gets_every_penalty() -> None:
    assert ALL.payload("llama-server") == {
        "repeat_penalty": 1.2, "repeat_last_n": 64, "frequency_penalty": 0.5,
        "presence_penalty": 0.25, "dry_multiplier": 0.8,
    }  # fmt: skip


def test_vllm_gets_its_own_name_and_no_dry() -> None:
    assert ALL.payload("vllm") == {
        "repetition_penalty": 1.2, "frequency_penalty": 0.5, "presence_penalty": 0.25,
    }  # fmt: skip


def test_llama_cpp_python_gets_no_dry_and_no_window() -> None:
    assert ALL.payload("other") == {
        "repeat_penalty": 1.2, "frequency_penalty": 0.5, "presence_penalty": 0.25,
    }  # fmt: skip


def test_neutral_sampling_sends_nothing() -> None:
    assert Sampling().neutral
    assert Sampling(repeat_last_n=512).neutral
    assert Sampling().payload("llama-server") == {}
    assert not ALL.neutral


def test_stronger_damps_more_within_bounds() -> None:
    stronger = ALL.stronger()
    assert stronger.repeat_penalty > ALL.repeat_penalty
    assert stronger.frequency_penalty > ALL.frequency_penalty
    assert stronger.dry_multiplier > ALL.dry_multiplier
    assert Sampling(repeat_penalty=2.0).stronger().repeat_penalty == 2.0


def test_the_settings_defaults_damp(make_settings: MakeSettings) -> None:
    sampling = Sampling.from_settings(make_settings())
    assert sampling.repeat_penalty > 1 and sampling.dry_multiplier > 0
    custom = Sampling.from_settings(make_settings(llm_repeat_penalty="1.3", llm_dry_multiplier="0"))
    assert (custom.repeat_penalty, custom.dry_multiplier) == (1.3, 0)


@pytest.mark.parametrize(("name", "raw"), [("llm_repeat_penalty", "0.5"),
                                          ("llm_frequency_penalty", "3")])  # fmt: skip
def test_out_of_range_settings_are_refused(
    make_settings: MakeSettings, name: str, raw: str
) -> None:
    from kcdev.errors import UserError

    with pytest.raises(UserError, match=f"{name.upper()}='{raw}'.*outside"):
        make_settings(**{name: raw})
