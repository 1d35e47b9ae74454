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
    return _Planner(items, budget, tokens_per_tile).run()


class _Planner:
    """One :func:`plan`: the tiles chosen so far (``result.tiles``) and what they cost (``cost``)."""

    def __init__(self, items: Sequence[Item], budget: int, tokens_per_tile: int) -> None:
        self.items, self.budget, self.per_tile = items, budget, tokens_per_tile
        self.result = Plan(tiles={item.key: item.want for item in items})
        self.cost = self.total()

    def total(self) -> int:
        return sum(item_tokens(i, self.result.tiles[i.key], self.per_tile) for i in self.items)

    def run(self) -> Plan:
        items, tiles = self.items, self.result.tiles
        older = sorted({item.age for item in items if item.age > 0}, reverse=True)
        while self.cost > self.budget:
            # 1. Older turns lose detail, oldest first.
            if any(self.reduce_group(age) for age in older):
                continue
            # 2. Then older items leave the prompt, oldest first.
            candidates = [k for k in range(len(items)) if items[k].age > 0 and tiles[items[k].key] > 0]
            if candidates:
                self.leave_out(max(candidates, key=lambda k: (items[k].age, -k)))
                continue
            # 3. Only then does the current turn lose detail; it is never left out...
            if self.reduce_group(0):
                continue
            # 4. ...but for its optional items, the last first.
            optional = [k for k in range(len(items)) if items[k].age == 0 and items[k].optional and tiles[items[k].key] > 0]
            if not optional:
                self.result.fits = False
                break
            self.leave_out(optional[-1])
        self.result.tokens = self.cost
        for item in items:
            chosen = tiles[item.key]
            if chosen == 0:
                self.result.dropped.append(item.key)
            elif tile_count(item.width, item.height, max_num=chosen) < tile_count(item.width, item.height,
                                                                                   max_num=item.want):
                self.result.reduced.append(item.key)
        return self.result

    def leave_out(self, k: int) -> None:
        self.result.tiles[self.items[k].key] = 0
        self.cost = self.total()

    def step_down(self, item: Item) -> bool:
        """Lower the item's max_num until it really costs fewer tokens; False if it cannot."""
        current = self.result.tiles[item.key]
        before = item_tokens(item, current, self.per_tile)
        lower = _lower(current)
        while lower > 0:
            if item_tokens(item, lower, self.per_tile) < before:
                self.result.tiles[item.key] = lower
                return True
            lower = _lower(lower)
        return False

    def reduce_group(self, age: int) -> bool:
        """One round-robin pass over a turn's items, its last item first, so they lose detail evenly."""
        progressed = False
        for k in reversed(range(len(self.items))):
            item = self.items[k]
            if item.age != age or item.fixed or self.result.tiles[item.key] <= 0:
                continue
            if self.step_down(item):
                progressed = True
                self.cost = self.total()
                if self.cost <= self.budget:
                    break
        return progressed
