"""Prompt following on real chorales: sections copied from their snippets follow them, swapped ones do not."""

import json
from itertools import combinations

import numpy as np
import pytest
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.staria import StariaTokenizer
from cadenza.staria.events import MusicEvents, events_to_score, join_sections
from cadenza.staria.prompt_following import following_rate, prompt_following, snippet_events

tok = StariaTokenizer()
NOTES = 40  # notes per snippet: well within the 256 tokens of a snippet the generator sees


@pytest.fixture(scope="module")
def chorales(chorale_midis) -> list[MusicEvents]:
    return [tok.events(path) for path in chorale_midis]


def _pairs(chorales: list[MusicEvents]) -> list[tuple[MusicEvents, MusicEvents]]:
    return [(chorales[i], chorales[j]) for i, j in list(combinations(range(len(chorales)), 2))[::7]]


def test_sections_copied_from_their_snippets_follow_and_swapped_ones_do_not(chorales):
    copied, swapped = [], []
    for a, b in _pairs(chorales):
        snippet_a, snippet_b = a.take(slice(0, NOTES)), b.take(slice(0, NOTES))
        snippets = snippet_events(events_to_score(join_sections([("A", snippet_a), ("B", snippet_b)])))
        assert sorted(snippets) == ["A", "B"] and len(snippets["A"]) == NOTES
        piece = events_to_score(join_sections([("A", snippet_a), ("B", snippet_b), ("A", snippet_a)]))
        copied.append(prompt_following(piece, snippets)["sections"])
        wrong = events_to_score(join_sections([("A", snippet_b), ("B", snippet_a), ("A", snippet_b)]))
        swapped.append(prompt_following(wrong, snippets)["sections"])
    assert len(copied) >= 10
    assert following_rate(copied) == {"n_sections": 3 * len(copied), "following_rate": 1.0, "chance": 0.5}
    assert following_rate(swapped)["following_rate"] == 0.0


def test_later_material_of_the_same_piece_mostly_follows(chorales):
    """Not only copies: the next phrases of a snippet's own chorale (same key and voices) follow it."""
    sections = []
    for a, b in _pairs(chorales):
        snippets = snippet_events(events_to_score(join_sections([("A", a.take(slice(0, NOTES))),
                                                          ("B", b.take(slice(0, NOTES)))])))
        later = join_sections([("A", a.take(slice(NOTES, 3 * NOTES))), ("B", b.take(slice(NOTES, 3 * NOTES)))])
        sections.append(prompt_following(later, snippets)["sections"])
    assert following_rate(sections)["following_rate"] >= 0.75


def test_chance_is_one_over_the_number_of_snippets(chorales):
    a, b, c = chorales[:3]
    snippets = snippet_events(events_to_score(join_sections([(letter, x.take(slice(0, NOTES)))
                                                      for letter, x in zip("ABC", (a, b, c))])))
    result = prompt_following(join_sections([("A", a.take(slice(0, NOTES))), ("C", c.take(slice(0, NOTES)))]), snippets)
    assert result["chance"] == pytest.approx(1 / 3) and result["following_rate"] == 1.0
    one = snippet_events(events_to_score(join_sections([("A", a.take(slice(0, NOTES)))])))
    assert prompt_following(join_sections([("A", a)]), one)["n_sections"] == 0  # one snippet: nothing to tell apart


def test_evaluate_cli_reports_prompt_following(chorales, tmp_path):
    a, b = chorales[0].take(slice(0, NOTES)), chorales[5].take(slice(0, NOTES))
    prompt = tmp_path / "prompt.mid"
    events_to_score(join_sections([("A", a), ("B", b)])).dump_midi(str(prompt))
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    events_to_score(join_sections([("A", a), ("B", b)])).dump_midi(str(pieces / "copied.mid"))
    events_to_score(join_sections([("A", b), ("B", a)])).dump_midi(str(pieces / "swapped.mid"))
    result = CliRunner().invoke(app, ["music", "evaluate", str(pieces), "--prompt", str(prompt)])
    assert result.exit_code == 0, result.output
    assert "prompt following: 50% of 4 sections" in result.output
    report = json.loads((pieces / "evaluation.json").read_text())
    rates = {p["name"]: p["prompt_following"]["following_rate"] for p in report["pieces"]}
    assert rates == {"copied.mid": 1.0, "swapped.mid": 0.0}
    assert np.isclose(report["aggregate"]["prompt_following"]["chance"], 0.5)
    missing = CliRunner().invoke(app, ["music", "evaluate", str(pieces), "--prompt", str(tmp_path / "none.mid")])
    assert missing.exit_code == 1 and "none.mid" in missing.output
