"""Tokenizing cannot run up the server's memory or CPU (issue 26, finding 7): the BPE cache is
bounded, a caption that cannot fit the context is refused from a pre-count before BPE, and
--max-caption-bytes is what a 77-token context can use.
"""

from __future__ import annotations

import random
import re
import string
import sys
import tracemalloc

import grpc
import open_clip
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.server.compute.limits import Limits
from graytune.server.compute.tokenizer import CACHE_WORDS, END_OF_WORD, BoundedBPE, TooManyTokens

from helpers import SERVER_ARGS

CLIP_CONTEXT = 77


def clip_tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def reference():
    """open_clip's tokenizer as it comes: what BPE gives."""
    return clip_tokenizer()


@pytest.fixture(scope="module")
def bounded():
    return BoundedBPE(clip_tokenizer())


# -- the pre-count -------------------------------------------------------------------------------
letters = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Lo")), min_size=1, max_size=300)
ascii_word = st.text(string.ascii_letters, min_size=1, max_size=400)
emoji = st.text(st.sampled_from("😂😍🔥👍🏽🇫🇷"), min_size=1, max_size=60)
odd = st.sampled_from(["<start_of_text>", "<end_of_text>", "&amp;", "&amp;lt;", "'s", "'ll", "1999", "...", "-_-"])
words = st.one_of(ascii_word, letters, emoji, odd, st.text(max_size=30))
captions = st.lists(words, max_size=40).flatmap(
    lambda ws: st.lists(st.sampled_from([" ", "", "\n", "  ", ", "]), min_size=len(ws), max_size=len(ws)).map(
        lambda seps: "".join(w + s for w, s in zip(ws, seps))
    )
)


@settings(max_examples=300, deadline=None)
@given(text=captions, room=st.integers(0, CLIP_CONTEXT))
def test_the_pre_count_never_refuses_what_bpe_accepts(reference, bounded, text, room):
    """Long words, any script, emoji, entities, special-token text: the bound is never above
    BPE's count, a caption is refused exactly when BPE's count is over its room, and an
    accepted caption gets the tokenizer's own ids."""
    exact = reference.encode(text)
    assert bounded.at_least(text, room) <= len(exact)
    try:
        tokens = bounded.encode(text, room)
    except TooManyTokens:
        assert len(exact) > room
    else:
        assert tokens == exact and len(exact) <= room
        assert bounded.ids([tokens], CLIP_CONTEXT).tolist() == reference([text]).tolist()


def test_a_long_word_is_refused_before_bpe():
    """2,400 random letters: BPE would make ~1,300 tokens in ~0.4 s; the pre-count refuses the
    word without running BPE at all, with a count over the room."""
    bpe = BoundedBPE(clip_tokenizer())

    def no_bpe(word):
        raise AssertionError(f"BPE ran on {word[:20]!r}...")

    bpe.tokenizer.bpe = no_bpe
    word = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(2400))
    with pytest.raises(TooManyTokens, match=r"at least \d+ tokens") as refused:
        bpe.encode(word, CLIP_CONTEXT - 2)
    assert int(str(refused.value).split()[2]) > CLIP_CONTEXT


# -- the cache -----------------------------------------------------------------------------------
def test_the_cache_is_bounded_and_keeps_the_special_tokens(reference):
    bpe = BoundedBPE(clip_tokenizer(), cache_words=64)
    rng = random.Random(1)
    distinct = [
        " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(8)) for _ in range(5)) for _ in range(200)
    ]  # 1,000 distinct words
    for text in distinct:
        assert bpe.encode(text, CLIP_CONTEXT) == reference.encode(text)
    assert bpe.words.cache_info().currsize == 64
    assert set(bpe.tokenizer.cache) == {"<start_of_text>", "<end_of_text>"}  # open_clip's dict: no growth
    special = "<start_of_text> a cat <end_of_text>"
    assert bpe.encode(special, CLIP_CONTEXT) == reference.encode(special)
    remembered = bpe.words.cache_info()
    long_word = "x" * (bpe.longest + 1)  # never one token: not remembered
    assert bpe.encode(long_word, CLIP_CONTEXT) == reference.encode(long_word)
    assert bpe.words.cache_info() == remembered


def bytes_per_cached_word() -> float:
    """What the LRU holds per word, measured: words as long as it remembers (32 characters),
    of letters whose UTF-8 bytes BPE sees as two-byte characters, so both the word and its BPE
    take the most memory."""
    bpe = BoundedBPE(clip_tokenizer(), cache_words=512)
    rng = random.Random(2)
    cyrillic = [chr(c) for c in range(0x400, 0x420)]  # UTF-8 D0 80..9F: both bytes above Latin-1's printable
    texts = ["".join(rng.choice(cyrillic) for _ in range(bpe.longest // 2)) for _ in range(2 * 512)]
    bpe.encode("warm", CLIP_CONTEXT)  # ftfy and regex build their tables on first use
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            bpe.encode(text, CLIP_CONTEXT)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert bpe.words.cache_info().currsize == 512
    return held / 512


# -- max_caption_bytes ---------------------------------------------------------------------------
def test_max_caption_bytes_is_what_a_77_token_context_can_use(reference):
    """75 caption tokens of at most the longest token's bytes, a space after each."""
    pieces = [p[: -len(END_OF_WORD)] if p.endswith(END_OF_WORD) else p for p in reference.encoder]
    longest = max(len(bytes(reference.byte_decoder[c] for c in p)) for p in pieces if not p.startswith("<"))
    assert longest == 32
    assert Limits().max_caption_bytes == (CLIP_CONTEXT - 2) * (longest + 1)


# -- across processes ----------------------------------------------------------------------------
ALLOWANCE = 8 << 20  # RSS a server's allocator and gRPC may move by between two reads, any load


def rss(server: LocalServer) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
    return int(kib) << 10


def five_letter_words(rng: random.Random, n: int) -> list:
    return ["".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(n)]


def least_bytes_unbounded(words) -> int:
    """What open_clip's dict would have kept for these words, at the least: each word as its
    key and its BPE (every character, and "</w>") as its value; the dict's own slots not counted."""
    return sum(sys.getsizeof(w) + sys.getsizeof(w + END_OF_WORD) for w in set(words))


def test_a_server_sent_many_distinct_captions_keeps_its_memory(tmp_path):
    """Thousands of accepted captions of distinct words, and hundreds of calls refused for an
    over-long caption of distinct words (each tokenised, and its words kept, before this
    change): the server's RSS grows by no more than a full cache, where the words sent would
    have kept more than that in open_clip's cache."""
    rng = random.Random(3)
    with LocalServer(SERVER_ARGS) as server, OracleClient(server.endpoint, timeout=60, retries=0) as client:
        room = client.describe().text.context_length - 2
        caption_bytes = client.describe().limits.max_caption_bytes

        def accepted_batch():  # 256 captions of 3 distinct words each
            words = five_letter_words(rng, 3 * 256)
            client.embed_texts([" ".join(words[i : i + 3]) for i in range(0, len(words), 3)])
            return words

        def refused_call():  # as many distinct words as the caption bytes allow, far over the room
            words = five_letter_words(rng, caption_bytes // 6)
            with pytest.raises(OracleError) as refused:
                client.embed_texts([" ".join(words)])
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            count = re.search(r"texts\[0\]: at least (\d+) tokens", refused.value.details)
            assert count and int(count[1]) >= len(words) + 2 > room + 2, refused.value.details
            return words

        for _ in range(4):  # warm: the cache full, every code path run
            accepted_batch()
            refused_call()
        before = rss(server)
        sent = [w for _ in range(8) for w in accepted_batch()]  # the cache turned over
        sent += [w for _ in range(500) for w in refused_call()]
        grown = rss(server) - before

    bound = CACHE_WORDS * bytes_per_cached_word() + ALLOWANCE
    unbounded = least_bytes_unbounded(sent)
    print(
        f"\n{len(set(sent))} distinct words: RSS grew {grown / 2**20:.1f} MiB; bound {bound / 2**20:.1f} "
        f"MiB; an unbounded cache would have kept at least {unbounded / 2**20:.1f} MiB"
    )
    assert grown < bound < unbounded
