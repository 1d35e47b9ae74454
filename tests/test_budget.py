from __future__ import annotations

import pytest

from bot.media.budget import Item, Plan, item_tokens, plan
from bot.media.images import tile_count

PHOTO = (4032, 3024)  # 13 tiles at max_num 12 = 3330 tokens


def photos(count: int, age_of: int = 0) -> list[Item]:
    return [Item(f"p{i}", *PHOTO, want=12, age=age_of) for i in range(count)]


@pytest.mark.parametrize(("count", "context"), [(1, 8192), (4, 8192), (10, 8192), (1, 16384), (4, 16384),
                                                (10, 16384)])
def test_current_turn_images_fit_the_context(count: int, context: int) -> None:
    budget = context - 512 - 300  # answer and text
    result = plan(photos(count), budget)
    assert result.fits
    assert result.tokens <= budget
    assert not result.dropped  # the current turn is reduced, never left out
    assert sum(item_tokens(i, result.tiles[i.key]) for i in photos(count)) == result.tokens


def test_one_photo_keeps_full_detail_when_it_fits() -> None:
    result = plan(photos(1), 8192 - 812)
    assert result.tiles == {"p0": 12}
    assert result.reduced == []
    assert result.tokens == 13 * 256 + 2


def test_ten_photos_in_8k_are_reduced_evenly_and_reported() -> None:
    result = plan(photos(10), 8192 - 812)
    assert len(result.reduced) == 10
    tiles = [tile_count(*PHOTO, max_num=result.tiles[f"p{i}"]) for i in range(10)]
    # A 4:3 photo has 13, 5 or 1 tiles: the earlier images keep the larger steps, and the budget is
    # used rather than left idle (no photo could get its next step up).
    assert tiles == sorted(tiles, reverse=True)
    assert set(tiles) <= {5, 1}
    assert result.tokens + (5 - 1) * 256 > 8192 - 812


def test_older_turns_lose_detail_first_then_leave() -> None:
    items = [Item("old", *PHOTO, want=12, age=2), Item("mid", *PHOTO, want=12, age=1),
             Item("new", *PHOTO, want=12, age=0)]
    roomy = plan(items, 3 * (13 * 256 + 2))
    assert roomy.reduced == []
    tight = plan(items, 13 * 256 + 2 + 2 * (256 + 2))
    assert tight.tiles["new"] == 12
    assert tile_count(*PHOTO, max_num=tight.tiles["old"]) == tile_count(*PHOTO, max_num=tight.tiles["mid"]) == 1
    tighter = plan(items, 13 * 256 + 2 + 256 + 2)
    assert tighter.tiles["old"] == 0
    assert tighter.tiles["new"] == 12
    assert tile_count(*PHOTO, max_num=tighter.tiles["mid"]) == 1
    assert tighter.dropped == ["old"]


def test_too_much_for_any_plan_is_reported() -> None:
    result = plan(photos(10), 10 * 258 - 1)
    assert not result.fits


def test_fixed_frames_are_not_reduced() -> None:
    frames = [Item(f"f{i}", 1280, 720, want=1, fixed=True) for i in range(8)]
    result = plan([*frames, Item("p", *PHOTO, want=12)], 8 * 258 + 3000)
    assert all(result.tiles[f"f{i}"] == 1 for i in range(8))
    assert result.tiles["p"] < 12


def test_nothing_to_plan_fits_any_room_left() -> None:
    assert plan([], 1000) == plan([], 0) == Plan()
    assert not plan([], -1).fits  # no room at all: as with items


def test_a_knowledge_page_is_left_out_last_first_rather_than_refusing_the_turn() -> None:
    """Optional items of the current turn (a knowledge base's pages) lose detail with the rest of the turn, then
    leave — the last first — before the user's own image would make the turn too long."""
    page = (1240, 1754)
    items = [*photos(1), Item("s1", *page, want=6, optional=True), Item("s2", *page, want=6, optional=True)]
    room = item_tokens(items[0], 1) + item_tokens(items[1], 1)  # the photo and one page, a tile each
    result = plan(items, room)
    assert result.fits and result.dropped == ["s2"] and result.tokens <= room
    assert plan(items, item_tokens(items[0], 1)).dropped == ["s1", "s2"]
    assert not plan(items, item_tokens(items[0], 1) - 1).fits  # the user's own image is never left out
