"""The contract's words (graytune.contract) are the ones used where Python cannot import them: the
load balancer's configuration, the Node.js client and the .proto's comments."""

from __future__ import annotations

import re
from pathlib import Path

import graytune.v1
from graytune import contract
from graytune.v1 import oracle_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
NODE_CLIENT = ROOT / "tests" / "node" / "describe_embed.js"
PROTO = Path(graytune.v1.__file__).parent / "oracle.proto"

HEADERS = {contract.AUTHORIZATION_HEADER, contract.CALL_ID_HEADER, contract.AFFINITY_HEADER}
GRAYTUNE_HEADER = re.compile(r"x-graytune-[a-z0-9-]*")
ENTRY_POINT = re.compile(r"""["'](?:image|text)\.\w+["']""")  # a quoted "<tower>.<input>"
TIER_WORD = re.compile(r"\b(?:blackbox|graybox)[\w-]*")
TEXTS = contract.TEXT_TEXTS.partition(".")[2]  # sent as the header's `texts`, not as a tensor
ADAPTER = contract.IMAGE_PIXEL_ADAPTER.partition(".")[2]  # sent as its parameters, "pixel_adapter.<i>.weight", ...
TENSOR_INPUTS = {point.partition(".")[2] for point in contract.ENTRY_POINTS} - {TEXTS, ADAPTER}


def quoted(text: str, pattern: re.Pattern) -> set:
    return {match.strip("\"'") for match in pattern.findall(text)}


def test_the_contract_is_consistent():
    assert all(h == h.lower() for h in HEADERS), "gRPC sends metadata keys in lower case"
    assert set(contract.TIERS) == set(contract.TIER_ENTRY_POINTS) >= contract.GRADIENT_TIERS
    every_tier = {point for points in contract.TIER_ENTRY_POINTS.values() for point in points}
    assert every_tier == set(contract.ENTRY_POINTS) and len(contract.ENTRY_POINTS) == len(every_tier)
    assert all(contract.entry_point(*point.split(".")) == point for point in contract.ENTRY_POINTS)


def test_the_node_client_sends_the_contracts_headers_and_inputs():
    text = NODE_CLIENT.read_text()
    sent = set(re.findall(r"""metadata\.set\(["']([^"']+)["']""", text))
    assert sent and sent <= HEADERS
    assert set(GRAYTUNE_HEADER.findall(text)) <= HEADERS
    assert quoted(text, ENTRY_POINT) <= set(contract.ENTRY_POINTS)
    tensors = set(re.findall(r"""\bname: ["'](\w+)["']""", text))
    assert tensors and tensors <= TENSOR_INPUTS


def test_the_proto_names_the_contracts_headers_entry_points_inputs_and_tiers():
    text = PROTO.read_text()
    assert set(GRAYTUNE_HEADER.findall(text)) <= HEADERS
    assert quoted(text, ENTRY_POINT) <= set(contract.ENTRY_POINTS)
    assert set(TIER_WORD.findall(text)) <= set(contract.TIERS)
    tier_field = next(line for line in text.splitlines() if re.search(r"\bstring tier = ", line))
    assert set(re.findall(r'"([\w-]+)"', tier_field)) == set(contract.TIERS)
    # The InputHeader's comment lists the tensors each tower takes; "embeddings" is what comes back.
    input_comment = text[: text.index("message InputHeader")].rsplit("\n\n", 1)[1]
    assert set(re.findall(r'"(\w+)"', input_comment)) - {"embeddings"} == TENSOR_INPUTS
    assert TEXTS in pb.InputHeader.DESCRIPTOR.fields_by_name
