"""The hand-written prose of ``leaderboards/README.md`` quotes the rendered tables as they stand.

The tables between the ``<!-- leaderboard-*:begin/end -->`` markers are rendered from the entries; the findings
and the v1-to-v2 table around them are written by hand and go stale when an entry lands and the ranks shift.
These tests hold the prose to the rendered tables: every leakage it quotes ("0.388 [0.321, 0.453]") is a cell
of some table, and every v2 rank it states ("4-8 of 12 (natural, ...)") is that entry's rank out of the track's
ranked entries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[3] / "leaderboards" / "README.md"
BLOCK = re.compile(r"<!-- leaderboard-(\S+?):begin -->(.*?)<!-- leaderboard-\1:end -->", re.S)
LEAKAGE = re.compile(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]")
#: "natural: 4-8 of 12", "faces: both 9-11 of 15" or "4-8 of 12 (natural".
RANK_CLAIM = re.compile(r"(natural|faces): (?:both )?(\d+(?:-\d+)?) of (\d+)|(\d+(?:-\d+)?) of (\d+) \((natural|faces)")
TRACK_BLOCK = {"natural": "natural-convnet5-v2", "faces": "faces-convnet5-v2"}


def _blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def _table_rows(block: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in block.splitlines()
        if line.startswith("| ") and not line.startswith("| Rank")
    ]


def stale_leakage_quotes(text: str) -> list[str]:
    """Leakage values with intervals quoted outside the rendered tables that no rendered table holds."""
    tables = "".join(_blocks(text).values())
    prose = BLOCK.sub("", text)
    return [q for q in LEAKAGE.findall(prose) if q not in tables]


def stale_rank_claims(text: str) -> tuple[int, list[str]]:
    """Check the v2 column of the "From v1 to v2" table: (claims checked, what is stale).

    A claim "R of K" must name K = the track's number of ranked entries, R must be a rank of that table, and
    each leakage quoted after it (up to the next claim or ``;``) must be a row of that table ranked R.
    """
    blocks = _blocks(text)
    section = text.split("## From v1 to v2", 1)[1].split("\n\n**", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Defense")]
    ranked_of: dict[str, list[str]] = {}  # per track: the ranks of its ranked rows
    rank_of: dict[str, dict[str, set[str]]] = {}  # per track: leakage cell -> ranks (two rows can read alike)
    for track, block in TRACK_BLOCK.items():
        table = _table_rows(blocks[block])
        ranked_of[track] = [r[0] for r in table if r[0] != "–"]
        rank_of[track] = {}
        for r in table:
            for q in LEAKAGE.findall(" | ".join(r)):
                rank_of[track].setdefault(q, set()).add(r[0])
    checked, stale = 0, []
    for row in rows:
        cell = row.split("|")[3]
        claims = list(RANK_CLAIM.finditer(cell))
        if len(claims) != len(re.findall(r"\d+(?:-\d+)? of \d+", cell)):
            stale.append(f"unparsed rank claim in: {cell.strip()[:80]}")
        for i, m in enumerate(claims):
            track = m.group(1) or m.group(6)
            rank, of = (m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5))
            ranked, quoted = ranked_of[track], rank_of[track]
            checked += 1
            if int(of) != len(ranked) or rank not in ranked:
                stale.append(f"{track} {rank} of {of}: the table ranks {len(ranked)} ({sorted(set(ranked))})")
            end = claims[i + 1].start() if i + 1 < len(claims) else len(cell)
            for quote in LEAKAGE.findall(cell[m.end() : end].split(";")[0]):
                if rank not in quoted.get(quote, set()):
                    stale.append(f"{track} {quote}: said {rank}, ranked {sorted(quoted.get(quote, set()))}")
    return checked, stale


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_every_leakage_the_prose_quotes_is_a_rendered_cell(readme):
    assert len(LEAKAGE.findall(BLOCK.sub("", readme))) >= 20
    assert stale_leakage_quotes(readme) == []


def test_the_v1_to_v2_table_states_the_current_v2_ranks(readme):
    checked, stale = stale_rank_claims(readme)
    assert checked >= 10
    assert stale == []


def test_the_checks_catch_a_rank_or_a_number_left_behind(readme):
    head, section = readme.split("## From v1 to v2", 1)
    first = RANK_CLAIM.search(section)
    assert first is not None
    of = first.group(3) or first.group(5)
    claim = first.group(0)
    old = head + "## From v1 to v2" + section.replace(claim, claim.replace(f"of {of}", f"of {int(of) + 1}"), 1)
    assert stale_rank_claims(old)[1]
    quote = LEAKAGE.findall(BLOCK.sub("", readme))[0]  # its first occurrence is in the findings, above the tables
    assert stale_leakage_quotes(readme.replace(quote, "0.123 [0.012, 0.234]", 1))
