"""The token budget planner: how many InternVL tiles each image, page and frame of a prompt gets.

Every visual item costs 256 tokens a tile (plus 2 for ``<img></img>``). Given the room left in the
context, the planner starts from what each item would like (documents more than photos, images of
older turns fewer) and, while the prompt does not fit, takes detail away from the oldest items
first — halving their tile budget down to a single tile — and then leaves the oldest out
altogether. The current turn is reduced last and never left out — except its ``optional`` items (a
knowledge base's pages, the bot's own reading: their passages' text stays), left out last first when
one tile per item does not fit; if even that does not fit, the caller refuses the message. The plan
says what was reduced or left out, so the user can be told plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.media.images import tile_count

#: The max_num values an item steps down through.
STEPS = (40, 24, 12, 6, 4, 2, 1)


@dataclass(frozen=True, slots=True)
class Item:
    """One visual item: an image, a document page or a video frame."""

    key: str
    width: int
    height: int
    want: int  # max_num the item would like
    age: int = 0  # 0 = the current turn; larger = older
    fixed: bool = False  # video frames: one tile each, never reduced (the whole video goes or stays)
    optional: bool = False  # of the current turn, yet may be left out (a knowledge base's page)


@dataclass(slots=True)
class Plan:
    tiles: dict[str, int] = field(default_factory=dict)  # key -> max_num (0 = left out)
    tokens: int = 0
    reduced: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fits: bool = True


def item_tokens(item: Item, max_num: int, tokens_per_tile: int = 256) -> int:
    if max_num <= 0:
        return 0
    return tile_count(item.width, item.height, max_num=max_num) * tokens_per_tile + 2


def _lower(max_num: int) -> int:
    for step in STEPS:
        if step < max_num:
            return step
    return 0


def plan(items: Sequence[Item], budget: int, *, tokens_per_tile: int = 256) -> Plan:
    """Choose ``max_num`` per item so that the items' tokens fit ``budget``, newest content first."""
    if not items and budget >= 0:
        return Plan()  # a prompt without images (most of them): nothing to plan
    result = Plan(tiles={item.key: item.want for item in items})

    def total() -> int:
        return sum(item_tokens(i, result.tiles[i.key], tokens_per_tile) for i in items)

    def step_down(item: Item) -> bool:
        """Lower the item's max_num until it really costs fewer tokens; False if it cannot."""
        current = result.tiles[item.key]
        before = item_tokens(item, current, tokens_per_tile)
        lower = _lower(current)
        while lower > 0:
            if item_tokens(item, lower, tokens_per_tile) < before:
                result.tiles[item.key] = lower
                return True
            lower = _lower(lower)
        return False

    def reduce_group(age: int) -> bool:
        """One round-robin pass over a turn's items, its last item first, so they lose detail evenly."""
        nonlocal cost
        progressed = False
        for k in reversed(range(len(items))):
            item = items[k]
            if item.age != age or item.fixed or result.tiles[item.key] <= 0:
                continue
            if step_down(item):
                progressed = True
                cost = total()
                if cost <= budget:
                    break
        return progressed

    older = sorted({item.age for item in items if item.age > 0}, reverse=True)
    cost = total()
    while cost > budget:
        # 1. Older turns lose detail, oldest first.
        if any(reduce_group(age) for age in older):
            continue
        # 2. Then older items leave the prompt, oldest first.
        candidates = [k for k in range(len(items)) if items[k].age > 0 and result.tiles[items[k].key] > 0]
        if candidates:
            victim = max(candidates, key=lambda k: (items[k].age, -k))
            result.tiles[items[victim].key] = 0
            cost = total()
            continue
        # 3. Only then does the current turn lose detail; it is never left out...
        if reduce_group(0):
            continue
        # 4. ...but for its optional items, the last first.
        optional = [k for k in range(len(items)) if items[k].age == 0 and items[k].optional
                    and result.tiles[items[k].key] > 0]
        if not optional:
            result.fits = False
            break
        result.tiles[items[optional[-1]].key] = 0
        cost = total()
    result.tokens = cost
    for item in items:
        chosen = result.tiles[item.key]
        if chosen == 0:
            result.dropped.append(item.key)
        elif tile_count(item.width, item.height, max_num=chosen) < tile_count(item.width, item.height,
                                                                               max_num=item.want):
            result.reduced.append(item.key)
    return result
