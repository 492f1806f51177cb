"""config.py: YAML over the defaults, unknown keys refused, the demo's presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdistill.config import RunConfig, full, load_config, quick
from llmdistill.errors import UsageError


def test_yaml_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("student: {epochs: 2}\nserve: {curve_thresholds: [0.5, 0.9]}\n")
    cfg = load_config(path)
    assert cfg.student.epochs == 2
    assert cfg.student.alpha == RunConfig().student.alpha
    assert cfg.serve.curve_thresholds == [0.5, 0.9]


def test_yaml_on_top_of_a_preset_keeps_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("out: runs/x\n")
    cfg = load_config(path, base=quick())
    assert cfg.teacher.spec == "smollm2-135m" and cfg.out == Path("runs/x")


@pytest.mark.parametrize("text, where", [
    ("student:\n  epochz: 3\n", "student.epochz"),
    ("evaluate: {ci: 2}\n", "evaluate.ci"),
    ("- a\n- b\n", "mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_yaml_is_a_one_line_error_naming_the_key(tmp_path: Path, text: str,
                                                    where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=where):
        load_config(path)


def test_the_full_preset_is_larger_than_the_demo_and_the_demo_than_quick() -> None:
    sizes = [(c.data.max_train, c.data.max_validation, c.data.max_test)
             for c in (quick(), RunConfig(), full())]
    assert sizes[0] <= sizes[1] < sizes[2]
    assert all(a <= b for a, b in zip(sizes[1], sizes[2], strict=True))
