"""The gateway stage's report and flag, without a broker or dcmtk."""

from __future__ import annotations

import pytest

from worker.bench.report import render_markdown
from worker.cli import build_parser


def test_markdown_of_the_gateway_stage_is_a_table() -> None:
    result = {"stage": "gateway", "instances": 5, "gateway_per_s": 20.0, "ratio": 0.5}
    md = render_markdown({**result, "command": "scanstream bench --stage gateway"})
    assert "## Gateway stage" in md and "| gateway_per_s | 20.0 |" in md
    assert "## Throughput" not in md


def test_instances_flag_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "--stage", "gateway", "--instances", "7"])
    assert args.instances == 7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--stage", "gateway", "--instances", "0"])
    assert "must be at least 1" in capsys.readouterr().err
