"""Names of the home found in a request (the cascade parser's ``known`` condition)."""
from __future__ import annotations

from speechlm.agent.env import default_state
from speechlm.agent.known import catalogue, known_names, snap_names


def test_names_of_the_state_said_in_a_request_are_listed_in_order():
    state = default_state()
    names = catalogue(state)
    podcast, game = next(iter(state["world"]["podcasts"])), next(iter(state["world"]["games"]))
    assert known_names(f"um put on {podcast} and then {game} time", names) == \
        f"podcast_name = {podcast} ; game_name = {game}"
    assert known_names("lights off in the living room", names) == "house_place = living room"  # the longest name
    assert known_names("what a lovely day", names) == "none"
    assert ("the",) not in names  # a lone function word names nothing
    del state["world"]  # a state without catalogues still names its rooms
    assert known_names("lights off in the living room", catalogue(state)) == "house_place = living room"


def test_a_new_name_is_known_once_the_state_holds_it_under_every_slot_it_names():
    state = default_state()
    assert known_names("email zoe", catalogue(state)) == "none"
    state["contacts"]["zoe"] = {"email": "zoe at example dot com", "phone": "", "relation": ""}
    assert known_names("email zoe", catalogue(state)) == "person = zoe"
    state["lists"]["zoe"] = []
    assert known_names("email zoe", catalogue(state)) == "person = zoe ; list_name = zoe"


def test_places_and_kinds_of_transport_business_and_film_are_known():
    names = catalogue(default_state())
    assert known_names("check the bus times to manchester", names) == "transport_type = bus ; place_name = manchester"
    assert known_names("where can i find a pub in london", names) == "business_type = pub ; place_name = london"
    assert known_names("a thriller film please", names) == "movie_type = thriller"
    assert known_names("what is the time in new york", names) == "place_name = new york"  # once, though in many tables


def test_misheard_names_of_the_home_are_snapped_to_them_and_nothing_else_moves():
    names = catalogue(default_state())
    # Whisper's mishearings of the recipe's test requests (names garage, packing, living room, the daily)
    assert snap_names("and pop the garbage lights", names) == "and pop the garage lights"
    assert snap_names("open my parking list", names) == "open my packing list"
    assert snap_names("since i live in room thanks mate", names) == "since i living room thanks mate"  # not science
    assert snap_names("put on the dailey", names) == "put on the daily"
    assert known_names(snap_names("open my parking list", names), names) == "list_name = packing"
    # names said exactly, and words far from every name, stay; a span never swallows an exact name
    # or a function word the name lacks
    for text in ("turn on the garage lights", "what a lovely day", "in the garage", "pop it on"):
        assert snap_names(text, names) == text
    assert snap_names("open my parking list", names, min_ratio=0.9) == "open my parking list"  # stricter
    assert snap_names("since", names, min_ratio=0.8) == "science"  # too loose
    assert snap_names("", names) == ""
