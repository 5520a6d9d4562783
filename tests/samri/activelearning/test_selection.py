"""samri.activelearning.selection: ranking, combined values, reservations for concurrent clients."""

from __future__ import annotations

import threading

import pytest

from samri.activelearning.selection import Candidate, NothingToAnnotate, Reservations, combined_values, rank


def test_rank_and_combined_values() -> None:
    ranked = rank([Candidate("b", None), Candidate("a", 0.2), Candidate("c", 0.9), Candidate("d", 0.2)])
    assert [c.study_id for c in ranked] == ["c", "a", "d", "b"]
    combined = combined_values({"x": 1.0, "y": 0.0, "z": None}, {"x": 0.0, "y": 1.0, "z": None},
                               {"uncertainty": 3.0, "novelty": 1.0})
    assert combined["x"] == pytest.approx(0.75) and combined["y"] == pytest.approx(0.25) and combined["z"] is None


def test_reservations_give_concurrent_clients_different_studies() -> None:
    now = [0.0]
    book = Reservations(60, clock=lambda: now[0])
    ranked = rank([Candidate("a", 0.9), Candidate("b", 0.5), Candidate("c", 0.1)])
    picks: dict[str, str] = {}

    def ask(client: str) -> None:
        picks[client] = book.choose(ranked, client)[0].study_id

    threads = [threading.Thread(target=ask, args=(f"client{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(picks.values()) == ["a", "b", "c"]
    pick, shared = book.choose(ranked, "client4")  # all reserved: the one expiring first, flagged
    assert shared and pick.study_id in "abc"
    now[0] = 61.0  # reservations expire
    assert book.choose(ranked, "x")[0].study_id == "a"
    again, shared = book.choose(ranked, "x")  # asking again releases the client's own study
    assert again.study_id == "a" and not shared and book.held() == {"a": "x"}
    assert book.choose(ranked, "late")[0].study_id == "b"
    assert book.choose(ranked, None)[0].study_id == "c"  # anonymous requests are distinct clients
    with pytest.raises(NothingToAnnotate):
        book.choose([], "x")
