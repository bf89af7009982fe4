"""The social-card image of a share: a 1200×630 PNG that link previews show (``og:image``).

Drawn from the share's public view only (``PublicShare``, already redacted at the value level),
and every line of text passes through the share's ``Redactor`` again before it is drawn: a PNG
leaves the process as pixels, where the response-level redaction cannot see text. Anything
shaped like a credential (a UUID, a long token) is left out of the card as well. The card is
content-addressed: ``CardText.digest`` names what it shows, the web layer caches the PNG by it
and uses it as the ETag, so a share's card is drawn once per version whatever the traffic.

The font is the one Pillow embeds (``ImageFont.load_default``: Aileron Regular, public domain),
so nothing is shipped and nothing depends on the fonts of the machine.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from cloudsession.render import html as render

WIDTH, HEIGHT = 1200, 630
MARGIN = 72
TITLE_LINES = 3
# Bump when the drawing changes, so cached cards and ETags are not reused.
CARD_VERSION = "1"
CARD_CACHE_SIZE = 64

BACKGROUND = (15, 17, 23)
PANEL = (28, 31, 40)
TEXT = (236, 238, 243)
MUTED = (150, 156, 170)
ACCENT = (88, 166, 255)


# A card travels further than the page (chat previews, caches of other sites), so on top of the
# Redactor it leaves out anything shaped like a credential: UUIDs (share secrets and the session
# namespace are UUIDs) and long unbroken runs of token characters with a digit (API keys, read
# tokens).
_CREDENTIAL_LIKE = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"|(?=[A-Za-z_\-]*[0-9])[A-Za-z0-9_\-]{24,}|[A-Za-z0-9_]{32,}"
)
HIDDEN = "[hidden]"


@dataclass(frozen=True)
class CardText:
    """What a card shows, as plain (redacted) strings."""

    site: str
    title: str
    model: str
    counts: str
    updated: str

    @property
    def digest(self) -> str:
        payload = "\0".join((CARD_VERSION, self.site, self.title, self.model, self.counts, self.updated))
        return hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def card_text(*, site: str, title: str, models: list[str], messages: int, parts: int, updated_ms: int,
              redact: Callable[[str], str]) -> CardText:
    """The card's lines, each passed through ``redact`` (the share's Redactor)."""
    model = models[0] + (f" and {len(models) - 1} more" if len(models) > 1 else "") if models else ""
    when = ""
    if updated_ms > 0:
        when = "Updated " + datetime.fromtimestamp(updated_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")

    def clean(text: str, limit: int) -> str:
        # Redacted whole (linear: an owner id is never cut before the redaction sees it), then
        # only a head is read further (these lines are computed on every card request, and the
        # credential filter can be quadratic): twice what is shown, less a word the cut split,
        # so that no credential is shown in part.
        text = redact(text)
        if len(text) > 2 * limit:
            head, end = text[: 2 * limit], 2 * limit
            if not text[end].isspace():
                while end and not head[end - 1].isspace():
                    end -= 1
            text = head[:end] or HIDDEN
        # Control characters and lone surrogates would draw as boxes (or fail to encode).
        text = "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else " " for ch in text)
        return " ".join(_CREDENTIAL_LIKE.sub(HIDDEN, text).split())[:limit]

    return CardText(
        site=clean(site, 80),
        title=clean(title or "Untitled Session", 400),
        model=clean(model, 120),
        counts=clean(f"{render.plural(messages, 'message')} · {render.plural(parts, 'part')}", 200),
        updated=clean(when, 80),
    )


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, lines: int) -> list[str]:
    """``text`` wrapped at word boundaries into at most ``lines`` lines of ``width`` pixels, the
    last one ending in an ellipsis when the text does not fit (a word longer than a line is cut)."""
    words = text.split()
    out: list[str] = []
    current = ""
    while words and len(out) < lines:
        word = words[0]
        trial = f"{current} {word}" if current else word
        if draw.textlength(trial, font=font) <= width:
            current = trial
            words.pop(0)
        elif current:
            out.append(current)
            current = ""
        else:  # a single word wider than the line: cut it
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            out.append(word[:cut])
            words[0] = word[cut:]
    if current and len(out) < lines:
        out.append(current)
    if words and out:
        last = out[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        out[-1] = last.rstrip() + "…"
    return out


def draw_card(text: CardText) -> bytes:
    """The PNG of a card."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 14, HEIGHT), fill=ACCENT)
    inner = WIDTH - 2 * MARGIN
    draw.text((MARGIN, 56), text.site, font=_font(30), fill=MUTED)
    title_font = _font(64)
    y = 130
    for line in _fit(draw, text.title, title_font, inner, TITLE_LINES):
        draw.text((MARGIN, y), line, font=title_font, fill=TEXT)
        y += 80
    if text.model:
        for line in _fit(draw, text.model, _font(36), inner, 1):
            draw.text((MARGIN, max(y + 24, 300)), line, font=_font(36), fill=ACCENT)
    draw.rounded_rectangle((MARGIN - 20, HEIGHT - 150, WIDTH - MARGIN + 20, HEIGHT - 56), radius=14, fill=PANEL)
    footer = "   ·   ".join(t for t in (text.counts, text.updated) if t)
    for line in _fit(draw, footer, _font(32), inner - 16, 1):
        draw.text((MARGIN, HEIGHT - 122), line, font=_font(32), fill=MUTED)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


class CardCache:
    """Cards by digest (LRU), drawn one at a time: drawing costs tens of milliseconds of CPU, so
    concurrent first requests for new cards queue here instead of taking every core."""

    def __init__(self, size: int = CARD_CACHE_SIZE) -> None:
        self.size = size
        self._cards: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.drawn = 0  # how many cards were drawn (tests and benchmarks read it)

    def get(self, text: CardText) -> bytes:
        key = text.digest
        with self._lock:
            png = self._cards.get(key)
            if png is None:
                png = draw_card(text)
                self.drawn += 1
                self._cards[key] = png
                while len(self._cards) > self.size:
                    self._cards.popitem(last=False)
            self._cards.move_to_end(key)
            return png
