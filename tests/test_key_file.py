"""The key file: every value and the file's schema checked, one line per problem; expiry;
reloading a changed file; and `graytune-server keys create|list|revoke` as an owner runs it."""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from graytune.client.transport.local_server import server_command
from graytune.server.access.credentials import ApiKey, KeyFile, hash_secret
from graytune.server.access.key_reload import KeyReloader
from graytune.server.access.key_schema import KeyFileError, parse_key_file

from helpers import wait_until

SHA = "0" * 64
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def entry(**fields) -> dict:
    return {"id": "k1a2b3c4d", "sha256": SHA, "tier": "graybox", **fields}


def problems_of(document, source="keys.json") -> list:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(KeyFileError) as refused:
        parse_key_file(text, source)
    assert all("\n" not in problem for problem in refused.value.problems)
    return refused.value.problems


def write(path, *entries) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))


def keys_cli(key_file, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        server_command() + ["keys", "--file", str(key_file), *args], capture_output=True, text=True, timeout=120
    )


def error_lines(result) -> list:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("tier", "gold", '"gold" is not one of blackbox, graybox, graybox-plus'),
        ("budget_samples", "lots", '"lots" is not an integer'),
        ("budget_samples", 1.5, "1.5 is not an integer"),
        ("budget_samples", True, "true is not an integer"),
        ("budget_samples", -10, "-10 is negative"),
        ("gradient_budget_samples", -1, "-1 is negative"),
        ("rate_per_second", 0, "0 is not a positive finite number"),
        ("rate_per_second", -2, "-2 is not a positive finite number"),
        ("rate_per_second", float("nan"), "NaN is not a positive finite number"),
        ("rate_per_second", float("inf"), "Infinity is not a positive finite number"),
        ("rate_per_second", "5", '"5" is not a number'),
        ("gradient_clip_norm", -1, "-1 is not a finite number >= 0"),
        ("gradient_clip_norm", float("inf"), "Infinity is not a finite number >= 0"),
        ("gradient_noise_std", float("nan"), "NaN is not a finite number >= 0"),
        ("gradient_noise_std", False, "false is not a number"),
        ("label", "", '"" is not printable text'),
        ("label", "acme\ncorp", '"acme\\ncorp" is not printable text'),
        ("label", "x" * 101, "101 characters, more than 100"),
        ("label", 7, "7 is not printable text"),
        ("expires_at", "soon", '"soon" is not an ISO-8601 date and time with a time zone'),
        (
            "expires_at",
            "2027-01-31T00:00:00",
            '"2027-01-31T00:00:00" is not an ISO-8601 date and time with a time zone',
        ),
        ("expires_at", 1893456000, "1893456000 is not a date and time with a time zone"),
        ("id", "k_1", "\"k_1\" is not 1-64 letters, digits or '-'"),
        ("id", "", "\"\" is not 1-64 letters, digits or '-'"),
        ("sha256", "ABC", '"ABC" is not 64 lowercase hex digits'),
    ],
)
def test_each_value_not_allowed_is_one_line_naming_file_entry_and_field(field, value, problem):
    [line] = problems_of({"keys": [entry(), entry(**{"id": "k2", field: value})]})
    named = {"id": f" (id {value})" if value else ""}.get(field, " (id k2)")
    assert line.startswith(f"keys.json: keys[1]{named}: {field}: {problem}"), line


@pytest.mark.parametrize(
    "fields",
    [
        {"budget_samples": 0, "gradient_budget_samples": 0},  # a frozen key
        {"rate_per_second": 0.001},
        {"rate_per_second": 20},
        {"gradient_clip_norm": 0, "gradient_noise_std": 0.0},
        {"gradient_clip_norm": 1.5},
        {"label": "acme corp — team 2"},
        {"expires_at": "2027-01-31T00:00:00Z"},
        {"budget_samples": None, "label": None},  # null: not set
    ],
)
def test_allowed_values_load(fields):
    [loaded] = parse_key_file(json.dumps({"keys": [entry(**fields)]}), "keys.json")
    assert ApiKey(**loaded).id == "k1a2b3c4d"


def test_an_expiry_with_a_zone_is_kept_in_utc():
    [loaded] = parse_key_file(json.dumps({"keys": [entry(expires_at="2027-01-31T01:00:00+01:00")]}), "k")
    assert loaded["expires_at"] == datetime(2027, 1, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    "document, problem",
    [
        (
            {"kees": []},
            'keys.json: must be a JSON object with exactly one field, "keys", a list of keys (found ["kees"])',
        ),
        ({"keys": [], "extra": 1}, 'found ["extra", "keys"]'),
        ({"keys": {}}, 'found ["keys"]'),
        ([], 'found "list"'),
    ],
)
def test_the_file_must_be_an_object_with_exactly_a_keys_list(document, problem):
    [line] = problems_of(document)
    assert line.startswith("keys.json: must be a JSON object") and problem in line


def test_entries_hold_only_known_fields_and_the_required_ones():
    problems = problems_of({"keys": [entry(colour="red"), {"tier": "graybox"}, "k1"]})
    assert problems[0].startswith("keys.json: keys[0] (id k1a2b3c4d): colour: unknown field (known: id, sha256, tier")
    assert problems[1:] == [
        "keys.json: keys[1]: id: missing (required)",
        "keys.json: keys[1]: sha256: missing (required)",
        'keys.json: keys[2]: "k1" is not a JSON object',
    ]


def test_a_duplicate_id_is_an_error_not_the_last_one_winning():
    problems = problems_of({"keys": [entry(), entry(tier="blackbox"), entry(id="k2"), entry()]})
    assert problems == [
        "keys.json: keys[1] (id k1a2b3c4d): id: duplicate of keys[0]",
        "keys.json: keys[3] (id k1a2b3c4d): id: duplicate of keys[0]",
    ]


def test_every_problem_of_a_file_is_reported_at_once():
    problems = problems_of({"keys": [entry(budget_samples="lots", rate_per_second=0), entry(id="k2", tier="x")]})
    assert [p.split(": ")[2] for p in problems] == ["budget_samples", "rate_per_second", "tier"]


def test_malformed_json_is_one_line_with_its_line_and_column():
    assert problems_of('{"keys": [\n  {"id": "k1",}\n]}') == [
        "keys.json: line 2 column 15: not valid JSON: Expecting property name enclosed in double quotes"
    ]


def test_an_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "keys.json"
    path.write_bytes(b'{"keys": ["\xff"]}')
    with pytest.raises(KeyFileError) as refused:
        KeyFile(path)
    [line] = refused.value.problems
    assert line.startswith(f"{path}: cannot read: ")


def test_a_key_made_in_code_is_checked_too():
    with pytest.raises(KeyFileError, match="key k1: rate_per_second: 0 is not a positive finite number"):
        ApiKey("k1", SHA, "graybox", rate_per_second=0)


def test_an_expired_key_is_refused_like_an_unknown_one(tmp_path):
    now = [NOW]
    keys = KeyFile(tmp_path / "keys.json", clock=lambda: now[0])
    secret = keys.create("graybox", label="trial", expires_at=NOW + timedelta(days=1))
    assert keys.authenticate(secret).label == "trial"
    now[0] = NOW + timedelta(days=1)
    assert keys.authenticate(secret) is None
    reread = KeyFile(tmp_path / "keys.json")
    assert reread.keys[secret.split("_")[1]].expires_at == NOW + timedelta(days=1)
    assert '"expires_at": "2026-06-02T00:00:00Z"' in (tmp_path / "keys.json").read_text()


def test_reload_swaps_in_the_file_and_says_what_changed(tmp_path):
    path = tmp_path / "keys.json"
    write(path, entry(id="kold"), entry(id="kkept"), entry(id="kedited"))
    keys = KeyFile(path)
    write(path, entry(id="kkept"), entry(id="kedited", budget_samples=5), entry(id="knew"))
    assert keys.reload() == (["knew"], ["kold"], ["kedited"])
    assert sorted(keys.keys) == ["kedited", "kkept", "knew"]


def test_an_invalid_file_at_reload_keeps_the_keys_before(tmp_path):
    path = tmp_path / "keys.json"
    write(path, entry())
    keys = KeyFile(path)
    before = keys.keys
    path.write_text('{"kees": []}')
    with pytest.raises(KeyFileError):
        keys.reload()
    assert keys.keys is before


def test_the_reloader_follows_file_changes_and_requests(tmp_path, caplog):
    path = tmp_path / "keys.json"
    keys = KeyFile(path)
    secret = keys.create("graybox")
    reloader = KeyReloader(KeyFile(path), interval=0.05).start()
    try:
        with caplog.at_level(logging.INFO, logger="graytune.server"):
            keys.revoke(secret.split("_")[1])  # another process's `keys revoke`
            wait_until(lambda: reloader.keys.authenticate(secret) is None, 30, "the revocation")
            path.write_text('{"keys": [{"id": "k1"}]}')
            wait_until(
                lambda: any(
                    r.levelno == logging.ERROR and "keeping the 0 keys" in r.getMessage() for r in caplog.records
                ),
                30,
                "the invalid file refused",
            )
            assert "keys[0] (id k1): sha256: missing (required)" in caplog.text
            reloader.request()  # the file is as last read: only the request reloads it
            wait_until(lambda: "(SIGHUP)" in caplog.text, 30, "the requested reload")
    finally:
        reloader.close()
    assert f"keys reloaded from {path} (the file changed): 0 keys (revoked {secret.split('_')[1]})" in caplog.text


def test_keys_cli_creates_lists_and_revokes_saying_what_it_did(tmp_path):
    key_file = tmp_path / "keys.json"
    empty = keys_cli(key_file, "list")
    assert empty.returncode == 0 and empty.stdout == f"no keys in {key_file} (the file does not exist yet)\n"
    created = keys_cli(
        key_file,
        "create",
        "--tier",
        "graybox",
        "--label",
        "acme corp",
        "--expires",
        "2099-01-31",
        "--budget",
        "0",
        "--rate",
        "2.5",
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    key_id = secret.split("_")[1]
    assert created.stderr.startswith(
        f'key {key_id} (graybox, "acme corp", expires 2099-01-31T00:00:00Z) added '
        f"to {key_file}; the secret above is shown once and stored nowhere"
    )
    listing = keys_cli(key_file, "list").stdout.splitlines()
    assert listing[0].split() == [
        "ID",
        "TIER",
        "LABEL",
        "EXPIRES",
        "BUDGET",
        "RATE/S",
        "GRADIENT",
        "BUDGET",
        "CLIP",
        "NOISE",
        "PIXEL",
        "GRADS",
    ]
    assert listing[1].split() == [
        key_id,
        "graybox",
        "acme",
        "corp",
        "2099-01-31T00:00:00Z",
        "0",
        "used",
        "0",
        "2.5",
        "-",
        "-",
        "-",
        "allowed",
    ]
    assert secret not in "\n".join(listing) and hash_secret(secret) not in "\n".join(listing)
    revoked = keys_cli(key_file, "revoke", key_id)
    assert revoked.returncode == 0 and revoked.stdout.startswith(
        f'key {key_id} (graybox, "acme corp", expires 2099-01-31T00:00:00Z) revoked: removed from {key_file}; '
        f"a server running with --keys {key_file} reloads it within seconds"
    )
    assert error_lines(keys_cli(key_file, "revoke", key_id)) == [
        f"graytune-server: error: {key_file}: no key '{key_id}' (`graytune-server keys --file {key_file} list` "
        "shows them)"
    ]
    assert keys_cli(key_file, "list").stdout == f"no keys in {key_file}\n"


def test_keys_create_refuses_each_value_not_allowed_in_one_line(tmp_path):
    key_file = tmp_path / "keys.json"
    result = keys_cli(
        key_file,
        "create",
        "--tier",
        "graybox",
        "--rate",
        "0",
        "--budget",
        "-10",
        "--gradient-clip",
        "-1",
        "--gradient-noise",
        "nan",
        "--expires",
        "2020-01-01",
    )
    assert error_lines(result) == [
        "graytune-server: error: --budget: -10 is negative (0 freezes the key)",
        "graytune-server: error: --rate: 0.0 is not a positive finite number",
        "graytune-server: error: --gradient-clip: -1.0 is not a finite number >= 0",
        "graytune-server: error: --gradient-noise: NaN is not a finite number >= 0",
        "graytune-server: error: --expires: 2020-01-01T00:00:00Z is in the past",
    ]
    assert not key_file.exists()


@pytest.mark.parametrize("action", [["list"], ["create", "--tier", "graybox"], ["revoke", "k1"]])
def test_every_keys_action_refuses_an_invalid_file_with_all_its_problems(tmp_path, action):
    key_file = tmp_path / "keys.json"
    write(key_file, entry(id="k1", budget_samples="lots"), entry(id="k1"))
    before = key_file.read_text()
    assert error_lines(keys_cli(key_file, *action)) == [
        f'graytune-server: error: {key_file}: keys[0] (id k1): budget_samples: "lots" is not an integer',
        f"graytune-server: error: {key_file}: keys[1] (id k1): id: duplicate of keys[0]",
    ]
    assert key_file.read_text() == before
