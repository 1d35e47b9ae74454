"""InternVL's grounding boxes: the stream filter, the parser, the drawing (bot/media/grounding.py), and the boxes
drawn on the user's own photo and sent back through the web chat, Telegram, Slack and Chatwoot fakes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.helpdesk_api import verify_callback
from bot.config import GenerationSettings
from bot.engines import EchoEngine
from bot.engines.base import ChatMessage
from bot.l10n.i18n import text
from bot.media.grounding import (
    PALETTE,
    Region,
    TagFilter,
    annotate,
    draw_regions,
    font_path,
    line_width,
    parse_regions,
    strip_tags,
)
from tests.conftest import make_settings
from tests.live_server import exchange, live_server, open_session
from tests.test_chatwoot import LOCAL as CHATWOOT_LOCAL
from tests.test_chatwoot import chatwoot
from tests.test_console import run_console
from tests.test_django_helpdesk import _attachments as django_attachments
from tests.test_django_helpdesk import helpdesk_bot as django_bot
from tests.test_django_helpdesk import helpdesk_peer as django_peer
from tests.test_helpdesk_api import SECRET as API_SECRET
from tests.test_helpdesk_api import helpdesk_api
from tests.test_slack import CHANNEL, slack
from tests.test_slack import mention as slack_mention
from tests.test_telegram import ANA, DM, telegram

CAPTION = "<ref>crack</ref><box>[[100,200,400,600]]</box>"
GREY = (128, 128, 128)


def streamed(text: str, size: int) -> list[str]:
    """What a user sees of ``text`` streamed in chunks of ``size`` characters, piece by piece."""
    tags = TagFilter()
    shown = [tags.feed(text[i:i + size]) for i in range(0, len(text), size)]
    return [*shown, tags.rest()]


def box_edges(pixels: np.ndarray, colour: tuple[int, int, int], centre: tuple[int, int]) -> tuple[int, int, int, int]:
    """The outer edges (x1, y1, x2 exclusive, y2 exclusive) of the pixels close to ``colour`` on the row and the
    column through ``centre`` (away from the label's tag, which is drawn at the top left)."""
    close = np.abs(pixels.astype(int) - colour).sum(axis=2) < 60
    xs = np.nonzero(close[centre[1]])[0]
    ys = np.nonzero(close[:, centre[0]])[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_box(data: bytes, box: tuple[int, int, int, int], colour: tuple[int, int, int] = PALETTE[0]) -> None:
    """The picture ``data`` shows a box of ``colour`` whose edges are where InternVL's 0–1000 ``box`` says, ± 2 px
    after scaling to the picture's size."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    want = (box[0] * width / 1000, box[1] * height / 1000, box[2] * width / 1000, box[3] * height / 1000)
    got = box_edges(np.asarray(image), colour, (round((want[0] + want[2]) / 2), round((want[1] + want[3]) / 2)))
    assert all(abs(g - w) <= 2 for g, w in zip(got, want, strict=True)), (got, want)


def label_drawn(data: bytes, box: tuple[int, int, int, int], colour: tuple[int, int, int] = PALETTE[0]) -> bool:
    """A tag of ``colour`` with lettering of another colour sits just above the box's top left corner."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    height, width = pixels.shape[:2]
    x1, y1 = round(box[0] * width / 1000), round(box[1] * height / 1000)
    tag = pixels[max(0, y1 - 12):y1 - 2, x1 + 2:x1 + 40]
    filled = (np.abs(tag - colour).sum(axis=2) < 60).mean()
    letters = (np.abs(tag - (255, 255, 255)).sum(axis=2) < 120).mean()
    return filled > 0.3 and letters > 0.05


def photo(width: int = 640, height: int = 480, colour: tuple[int, int, int] = GREY) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


# -- the stream filter ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_the_filter_shows_labels_and_never_a_fragment_of_a_tag(size: int) -> None:
    text = "echo: the <ref>crack</ref><box>[[100, 200, 400, 600]]</box> runs a<b; see <ref>дверь</ref><box>[[1,2,3,4]]</box>."
    pieces = streamed(text, size)
    final = "echo: the crack runs a<b; see дверь."
    assert "".join(pieces) == final
    shown = ""
    for piece in pieces:
        shown += piece
        assert final.startswith(shown)  # what was shown is never taken back: no fragment of a tag went out
        assert not any(bit in piece for bit in ("[[", "]]", "box", "ref"))


def test_a_stream_split_inside_a_box_holds_it_back_until_it_closes() -> None:
    tags = TagFilter()
    assert tags.feed("look: <ref>crack</ref><box>[[100, 2") == "look: crack"
    assert tags.feed("00, 400") == ""
    assert tags.feed(", 600]]</box> done") == " done"
    assert tags.grounded


def test_an_unclosed_box_is_dropped_and_an_unfinished_tag_is_text() -> None:
    tags = TagFilter()
    assert tags.feed("x <box>[[1, 2") == "x "
    assert tags.rest() == ""
    tags = TagFilter()
    assert tags.feed("a <re") == "a "
    assert tags.rest() == "<re"
    assert strip_tags("1 < 2 and <b>bold</b>") == "1 < 2 and <b>bold</b>"


# -- parsing -------------------------------------------------------------------------------------------------------


def test_regions_are_parsed_merged_by_label_and_named_images_kept() -> None:
    text = ("Image-1 is fine. In Image-2 <ref>crack</ref><box>[[100, 200, 400, 600], [500,500,600,700]]</box>, "
            "<ref>bolt</ref><box>[[300, 300]]</box> and <ref>crack</ref><box>[[0,0,10,10]]</box>")
    regions = parse_regions(text)
    assert regions == [
        Region("crack", ((0.1, 0.2, 0.4, 0.6), (0.5, 0.5, 0.6, 0.7), (0.0, 0.0, 0.01, 0.01)), (), "Image-2"),
        Region("bolt", (), ((0.3, 0.3),), "Image-2"),
    ]


def test_out_of_range_reversed_and_garbage_coordinates_never_fail() -> None:
    regions = parse_regions("<ref>a</ref><box>[[400, 600, 100, 200]]</box><ref>b</ref><box>[[-50, 900, 1200, 1500]]</box>"
                            "<ref>c</ref><box>[[x, y]] [[1,2,3]] nonsense</box><ref>d</ref><box>[[1200, 5, 1300, 9]]</box>"
                            "<box>[[1e9, 2</box>")
    assert regions == [Region("a", ((0.1, 0.2, 0.4, 0.6),)), Region("b", ((0.0, 0.9, 1.0, 1.0),))]


def test_bare_coordinates_count_only_when_asked() -> None:
    assert parse_regions("[[100, 200, 400, 600]]") == []
    assert parse_regions("[[100, 200, 400, 600]]", default_label="crack", bare=True) == [
        Region("crack", ((0.1, 0.2, 0.4, 0.6),))]
    # the label of a ref nested in the grounding prompt is the innermost one
    assert parse_regions("<ref><ref>crack</ref><box>[[1,2,3,4]]</box></ref>")[0].label == "crack"


# -- drawing -------------------------------------------------------------------------------------------------------


def test_boxes_are_drawn_where_the_coordinates_say_with_the_label() -> None:
    out = annotate(np.full((480, 640, 3), GREY, np.uint8), parse_regions(CAPTION))
    assert (out.width, out.height, out.labels) == (640, 480, ("crack",))
    assert_box(out.data, (100, 200, 400, 600))
    assert label_drawn(out.data, (100, 200, 400, 600))


def test_one_colour_per_label_points_as_markers_and_the_source_untouched() -> None:
    source = np.full((300, 400, 3), GREY, np.uint8)
    drawn = draw_regions(source, [Region("a", ((0.1, 0.1, 0.3, 0.3),)), Region("b", ((0.5, 0.5, 0.9, 0.9),)),
                                  Region("a", (), ((0.7, 0.2),))])
    assert (source == GREY).all()  # the resolver's cached pixels are never drawn on
    assert tuple(drawn[60, 40]) == PALETTE[0]  # a's left edge
    assert tuple(drawn[210, 200]) == PALETTE[1]  # b's left edge, in b's colour
    assert tuple(drawn[210, 280]) == GREY  # inside b: only the outline is drawn
    assert tuple(drawn[60, 280]) == PALETTE[0]  # the point's marker, in a's colour


def test_line_width_scales_with_the_image() -> None:
    assert line_width(640, 480) == 2
    assert line_width(4000, 3000) == 10


def test_large_images_are_reduced_and_greyscale_drawn_in_colour() -> None:
    drawn = draw_regions(np.zeros((3000, 9000), np.uint8), [Region("x", ((0.0, 0.0, 0.5, 0.5),))])
    assert drawn.shape == (1000, 3000, 3)  # 9000 > 4096: reduced by 3
    assert tuple(drawn[250, 0]) == PALETTE[0]


@pytest.mark.parametrize(("label", "language", "font"), [
    ("crack", "en", "NotoSansCJK"), ("трещина", "ru", "NotoSansCJK"), ("裂缝", "zh", "NotoSansCJK"),
    ("ひび", "ja", "NotoSansCJK"), ("شق", "ar", "NotoSansArabic"),
])
def test_labels_get_a_font_that_has_their_script(label: str, language: str, font: str) -> None:
    path, _ = font_path(label, language)
    if path is None or "Noto" not in path.name:
        pytest.skip("fonts-noto-cjk / fonts-noto-core are not installed (.ci/run installs them)")
    assert path.name.startswith(font)
    image = draw_regions(np.full((200, 300, 3), GREY, np.uint8), [Region(label, ((0.2, 0.5, 0.8, 0.9),))],
                         language=language)
    tag = image[int(0.5 * 200) - 30:int(0.5 * 200) - 2, int(0.2 * 300):int(0.2 * 300) + 60].astype(int)
    # lettering, not the empty boxes of a missing glyph: white strokes of several shapes on the tag
    white = (np.abs(tag - 255).sum(axis=2) < 120)
    assert white.mean() > 0.04 and len({tuple(r) for r in white.astype(int)}) > 4


# -- end to end, through each platform's fake ----------------------------------------------------------------------

#: the caption a curious user (or a test) sends: the echo engine says it back, the framework draws it; the spaces
#: make the echo engine stream it in pieces split inside ``<box>``
SPACED = "<ref>crack</ref><box>[[100, 200, 400, 600]]</box>"
BOX = (100, 200, 400, 600)


def no_tag_fragment(text: str) -> bool:
    """No tag, nor a piece of the box's coordinates (the chunk "200," of a stream split inside ``<box>``)."""
    return not any(bit in text for bit in ("<", "[[", "]]", "100,", "200,", "400,", "600]"))


async def test_web_chat_shows_the_label_and_the_photo_with_its_box(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.005)) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, SPACED, [("wall.jpg", photo(800, 600), "image/jpeg")], until="file")
        chunks = [e["text"] for e in events if e["type"] in ("partial", "chunk")]
        assert len(chunks) > 3 and all(no_tag_fragment(c) for c in chunks)  # split inside <box>: never shown
        done = next(e for e in events if e["type"] == "done")
        assert done["text"].endswith("echo: crack") and no_tag_fragment(done["text"])
        shown = events[-1]
        assert shown["type"] == "file" and shown["mime"] == "image/jpeg" and shown["caption"] == "crack"
        picture = await client.get(shown["url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
        assert "inline" in picture.headers["content-disposition"]  # shown in the page, full size on click
        assert Image.open(io.BytesIO(picture.content)).size == (800, 600)
        assert_box(picture.content, BOX)
        assert label_drawn(picture.content, BOX)
        # a reload: the history has the answer's text and, after it, the picture (stored with the answer)
        history = (await client.get("/api/history")).json()["messages"]
        assert [(m["role"], m["text"]) for m in history][1:] == [("assistant", done["text"]), ("assistant", "crack")]
        stored = history[2]["files"][0]
        assert stored["mime"] == "image/jpeg" and history[2]["reply_to"] == history[0]["id"]
        again = await client.get(f"/api/attachments/{stored['sha256']}")
        assert again.status_code == 200 and again.content == picture.content
        # the operator inbox shows it too, as the answer's reply
        key = (await client.get("/api/session")).json()["conversation"]
        async with live.client() as op:
            auth = {"Authorization": "Bearer op-token"}
            rows = (await op.get(f"/api/operator/conversations/{key}/messages", headers=auth)).json()["messages"]
            assert [f["sha256"] for m in rows for f in m["files"] if m["role"] == "assistant"] == [stored["sha256"]]


class GroundedEngine(EchoEngine):
    """Answers as InternVL does about a photo, word by word (so the stream splits inside ``<box>``): Slack sends a
    user's ``<`` as ``&lt;``, so there the model, not the user, writes the tags."""

    async def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        if not messages[-1].images:
            raise AssertionError("the photo did not reach the model")
        for i, word in enumerate(f"The crack is here: {SPACED}".split(" ")):
            await asyncio.sleep(0.005)
            yield word if i == 0 else " " + word


async def test_telegram_replies_with_the_photo_marked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, engine=EchoEngine(delay=0.02)) as h:
        update = h.tg.user_message(DM, ANA, photo=photo(640, 480), caption=SPACED)
        h.tg.push_update(update)
        await h.tg.wait_for(lambda: any(m.photo is not None for m in h.shown(111)))
        sent = next(m for m in h.shown(111) if m.photo is not None)
        assert sent.caption == "crack"
        assert sent.reply_to_message_id == update["message"]["message_id"]  # a photo replying to the question
        assert_box(sent.photo.data, BOX)
        assert label_drawn(sent.photo.data, BOX)
        answer = next(m for m in h.shown(111) if m.photo is None)
        assert (answer.text or "").endswith("echo: crack")
        # every version the user saw — drafts while it streamed, each edit — is free of tags and coordinates
        seen = [d["text"] for d in h.tg.drafts] + [v for m in h.tg.chat(111) for v in m.history if v]
        assert len(seen) > 1 and all(no_tag_fragment(v) for v in seen)
        assert h.shown(111).index(answer) < h.shown(111).index(sent)  # the picture comes after the answer


async def test_slack_uploads_the_marked_up_photo_into_the_thread(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, engine=GroundedEngine()) as h:
        shared = h.slack.add_file(photo(800, 600), name="wall.jpg", mimetype="image/jpeg")
        payload = slack_mention(h, "where is the crack?", files=[shared])
        await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        await h.slack.wait_for(lambda: bool(h.slack.uploads))
        upload = h.slack.uploads[-1]
        assert upload["thread_ts"] == ts and upload["filename"].endswith(".jpg")
        assert_box(upload["bytes"], BOX)
        assert label_drawn(upload["bytes"], BOX)
        methods = [c.method for c in h.slack.calls]
        assert "files.getUploadURLExternal" in methods and "files.completeUploadExternal" in methods
        answer = await h.answered(CHANNEL, ts, "The crack is here: crack")
        assert all(no_tag_fragment(v) for v in [answer.text, *answer.history])


async def test_chatwoot_answers_with_the_marked_up_photo_attached(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch, **CHATWOOT_LOCAL) as h:
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, SPACED, attachments=[photo(640, 480)])
        await h.cw.wait_for(lambda: any(c.name == "messages.create" and c.files for c in h.cw.calls))
        call = next(c for c in h.cw.calls if c.name == "messages.create" and c.files)
        data = call.files[0]["data"]
        assert call.files[0]["content_type"] == "image/jpeg"
        assert_box(data, BOX)
        assert label_drawn(data, BOX)
        replies = h.cw.public_replies(conv)
        assert replies[0].endswith("echo: crack") and all(no_tag_fragment(r) for r in replies)


def rotated_photo(width: int, height: int) -> bytes:
    """A JPEG stored ``width`` x ``height`` with EXIF orientation 6: shown (and seen by the model) turned, as
    ``height`` x ``width``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), GREY).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


async def test_the_named_image_is_drawn_as_the_model_saw_it(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        files = [("side.jpg", rotated_photo(640, 480), "image/jpeg"), ("wall.jpg", photo(800, 600), "image/jpeg")]
        _, events = await exchange(live, client, f"In Image-1 {SPACED}", files, until="file")
        picture = (await client.get(events[-1]["url"])).content
        assert Image.open(io.BytesIO(picture)).size == (480, 640)  # Image-1, after its EXIF orientation
        assert_box(picture, BOX)
        # not named: the latest image of the turn
        _, events = await exchange(live, client, SPACED, files, until="file")
        assert Image.open(io.BytesIO((await client.get(events[-1]["url"])).content)).size == (800, 600)


async def test_find_marks_the_latest_photo_of_the_conversation(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "/find crack", until="notice")
        assert events[-1]["text"] == text("find_no_image", "en")
        await exchange(live, client, "look at my wall", [("wall.jpg", photo(800, 600), "image/jpeg")])
        # the echo engine says the grounding question back: a thing written with its box is "found" there
        _, events = await exchange(live, client, f"/find {SPACED}", until="file")
        found = events[-1]
        assert found["caption"] == "crack"
        picture = (await client.get(found["url"])).content
        assert Image.open(io.BytesIO(picture)).size == (800, 600)
        assert_box(picture, BOX)
        assert label_drawn(picture, BOX)
        _, events = await exchange(live, client, "/find the crack", until="notice")
        assert events[-1]["text"] == text("find_nothing", "en", thing="the crack")
        _, events = await exchange(live, client, "/find", until="notice")
        assert events[-1]["text"] == text("find_usage", "en")
        history = (await client.get("/api/history")).json()["messages"]
        assert any(m["files"] and m["role"] == "assistant" and m["text"] == "crack" for m in history)


async def test_a_persona_with_grounding_off_keeps_the_label_and_draws_nothing(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "plain.yaml").write_text("name: plain\nsystem: You answer.\ngrounding: off\n")
    settings = make_settings(tmp_path, conversation={"personas_dir": str(personas), "default_persona": "plain"})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, SPACED, [("wall.jpg", photo(), "image/jpeg")])
        assert events[-1]["text"].endswith("echo: crack")
        assert live.runtime.manager is not None
        await live.runtime.manager.idle()
        history = (await client.get("/api/history")).json()["messages"]
        assert len(history) == 2 and not history[1]["files"]


# -- the console, the generic helpdesk API and django-helpdesk -------------------------------------------------------


async def test_the_console_saves_the_marked_up_photo_and_prints_its_path(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the console saves files under ./exports
    wall = tmp_path / "wall.jpg"
    wall.write_bytes(photo(800, 600))
    out, _ = await run_console(tmp_path, f"/image {wall}\n{SPACED}\n")
    lines = out.splitlines()
    answer = next(i for i, line in enumerate(lines) if line.endswith("echo: crack"))
    assert all(no_tag_fragment(line) for line in lines if not line.startswith("[attached"))
    saved = next(i for i, line in enumerate(lines) if line.startswith("[file saved: "))
    assert saved > answer  # the picture's path comes after the answer
    path = Path(lines[saved].removeprefix("[file saved: ").removesuffix("]"))  # relative to the working folder
    assert path.is_file() and path.suffix == ".jpg"
    data = path.read_bytes()
    assert Image.open(io.BytesIO(data)).size == (800, 600)
    assert_box(data, BOX)
    assert label_drawn(data, BOX)


async def test_the_helpdesk_api_sends_the_marked_up_photo_as_a_signed_file_callback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        inline = base64.b64encode(photo(800, 600)).decode()
        accepted = await h.message("T-22", SPACED, message_id="q-1",
                                   attachments=[{"data": inline, "filename": "wall.jpg", "mime_type": "image/jpeg"}])
        assert accepted.status_code == 202, accepted.text
        answer, file = await h.receiver.wait_for(2)
        assert answer["type"] == "answer" and answer["text"].endswith("echo: crack")
        assert file["type"] == "file" and file["text"] == "crack"  # after the answer, replying to the question
        assert file["in_reply_to"] == "q-1" and file["conversation_id"] == "T-22" and not file["private"]
        assert all(no_tag_fragment(p["text"]) for p in h.receiver.payloads())
        headers, body = next((hd, b) for hd, b in h.receiver.callbacks if json.loads(b)["type"] == "file")
        assert verify_callback(API_SECRET, headers, body)
        meta = file["file"]
        data = base64.b64decode(meta["data"])
        assert meta["filename"].endswith(".jpg") and meta["mime_type"] == "image/jpeg" and meta["size"] == len(data)
        assert Image.open(io.BytesIO(data)).size == (800, 600)
        assert_box(data, BOX)
        assert label_drawn(data, BOX)
        # a helpdesk that polls sees the picture too: listed with the reply, fetched by a signed GET
        await h.idle()
        polled = (await h.poll("T-22"))["replies"]
        assert [(r["type"], r["text"], r["in_reply_to"]) for r in polled] == [
            ("answer", answer["text"], "q-1"), ("notice", "crack", "q-1")]
        assert polled[0]["files"] == []
        [listed] = polled[1]["files"]
        assert listed["mime_type"] == "image/jpeg" and listed["filename"] == meta["filename"]
        fetched = await h.get(listed["url"])
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
        assert fetched.content == data
        # signed for this conversation only; unsigned, another conversation's or a malformed id: refused
        other = listed["url"].replace("/T-22/", "/T-23/")
        assert (await h.get(other)).status_code == 404
        assert (await h.get(listed["url"], signed_target=other)).status_code == 401
        assert (await h.client.get(listed["url"])).status_code == 401
        assert (await h.get(listed["url"].rsplit("/", 1)[0] + "/not-a-sha")).status_code == 400


@pytest.mark.slow
@pytest.mark.parametrize(("extensions", "suffix"), [(None, ".jpg"), ([".txt", ".pdf", ".png", ".jpeg"], ".jpeg")])
async def test_django_helpdesk_attaches_the_marked_up_photo_to_a_follow_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extensions: list[str] | None, suffix: str) -> None:
    """Against the real django-helpdesk (tests/helpdesk_site): its default HELPDESK_VALID_EXTENSIONS takes
    ``.jpg``; a site that lists ``.jpeg`` instead gets the same JPEG under that name (never renamed ``.txt``,
    as a refused text export is)."""
    conf = {"attachment_extensions": extensions} if extensions else {}
    async with django_peer(tmp_path, monkeypatch, valid_extensions=extensions) as peer, \
            django_bot(tmp_path, peer, **conf) as h:
        ticket = await h.site.customer_ticket("Wall", SPACED, attachment=(f"wall{suffix}", photo(800, 600), "image/jpeg"))
        files = await h.until(lambda: django_attachments(h, ticket))
        followups = await h.bot_followups(ticket)
        assert all(f["public"] for f in followups)
        assert all(no_tag_fragment(f["comment"]) for f in followups)
        answer = next(f for f in followups if not f.get("followupattachment_set"))
        assert answer["comment"].endswith("echo: Wall\n\ncrack")  # the ticket's title, then its text
        carrier = next(f for f in followups if f.get("followupattachment_set"))
        assert carrier["comment"].strip() == "crack" and carrier["id"] > answer["id"]  # after the answer
        [file] = files
        assert file["filename"].endswith(suffix) and ".jpg.jpeg" not in file["filename"]
        download = await h.site.download(file["file"], user="agent")
        assert download.status_code == 200
        assert Image.open(io.BytesIO(download.content)).size == (800, 600)
        assert_box(download.content, BOX)
        assert label_drawn(download.content, BOX)
