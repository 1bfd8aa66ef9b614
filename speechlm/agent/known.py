"""Names the home knows, found in what the user said: a gazetteer for the cascade's parser.

A parser that has never seen a podcast called ``the daily`` cannot tell ``put on the daily``
from a calendar entry; the home can: the name is in its podcast catalogue. :func:`known_names`
lists the spans of a request that name something of the environment's state (a podcast, a game,
a song, a room, a contact, an event, a place, a kind of transport, business or film...), in the
calls' own ``slot = value`` form, and the ``command`` task reads that list as a condition
(data-dir file ``known``), in training and in the agent loop alike. The catalogue is the
episode's initial state: a real assistant looks its catalogues up the same way, and held-out
test values are in it as any new item would be.
"""
from __future__ import annotations

from typing import Callable

from speechlm.agent.calls import EMPTY_HISTORY
from speechlm.agent.ground import EDGE_WORDS

# slot -> the names of the state it takes (catalogues, devices, contacts, calendar, lists)
CATALOGUES: dict[str, Callable[[dict], list[str]]] = {
    "podcast_name": lambda s: list(s["world"]["podcasts"]),
    "radio_name": lambda s: list(s["world"]["radio"]),
    "audiobook_name": lambda s: [b["title"] for b in s["world"]["audiobooks"]],
    "game_name": lambda s: list(s["world"]["games"]),
    "song_name": lambda s: [x["title"] for x in s["world"]["songs"]],
    "artist_name": lambda s: [x["artist"] for x in s["world"]["songs"]],
    "music_genre": lambda s: [x["genre"] for x in s["world"]["songs"]],
    "news_topic": lambda s: list(s["world"]["news"]),
    "definition_word": lambda s: list(s["world"]["definitions"]),
    "currency_name": lambda s: list(s["world"]["currencies"]),
    "food_type": lambda s: list(s["world"]["recipes"]) + [m["food"] for m in s["world"]["menus"].values()],
    "business_name": lambda s: list(s["world"]["stocks"]) + list(s["world"]["menus"]),
    "house_place": lambda s: list(s["devices"]["lights"]),
    "device_type": lambda s: list(s["devices"]["plugs"]),
    "person": lambda s: list(s["contacts"]),
    "event_name": lambda s: [e["event"] for e in s["calendar"]],
    "list_name": lambda s: list(s["lists"]),
    "place_name": lambda s: [*s["world"]["weather"], *s["world"]["timezones"], *s["world"]["traffic"],
                             *(d for dests in s["world"]["transport"].values() for d in dests),
                             *(x["place"] for x in s["world"]["locations"] + s["world"]["events"])],
    "transport_type": lambda s: list(s["world"]["transport"]),
    "business_type": lambda s: [x["type"] for x in s["world"]["locations"]],
    "movie_type": lambda s: [x["genre"] for x in s["world"]["movies"]],
}
MAX_WORDS = 6  # the longest name looked for


def catalogue(state: dict) -> dict[tuple[str, ...], list[str]]:
    """``name words -> slots`` of every name in ``state`` (a part the state lacks is skipped);
    built once per episode, read by :func:`known_names` at every step."""
    out: dict[tuple[str, ...], list[str]] = {}
    for slot, names in CATALOGUES.items():
        try:
            found = names(state)
        except KeyError:
            continue
        for name in found:
            words = tuple(str(name).lower().split())
            # a lone function word names nothing a request would be about
            if words and len(words) <= MAX_WORDS and not (len(words) == 1 and words[0] in EDGE_WORDS):
                out.setdefault(words, [])
                if slot not in out[words]:
                    out[words].append(slot)
    return out


def known_pairs(text: str, table: dict[tuple[str, ...], list[str]]) -> list[tuple[str, str]]:
    """``(slot, name)`` for each name of ``table`` (:func:`catalogue`) said in ``text``, in order of
    appearance (the longest name where names overlap)."""
    words = text.lower().split()
    return [(slot, " ".join(words[i:i + n])) for i, n in _said(words, table) for slot in table[tuple(words[i:i + n])]]


def _said(words: list[str], table: dict[tuple[str, ...], list[str]]) -> list[tuple[int, int]]:
    """``(start, length)`` of each name of ``table`` in ``words``, left to right, the longest first."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        n = next((n for n in range(min(MAX_WORDS, len(words) - i), 0, -1) if tuple(words[i:i + n]) in table), 0)
        if n:
            spans.append((i, n))
        i += max(n, 1)
    return spans


def known_names(text: str, table: dict[tuple[str, ...], list[str]]) -> str:
    """:func:`known_pairs` as ``slot = name ; ...``, or ``none`` (as an empty history reads)."""
    pairs = known_pairs(text, table)
    return " ; ".join(f"{slot} = {name}" for slot, name in pairs) if pairs else EMPTY_HISTORY


def snap_names(text: str, table: dict[tuple[str, ...], list[str]], min_ratio: float = 0.85) -> str:
    """``text`` with each span of heard words that is close in spelling to a name of ``table``
    (:func:`catalogue`) written as that name: a recognizer that heard ``garbage lights`` or ``open
    my parking list`` in a home whose names are ``garage`` and ``packing`` (Whisper misses a third
    of the names said in the recipe's test requests). Close: a character similarity ratio of at
    least ``min_ratio`` (rapidfuzz's normalized Indel similarity), a span of as many words as the
    name give or take one and of at least 5 letters (``hear`` stays, not ``heart``), no function
    word at an end the name lacks; a name said exactly stays, and no span overlaps one."""
    from rapidfuzz import fuzz, process

    words = text.split()
    if not words or not table:
        return text
    exact = [False] * len(words)
    for i, n in _said(words, table):
        exact[i:i + n] = [True] * n
    out: list[str] = []
    i = 0
    while i < len(words):
        best: tuple[float, int, tuple[str, ...]] | None = None
        for n in range(1, min(MAX_WORDS, len(words) - i) + 1):
            span = words[i:i + n]
            if any(exact[i:i + n]):
                break
            said = " ".join(span)
            if len(said.replace(" ", "")) < 5:
                continue
            names = {" ".join(name): name for name in table if abs(len(name) - n) <= 1
                     and not any(w in EDGE_WORDS and w != x for w, x in ((span[0], name[0]), (span[-1], name[-1])))}
            hit = process.extractOne(said, list(names), scorer=fuzz.ratio, score_cutoff=100 * min_ratio)
            if hit is not None and (best is None or hit[1] > best[0]):
                best = (hit[1], n, names[hit[0]])
        if best is None:
            out.append(words[i])
            i += 1
        else:
            out += best[2]
            i += best[1]
    return " ".join(out)
