"""Every tier can use the CLI for what it may do, and a method it may not run is refused from
Describe, before any sample of the key's budget is spent and before a run directory exists."""

from __future__ import annotations

import json
import re

import pytest

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import KEYED_ARGS, create_key, graytune, train_args

BUDGET = 100_000


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    """A server with one budgeted key per tier: (server, {tier: secret})."""
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    secrets = {
        tier: create_key(key_file, "--tier", tier, "--budget", str(BUDGET))
        for tier in ("blackbox", "graybox", "graybox-plus")
    }
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        yield server, secrets


def remaining(server, secret) -> int:
    with OracleClient(server.endpoint, api_key=secret) as oracle:
        return oracle.describe(refresh=True).budget_remaining


def test_zero_shot_eval_works_for_every_tier(tiers, digits):
    server, secrets = tiers
    recalls = set()
    for tier, secret in secrets.items():
        before = remaining(server, secret)
        result = graytune(server.endpoint, "eval", "--val-data", digits["val"], key=secret)
        assert result.returncode == 0, (tier, result.stderr)
        recalls.add(json.loads(result.stdout)["image_to_text_R@1"])
        val_rows = len(open(digits["val"]).read().splitlines()) - 1
        assert before - remaining(server, secret) == val_rows + 10, "each image and distinct caption once"
    assert len(recalls) == 1, "the backbone alone, whatever the tier"


def test_a_blackbox_key_is_refused_training_before_it_pays_for_anything(tiers, digits, tmp_path):
    server, secrets = tiers
    before = remaining(server, secrets["blackbox"])
    run_dir = tmp_path / "run"
    args = train_args(digits["train"], run_dir, "--val-data", digits["val"], "--no-progress")
    result = graytune(server.endpoint, *args, key=secrets["blackbox"])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "tier 'blackbox' cannot run training with --method dga" in errors[0]
    assert "gradients" in errors[0] and "text.shift" in errors[0]
    assert "which a key of tier 'graybox' or 'graybox-plus' has" in errors[0], "the tier that would do"
    allowed = errors[0].split("tier 'blackbox' allows ")[1].split("; ")
    assert allowed == [
        "zero-shot evaluation (`graytune eval` without --adapter)",
        "--method linear-probe (--task classify)",
        "--method craft (--task classify)",
        "--method dga --adapters output",
    ]
    assert remaining(server, secrets["blackbox"]) == before
    assert not run_dir.exists()


def test_a_graybox_key_is_refused_deep_prompts_before_it_pays(tiers, digits, tmp_path):
    server, secrets = tiers
    before = remaining(server, secrets["graybox"])
    args = train_args(digits["train"], tmp_path / "run", "--method", "lga")  # no depth asked: LGA alone
    result = graytune(server.endpoint, *args, key=secrets["graybox"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error" in line]
    assert "offers deep prompts at 0 layers to this key (tier 'graybox')" in error
    assert error.endswith("use a key of tier 'graybox-plus', or --method dga"), error
    assert remaining(server, secrets["graybox"]) == before
    assert not (tmp_path / "run").exists()


def test_evaluating_graybox_adapters_with_a_blackbox_key_is_refused_before_it_pays(tiers, digits, tmp_path):
    server, secrets = tiers
    run_dir = tmp_path / "run"
    args = train_args(digits["train"], run_dir, "--steps", "1", "--batch-size", "8", "--no-progress")
    trained = graytune(server.endpoint, *args, key=secrets["graybox"])
    assert trained.returncode == 0, trained.stderr
    before = remaining(server, secrets["blackbox"])
    args = ("eval", "--val-data", digits["val"], "--adapter", str(run_dir / "adapter"))
    result = graytune(server.endpoint, *args, key=secrets["blackbox"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot run evaluation of graybox-dga adapters" in result.stderr
    assert "gradients" not in result.stderr, "evaluation needs the inputs, not gradients"
    assert remaining(server, secrets["blackbox"]) == before


@pytest.mark.parametrize(
    "line, damage, message",
    [
        (4, lambda image: image.unlink(), "no such image file"),
        (2, lambda image: image.write_text("not an image"), "cannot read image .*: cannot identify image file"),
    ],
)
def test_bad_data_is_refused_in_one_line_before_any_call_is_billed(tiers, tmp_path, line, damage, message):
    from graytune.client.demo.digits import write_digits

    server, secrets = tiers
    data = write_digits(tmp_path / "data")
    image = open(data["train"]).read().splitlines()[line - 1].split("\t")[0]
    damage(tmp_path / "data" / image)  # line 2 is the first row: always decoded by the check
    before = remaining(server, secrets["graybox"])
    args = train_args(data["train"], tmp_path / "run", "--no-progress")
    result = graytune(server.endpoint, *args, key=secrets["graybox"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and re.search(rf"train\.csv, line {line}: {message}", errors[0]), result.stderr
    assert image in errors[0]
    assert remaining(server, secrets["graybox"]) == before
    assert not (tmp_path / "run").exists()
